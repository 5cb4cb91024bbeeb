"""The CTC alignment teacher as a model and a file: a streaming encoder plus a CTC head.

The file is safetensors: fp32 weights, and in the metadata the encoder config, head size and the
tokenizer, so ``load_teacher(path)`` needs nothing else. Training and alignment are in ``teacher.py``;
this module needs neither, so the ReaLLM stage can start its encoder from a teacher without importing them.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from reallm_cli.errors import ConfigError, ModelError
from reallm_cli.model.config import config_from_dict
from reallm_cli.model.encoder import EncoderConfig, build_encoder, encoder_config_from_dict
from reallm_cli.model.file_metadata import safetensors_metadata
from reallm_cli.tokenizer import Tokenizer, tokenizer_from_bytes
from reallm_cli.train.ctc_head import CTCHead
from reallm_cli.writers import default_file_mode

FORMAT = "reallm-ctc-teacher/1"


@dataclass(frozen=True)
class TeacherConfig:
    encoder: EncoderConfig  # a preset's Conformer; a file tags it with its ``kind``
    vocab_size: int
    head_hidden: int = 512
    head_dropout: float = 0.1

    def to_dict(self) -> dict:
        return {"encoder_kind": self.encoder.kind, "encoder": self.encoder.to_dict(), "vocab_size": self.vocab_size,
                "head_hidden": self.head_hidden, "head_dropout": self.head_dropout}

    @classmethod
    def from_dict(cls, d: dict) -> "TeacherConfig":
        """The config as a teacher file stores it (the encoder's chosen by ``encoder_kind``), checked through."""
        if not isinstance(d, dict) or "encoder_kind" not in d or "encoder" not in d:
            raise ConfigError("teacher config: missing key(s) encoder_kind, encoder")
        rest = {k: v for k, v in d.items() if k != "encoder_kind"}
        rest["encoder"] = encoder_config_from_dict(d["encoder_kind"], d["encoder"])
        return config_from_dict(cls, rest, "teacher config", all_keys=False)


class CTCTeacher(nn.Module):
    """Streaming encoder + CTC head: log-mel (B, T_mel, 80) -> log-posteriors (B, T, V) per encoder frame."""

    def __init__(self, config: TeacherConfig):
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config.encoder)
        self.head = CTCHead(self.encoder.out_dim, config.vocab_size, config.head_hidden, config.head_dropout)

    @property
    def frame_ms(self) -> int:
        return self.encoder.frame_ms

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        frames, lengths = self.encoder(mel, mel_lengths)  # (B, T, C), (B,)
        return self.head(frames), lengths  # (B, T, V)


def save_teacher(path: str | Path, teacher: CTCTeacher, tokenizer: Tokenizer, extra: dict | None = None) -> None:
    """One safetensors file (fp32 weights, config and tokenizer in the metadata), written atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().float().contiguous() if v.is_floating_point() else v.detach().contiguous()
               for k, v in teacher.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(teacher.config.to_dict()),
            "tokenizer": base64.b64encode(tokenizer.model_proto).decode("ascii"), "extra": json.dumps(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, default_file_mode())  # mkstemp makes files private; a model file is not secret
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_teacher(path: str | Path) -> tuple[CTCTeacher, Tokenizer]:
    """Rebuild a teacher and its tokenizer from one file (ModelError on anything else)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"teacher file not found: {path}")
    meta = safetensors_metadata(path)
    if meta is None:
        raise ModelError(f"not a reallm CTC teacher (not safetensors): {path}")
    if meta.get("format") != FORMAT:
        raise ModelError(f"not a reallm CTC teacher (make one with `reallm train teacher`): {path}")
    try:
        config = TeacherConfig.from_dict(json.loads(meta["config"]))
        tokenizer = tokenizer_from_bytes(base64.b64decode(meta["tokenizer"]))
        teacher = CTCTeacher(config)
        teacher.load_state_dict(load_file(str(path)))
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelError(f"corrupt CTC teacher file {path}: {str(exc).splitlines()[0]}") from None
    return teacher.eval(), tokenizer

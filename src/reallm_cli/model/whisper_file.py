"""An encoder file: the Whisper encoder's weights in one safetensors file, its config as JSON metadata.

Written by the import (``whisper_import``) with the default streaming schedule; the schedule is chosen
again when the file is loaded (``load_whisper_encoder``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from reallm_cli.errors import ModelError
from reallm_cli.model.file_metadata import safetensors_metadata
from reallm_cli.model.whisper_config import WhisperEncoderConfig
from reallm_cli.model.whisper_encoder import WhisperStreamingEncoder

FILE_FORMAT = "reallm-whisper-encoder/1"


def save_whisper_encoder(path: str | Path, config: WhisperEncoderConfig, state_dict: dict[str, torch.Tensor],
                         dtype: torch.dtype = torch.float32, extra: dict | None = None) -> None:
    """Write encoder weights (``dtype``) with the config as JSON metadata to one safetensors file."""
    from safetensors.torch import save_file

    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"save dtype must be float32 or float16, got {dtype}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in state_dict.items()}
    meta = {"format": FILE_FORMAT, "config": json.dumps(config.to_dict()), "extra": json.dumps(extra or {})}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.chmod(0o644)  # a shared cache file, read by other users' runs
    tmp.replace(path)


def read_whisper_encoder_config(path: str | Path) -> WhisperEncoderConfig:
    """The config stored in an encoder file (as imported: default streaming settings)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"whisper encoder file not found: {path}")
    meta = safetensors_metadata(path)
    if meta is None:
        raise ModelError(f"not a safetensors file: {path}")
    if meta.get("format") != FILE_FORMAT:
        raise ModelError(f"not a reallm whisper encoder file (format {meta.get('format')!r}): {path}")
    try:
        return WhisperEncoderConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, ValueError) as exc:
        raise ModelError(f"corrupt config in whisper encoder file {path}: {exc}") from exc


def load_whisper_encoder(path: str | Path, chunk_ms: int = 240, right_context_ms: int = 0, hop_ms: int = 0,
                         window_ms: int | None = None, overlap_ms: int | None = None,
                         dtype: torch.dtype = torch.float32) -> WhisperStreamingEncoder:
    """Rebuild the encoder from its file with the given streaming schedule (``hop_ms`` 0: one chunk);
    frozen, eval mode, ``dtype``."""
    from safetensors.torch import load_file

    cfg = read_whisper_encoder_config(path)
    changes = {"chunk_ms": chunk_ms, "right_context_ms": right_context_ms, "hop_ms": hop_ms}
    if window_ms is not None:
        changes["window_ms"] = window_ms
    if overlap_ms is not None:
        changes["overlap_ms"] = overlap_ms
    cfg = dataclasses.replace(cfg, **changes)
    model = WhisperStreamingEncoder(cfg)
    state = load_file(str(path))
    try:
        model.load_state_dict({k: v.to(dtype) for k, v in state.items()})
    except RuntimeError as exc:
        raise ModelError(f"whisper encoder file {path} does not match its config: {str(exc).splitlines()[0]}") \
            from exc
    model.to(dtype).eval().requires_grad_(False)
    return model

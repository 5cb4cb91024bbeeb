"""A model file is one safetensors file: weights plus, in its metadata, the config and the tokenizer.

So a file alone rebuilds its model: ``load_model(path)`` needs nothing else.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from reallm_cli.errors import ConfigError, ModelError
from reallm_cli.model.file_metadata import safetensors_metadata
from reallm_cli.model.no_init import no_random_init
from reallm_cli.model.encoder import EncoderConfig, build_encoder
from reallm_cli.model.reallm import ReaLLM, ReaLLMConfig
from reallm_cli.model.whisper_config import WhisperEncoderConfig
from reallm_cli.weights import verify_model_file
from reallm_cli.tokenizer import Tokenizer, tokenizer_from_bytes

FORMAT = "reallm-model/1"


def build_model(config: ReaLLMConfig) -> ReaLLM:
    """A randomly initialised model of this config (load weights into it)."""
    return ReaLLM(config, build_encoder(config.encoder))


def save_model(path: str | Path, model: ReaLLM, tokenizer: Tokenizer, dtype: torch.dtype = torch.float16,
               extra: dict | None = None) -> None:
    """Write weights (``dtype``), config and tokenizer to one safetensors file, atomically. A tied weight
    (the output head that is the token embedding) is written once; ``tied`` names its other keys."""
    path = Path(path)
    tensors, tied, first_of = {}, {}, {}
    for k, v in model.state_dict().items():
        same = (v.data_ptr(), v.shape, v.stride())
        if v.numel() and same in first_of:  # (empty tensors share no memory, whatever their pointer)
            tied[k] = first_of[same]
            continue
        first_of[same] = k
        tensors[k] = v.detach().to(dtype, copy=True).contiguous() if v.is_floating_point() else v.detach().clone()
    meta = {
        "format": FORMAT,
        "tied": json.dumps(tied),
        "config": json.dumps(model.config.to_dict()),
        "tokenizer": base64.b64encode(tokenizer.model_proto).decode("ascii"),
        "extra": json.dumps(extra or {}),
    }
    _write_atomically(path, tensors, meta)


def _write_atomically(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """A half-written file never takes the name: write beside it, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a model file is for everyone to read
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_metadata(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelError(f"model path is a directory, not a model file: {path}")
    meta = safetensors_metadata(path)
    if meta is None:
        raise ModelError(f"not a reallm model file (not safetensors): {path}")
    if meta.get("format") != FORMAT:
        raise ModelError(f"not a reallm model file (safetensors without reallm metadata): {path}")
    return meta


def is_model_file(path: str | Path) -> bool:
    """Whether ``path`` is a reallm model file (rather than another safetensors file, or nothing)."""
    try:
        read_metadata(path)
    except ModelError:
        return False
    return True


def read_config(path: str | Path, meta: dict[str, str]) -> ReaLLMConfig:
    """The config in a model file's metadata, checked through (a one-line ``ModelError`` naming the file)."""
    try:
        return ReaLLMConfig.from_dict(json.loads(meta["config"]))
    except ConfigError as exc:
        raise ModelError(f"model file {path} is refused: {exc}") from exc
    except (KeyError, ValueError) as exc:
        raise ModelError(f"corrupt reallm model file {path}: {exc}") from exc


def load_model(path: str | Path, dtype: torch.dtype = torch.float32,
               right_context_ms: int | None = None) -> tuple[ReaLLM, Tokenizer]:
    """Rebuild model and tokenizer from one file; weights are cast to ``dtype`` (fp32 runs fastest on CPU).
    ``right_context_ms`` replaces a Whisper encoder's right context (a multiple of its chunk): the same
    weights then see more (or less) audio ahead of each hop, a trade of latency for accuracy (model
    card); 0 is chunk-causal, with a hop of one chunk."""
    meta = read_metadata(path)
    config = read_config(path, meta)
    if right_context_ms is not None:
        config = replace(config, encoder=_with_right_context(config.encoder, right_context_ms, path))
    try:
        tokenizer = tokenizer_from_bytes(base64.b64decode(meta["tokenizer"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"corrupt reallm model file {path}: {exc}") from exc
    with no_random_init():  # every weight comes from the file
        model = build_model(config)
    try:
        verify_model_file(path)  # before any weight is read; a mismatch is one line and nothing loads
        state = _read_state(path, meta)
        model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})
    except (RuntimeError, SafetensorError) as exc:
        raise ModelError(f"model file {path} does not match its config: {str(exc).splitlines()[0]}") from exc
    return model.to(dtype).eval(), tokenizer


def _read_state(path: str | Path, meta: dict) -> dict[str, torch.Tensor]:
    """A model file's tensors, a tied weight under each of its names (files before 2026-12-07 hold both)."""
    state = load_file(str(path))
    for alias, source in json.loads(meta.get("tied", "{}")).items():
        state[alias] = state[source]
    return state


def _with_right_context(enc: EncoderConfig, right_context_ms: int, path: str | Path) -> WhisperEncoderConfig:
    """The encoder config with another right context; 0 is chunk-causal, with a hop of one chunk."""
    if not isinstance(enc, WhisperEncoderConfig):
        raise ModelError(f"{path}: the right context can be changed only for a Whisper-encoder model")
    try:
        return replace(enc, right_context_ms=right_context_ms, hop_ms=enc.hop_ms if right_context_ms else 0)
    except ConfigError as exc:
        raise ModelError(f"a right context of {right_context_ms} ms does not fit {path}: {exc}") from exc


def model_extra(path: str | Path) -> dict:
    return json.loads(read_metadata(path).get("extra", "{}"))


def average_models(paths: list[str | Path], out: str | Path, extra: dict | None = None) -> None:
    """Write the mean of the weights of model files that share one config and tokenizer (checkpoints of
    one run, or runs from one initialisation) to ``out``, in the first file's dtype. ``extra`` replaces
    the first file's training record; the file names averaged are added to it."""
    if len(paths) < 2:
        raise ModelError("averaging needs at least two model files")
    metas = [read_metadata(p) for p in paths]
    config = read_config(paths[0], metas[0])
    for p, m in zip(paths[1:], metas[1:]):  # the same config, even where two versions wrote it apart
        if read_config(p, m) != config or m["tokenizer"] != metas[0]["tokenizer"]:
            raise ModelError(f"{p} has another config or tokenizer than {paths[0]}: its weights cannot be averaged")
    states = [_read_state(p, m) for p, m in zip(paths, metas)]
    tied = {}
    for m in metas:
        tied.update(json.loads(m.get("tied", "{}")))
    tensors = {}
    for name, first in states[0].items():
        if name in tied:  # written once, under its first name
            continue
        if first.is_floating_point():
            tensors[name] = (sum(s[name].double() for s in states) / len(states)).to(first.dtype).contiguous()
        else:
            tensors[name] = first
    record = dict(extra if extra is not None else json.loads(metas[0].get("extra", "{}")))
    record["average_of"] = [Path(p).name for p in paths]
    _write_atomically(Path(out), tensors, dict(metas[0], extra=json.dumps(record), tied=json.dumps(tied)))

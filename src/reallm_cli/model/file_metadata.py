"""The metadata block of a safetensors file, read without loading any tensor: every reallm file kind
(model, Whisper encoder, CTC teacher) keeps its format tag and config there."""

from __future__ import annotations

from pathlib import Path


def safetensors_metadata(path: str | Path) -> dict[str, str] | None:
    """The file's metadata ({} when it has none), or None when it is not a readable safetensors file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return None

"""The one interface every streaming encoder offers, so engine, recipe and CLI need not care which runs;
and the tagged union of their configs, as a model file stores them.

Contract (both encoders, the Conformer and the chunk-causal Whisper, keep it):
- input is normalised log-mel, (B, T_mel, 80), 10 ms frames (see ``reallm_cli.audio.features``);
- output is frame-level features, (B, T_out, out_dim), one frame every ``frame_ms``;
  ``frames_per_chunk = chunk_ms // frame_ms`` output frames make one speech embedding;
- output frames of chunk c depend on mel up to the end of chunk c plus ``wait_ms`` only, and are final
  once that much audio past the chunk's end has arrived (the engine waits for it);
- ``hop_chunks`` chunks become final together (1, or a hop of a Whisper encoder): chunk c's frames are
  ready at the end of its hop plus ``wait_ms - (hop_chunks - 1) * chunk_ms``;
- ``stem_lookahead_ms``: how far past a chunk's last mel frame the input stem reads (the front end then
  needs the STFT's half window past that frame's centre: ``engine.frontend_lookahead_ms``);
- ``forward`` runs whole utterances (the Conformer in parallel with chunk-causal masks, the Whisper
  encoder on its streaming schedule); ``init_state``/``step``/``flush`` stream them; the frames that ``step`` and ``flush`` return, concatenated, equal ``forward``'s.
  ``step`` returns only frames that are final (whole chunks whose wait is over).
"""

from __future__ import annotations

from typing import Any, Protocol, Union, runtime_checkable

import torch

from reallm_cli.errors import ConfigError
from reallm_cli.model.conformer import ConformerConfig, ConformerEncoder
from reallm_cli.model.whisper_config import WhisperEncoderConfig
from reallm_cli.model.whisper_encoder import WhisperStreamingEncoder


@runtime_checkable
class StreamingEncoder(Protocol):
    out_dim: int
    frame_ms: int
    chunk_ms: int
    wait_ms: int
    hop_chunks: int
    stem_lookahead_ms: int

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T_mel, 80), (B,) -> frames (B, T_out, out_dim), lengths (B,)."""
        ...

    def init_state(self, batch_size: int = 1) -> Any: ...

    def step(self, mel: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        """Push (B, t, 80) mel frames; return the newly final output frames (B, t', out_dim)."""
        ...

    def flush(self, state: Any) -> tuple[torch.Tensor, Any]:
        """End of stream: return the remaining output frames."""
        ...


# The encoder configs a model file may hold, by the tag it stores beside them ("encoder_kind").
EncoderConfig = Union[WhisperEncoderConfig, ConformerConfig]
ENCODER_CONFIGS = {cls.kind: cls for cls in (WhisperEncoderConfig, ConformerConfig)}


def encoder_config_from_dict(kind: str, d: dict) -> EncoderConfig:
    """The encoder config a file stores under its tag; an unknown tag or a config that does not fit is a
    ``ConfigError``."""
    if kind not in ENCODER_CONFIGS:
        raise ConfigError(f"unknown encoder kind {kind!r} (known: {', '.join(sorted(ENCODER_CONFIGS))})")
    return ENCODER_CONFIGS[kind].from_dict(d)


def build_encoder(config: EncoderConfig) -> StreamingEncoder:
    """A randomly initialised encoder of this config (load weights into it)."""
    if isinstance(config, WhisperEncoderConfig):
        return WhisperStreamingEncoder(config)
    return ConformerEncoder(config)

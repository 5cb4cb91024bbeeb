"""The Whisper encoder's config: its architecture (from the pretrained file) and its streaming schedule.

The schedule (see ``whisper_encoder``): output frames of 20 ms, grouped in chunks of ``chunk_ms``; each
step finishes one hop of ``hop_ms`` and lets every layer see ``right_context_ms`` of audio after it;
endless audio is cut into windows of ``window_ms`` that re-encode ``overlap_ms`` as left context.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from reallm_cli.errors import ConfigError
from reallm_cli.model.config import config_from_dict
from reallm_cli.timebase import MEL_FRAME_MS, N_MELS

FRAME_MS = 2 * MEL_FRAME_MS  # conv2 has stride 2: one output frame per 20 ms


class WhisperConfigError(ConfigError):
    """Inconsistent chunk / right context / hop / window settings."""


@dataclass(frozen=True)
class WhisperEncoderConfig:
    """Architecture plus streaming schedule; every length a multiple of the chunk (the chunk of 20 ms)."""

    kind: ClassVar[str] = "whisper"  # the tag of this config in a model file

    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 6
    ffn_dim: int = 2048
    n_mels: int = N_MELS
    n_ctx: int = 1500  # positions Whisper was trained with (30 s of 20 ms frames)
    layer_norm_eps: float = 1e-5
    chunk_ms: int = 240
    # Every layer sees this much audio past the hop it finishes; those frames are recomputed at the next
    # step (Emformer-style). 0 with a hop of one chunk is plain chunk-causal attention.
    right_context_ms: int = 0
    hop_ms: int = 0  # audio one step finishes; 0 is read as one chunk
    # 28.8 s windows, 4.8 s re-encoded: a restart every ~24 s; multiples of both 240 and 480 ms chunks.
    window_ms: int = 28_800  # one encoder window (<= n_ctx frames)
    overlap_ms: int = 4_800  # left context re-encoded at each restart
    source: str = ""  # e.g. "whisper-base", for humans

    def __post_init__(self) -> None:
        if self.hop_ms == 0:  # frozen: the one field filled in after construction
            object.__setattr__(self, "hop_ms", self.chunk_ms)

        def bad(msg: str) -> None:
            raise WhisperConfigError(f"whisper encoder config: {msg}")

        if self.d_model % self.n_heads:
            bad(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.chunk_ms <= 0 or self.chunk_ms % FRAME_MS:
            bad(f"chunk_ms {self.chunk_ms} must be a positive multiple of {FRAME_MS} ms")
        for name in ("right_context_ms", "hop_ms", "window_ms", "overlap_ms"):
            v = getattr(self, name)
            if v < 0 or v % self.chunk_ms or (v == 0 and name == "window_ms"):
                bad(f"{name} {v} must be {'a positive' if name == 'window_ms' else '0 or a'} multiple of "
                    f"chunk_ms {self.chunk_ms}")
        if self.window_frames > self.n_ctx:
            bad(f"window_ms {self.window_ms} exceeds the {self.n_ctx * FRAME_MS} ms the model has positions for")
        if self.overlap_ms % self.hop_ms:
            bad(f"overlap_ms {self.overlap_ms} must be a multiple of hop_ms {self.hop_ms}")
        if self.stride_frames <= 0:
            bad(f"window_ms {self.window_ms} must exceed overlap_ms + right_context_ms + hop_ms "
                f"({self.overlap_ms} + {self.right_context_ms} + {self.hop_ms})")

    @classmethod
    def from_dict(cls, d: dict) -> "WhisperEncoderConfig":
        """The config as a model or encoder file stores it: every field, no other key."""
        d = dict(d)
        # Files written before the layer-wise look-ahead was removed name it; only its "off" still reads.
        if d.pop("lookahead_ms", 0):
            raise WhisperConfigError("whisper encoder config: lookahead_ms > 0 asks for the layer-wise look-ahead, "
                                     "which this version no longer has (right_context_ms replaces it)")
        return config_from_dict(cls, d, "whisper encoder config")

    @property
    def frame_ms(self) -> int:
        return FRAME_MS

    @property
    def frames_per_chunk(self) -> int:
        return self.chunk_ms // FRAME_MS

    @property
    def hop_chunks(self) -> int:
        return self.hop_ms // self.chunk_ms

    @property
    def wait_ms(self) -> int:
        """How much audio past the end of a chunk its output frames wait for, at most: the right context, and
        for the first chunk of a hop the rest of the hop."""
        return self.right_context_ms + self.hop_ms - self.chunk_ms

    @property
    def window_frames(self) -> int:
        return self.window_ms // FRAME_MS

    @property
    def overlap_frames(self) -> int:
        return self.overlap_ms // FRAME_MS

    @property
    def stride_frames(self) -> int:
        """Distance between window starts, whole hops that leave room for their right context in the window:
        each window emits this many frames (the first one: + overlap)."""
        hop = self.hop_ms // FRAME_MS
        return (self.window_frames - self.overlap_frames - self.right_context_ms // FRAME_MS) // hop * hop

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def window_start_frame(cfg: WhisperEncoderConfig, k: int) -> int:
    """First (global) output frame encoded by window k, at position 0."""
    return k * cfg.stride_frames


def window_emit_range(cfg: WhisperEncoderConfig, k: int) -> tuple[int, int]:
    """Global output frames [start, end) that window k emits; consecutive windows tile the stream."""
    start = 0 if k == 0 else window_start_frame(cfg, k) + cfg.overlap_frames
    return start, window_start_frame(cfg, k + 1) + cfg.overlap_frames

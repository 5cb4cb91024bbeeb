"""Speech ReaLLM: a streaming encoder, a projection of each chunk's frames to speech embeddings, and a decoder.

The decoder reads the speech embedding(s) of each chunk in the same sequence as word pieces; after each
chunk it emits pieces until BLANK. Training is cross-entropy on that interleaved sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from reallm_cli.errors import ConfigError
from reallm_cli.model.config import config_from_dict
from reallm_cli.model.cross_decoder import CrossAttentionDecoder, CrossDecoderConfig
from reallm_cli.model.decoder import DecoderConfig, LlamaDecoder
from reallm_cli.model.encoder import EncoderConfig, StreamingEncoder, encoder_config_from_dict
from reallm_cli.timebase import exact_div


@dataclass(frozen=True)
class ReaLLMConfig:
    encoder: EncoderConfig  # a Whisper encoder's or a Conformer's; a file tags it with its ``kind``
    # The paper's decoder-only transformer (speech embeddings in its sequence), or one that reads the encoder's
    # frames through cross-attention (``cross_decoder``); a file tags the latter with ``decoder_kind``.
    decoder: DecoderConfig | CrossDecoderConfig
    max_tokens_per_chunk: int = 10  # stops a looping decoder; no chunk of 240 ms holds more pieces
    # Silence the engine feeds before each stream's audio (a multiple of the chunk): a model whose training
    # utterances all began with a pause misses a word spoken in the very first chunk without it.
    lead_in_ms: int = 0
    # A model trained to write each token this many chunks after its teacher chunk (train.py
    # --emit-delay-chunks): the engine dates words that much earlier and decodes as many chunks of
    # silence after a stream's end, so that the last word still comes out.
    emit_delay_chunks: int = 0
    # Chunks of silence decoded after a stream's end beyond the emit delay's, for a model whose encoder
    # frames at the very end must see silence past the audio, as its training's did (0: none).
    end_silence_chunks: int = 0
    # Speech embeddings per chunk. The paper's 1 asks a single vector to carry all of a 240 ms chunk; with
    # n, each of n equal slices of the chunk's frames becomes one embedding (the decoder still decides
    # only once per chunk, after its last slot).
    slots_per_chunk: int = 1
    # Width of a hidden GELU layer in the projector (0: one linear map from the stacked frames, the paper's).
    projector_hidden: int = 0

    def __post_init__(self) -> None:
        if self.slots_per_chunk < 1:
            raise ValueError(f"slots_per_chunk must be >= 1, got {self.slots_per_chunk}")
        if self.projector_hidden < 0:
            raise ValueError(f"projector_hidden must be >= 0, got {self.projector_hidden}")

    @property
    def encoder_kind(self) -> str:
        return self.encoder.kind

    @property
    def cross_attention(self) -> bool:
        return isinstance(self.decoder, CrossDecoderConfig)

    def to_dict(self) -> dict:
        return {
            **({"decoder_kind": "cross"} if self.cross_attention else {}),
            "encoder_kind": self.encoder.kind,
            "encoder": self.encoder.to_dict(),
            "decoder": self.decoder.to_dict(),
            "max_tokens_per_chunk": self.max_tokens_per_chunk,
            "lead_in_ms": self.lead_in_ms,
            "emit_delay_chunks": self.emit_delay_chunks,
            "end_silence_chunks": self.end_silence_chunks,
            "slots_per_chunk": self.slots_per_chunk,
            "projector_hidden": self.projector_hidden,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ReaLLMConfig":
        """The config as a model file stores it, checked through: encoder and decoder configs with every key
        (the encoder's chosen by ``encoder_kind``); the options after them may be missing (older files),
        and read as their defaults. Anything unknown or inconsistent is a one-line ``ConfigError``."""
        if not isinstance(d, dict):
            raise ConfigError(f"model config: expected an object, got {type(d).__name__}")
        missing = [k for k in ("encoder_kind", "encoder", "decoder") if k not in d]
        if missing:
            raise ConfigError(f"model config: missing key(s) {', '.join(missing)}")
        kinds = {"decoder-only": DecoderConfig, "cross": CrossDecoderConfig}
        kind = d.get("decoder_kind", "decoder-only")  # files before cross-attention have no such key
        if kind not in kinds:
            raise ConfigError(f"model config: unknown decoder_kind {kind!r}")
        rest = {k: v for k, v in d.items() if k not in ("encoder_kind", "decoder_kind")}
        rest["encoder"] = encoder_config_from_dict(d["encoder_kind"], d["encoder"])
        rest["decoder"] = config_from_dict(kinds[kind], d["decoder"], "decoder config")
        return config_from_dict(cls, rest, "model config", all_keys=False)


class ChunkProjector(nn.Module):
    """Stacks the encoder frames of each slot (a chunk, or an equal slice of one) and projects them to
    one decoder-sized speech embedding: LayerNorm, then a linear map, or with ``hidden`` > 0 a GELU layer of
    that width before it."""

    def __init__(self, frames_per_chunk: int, enc_dim: int, d_model: int, slots: int = 1, hidden: int = 0):
        super().__init__()
        self.frames_per_chunk = frames_per_chunk
        self.frames_per_slot = exact_div(frames_per_chunk, slots)
        width = self.frames_per_slot * enc_dim
        self.norm = nn.LayerNorm(width)
        self.hidden = nn.Sequential(nn.Linear(width, hidden), nn.GELU()) if hidden else nn.Identity()
        self.proj = nn.Linear(hidden or width, d_model)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, ceil(T / k) * slots, d_model), chunk by chunk; a final partial chunk is
        zero-padded, as at flush."""
        b, t, c = frames.shape
        k = self.frames_per_chunk
        pad = (-t) % k
        if pad:
            frames = F.pad(frames, (0, 0, 0, pad))
        stacked = frames.reshape(b, (t + pad) // self.frames_per_slot, self.frames_per_slot * c)
        return self.proj(self.hidden(self.norm(stacked)))


class ReaLLM(nn.Module):
    def __init__(self, config: ReaLLMConfig, encoder: StreamingEncoder):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.frames_per_chunk = exact_div(encoder.chunk_ms, encoder.frame_ms)
        if config.cross_attention:  # the decoder reads the frames themselves
            if encoder.out_dim != config.decoder.d_model:
                raise ConfigError(f"a cross-attention decoder of width {config.decoder.d_model} cannot read "
                                  f"encoder frames of width {encoder.out_dim}")
            self.projector = nn.Identity()
            self.decoder = CrossAttentionDecoder(config.decoder)
        else:
            self.projector = ChunkProjector(self.frames_per_chunk, encoder.out_dim, config.decoder.d_model,
                                            config.slots_per_chunk, config.projector_hidden)
            self.decoder = LlamaDecoder(config.decoder)

    @property
    def chunk_ms(self) -> int:
        return self.encoder.chunk_ms

    def chunk_lengths(self, frame_lengths: torch.Tensor) -> torch.Tensor:
        return (frame_lengths + self.frames_per_chunk - 1) // self.frames_per_chunk

    @property
    def slots_per_chunk(self) -> int:
        """Speech vectors per chunk that the decoder reads: the projector's slots, or every frame."""
        return self.frames_per_chunk if self.config.cross_attention else self.config.slots_per_chunk

    def speech_embeddings(self, frames: torch.Tensor) -> torch.Tensor:
        """Encoder frames (B, T, C) -> speech embeddings (B, N * slots_per_chunk, D), chunk by chunk (for a
        cross-attention decoder, the frames themselves, a final partial chunk zero-padded)."""
        if self.config.cross_attention:
            return F.pad(frames, (0, 0, 0, (-frames.shape[1]) % self.frames_per_chunk))
        return self.projector(frames)

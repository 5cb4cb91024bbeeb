"""A pretrained Whisper encoder made chunk-causal, with a parallel ``forward`` and a streaming ``step``.

Pipeline (Whisper's, unchanged): log-mel (10 ms frames) -> conv1 (k3, pad 1) + GELU -> conv2 (k3, stride 2,
pad 1) + GELU -> + sinusoidal position -> pre-norm transformer layers -> final layer norm; one output frame
every 20 ms. What we change is only *what each frame may attend to*:

- **Chunks.** Output frames are grouped in chunks of ``chunk_ms`` (12 frames at 240 ms). A frame sees all
  frames of its own chunk and every earlier chunk of the current window.
- **Look-ahead, layer-wise.** With ``lookahead_ms = N * chunk_ms`` the first N layers let chunk c also see
  chunk c + 1; the remaining layers are chunk-causal. Output chunk c then depends on input up to chunk c + N
  exactly, whatever the depth. (A mask letting *every* layer look one chunk ahead would give a receptive
  field of n_layers chunks.) Streaming stays exact: layer l < N holds its newest chunk back until the next
  chunk's keys arrive, the upper layers run as soon as their input is there.
- **Or right context, Emformer-style** (``right_context_ms`` > 0, ``hop_ms``): each step finishes one hop of
  frames, running every layer over the hop plus the ``right_context_ms`` of frames after it, with the keys
  and values kept from earlier hops. The hop's keys and values are kept; the right context's are thrown
  away and recomputed at the next step. Every layer then sees the same span ahead, for (hop + right
  context) / hop times the compute; a pretrained encoder needs no adaptation to it (the default model).
- **Conv stem.** The convolutions are kept as trained; conv2's output frame j reads mel frames 2j-2 .. 2j+2,
  so a chunk also needs the first mel frame (10 ms) of the next one: ``stem_lookahead_ms = 10`` on top of
  ``lookahead_ms``. The stream starts with zero padding, like the offline convolution.
- **Windows (restarts).** Whisper only knows positions 0 .. 1499 (30 s). Endless audio is cut into windows
  of ``window_ms``; window k starts at frame ``k * stride`` (stride = window - overlap - look-ahead) and
  re-encodes ``overlap_ms`` of audio from position 0 as left context. Every output frame is emitted by
  exactly one window, one whose input holds the frame's full look-ahead. The conv stem is position-free and
  runs continuously. ``forward`` applies the same windows, so forward == step on any length.

Streaming cost is bounded: per window and layer a preallocated KV cache of ``window`` frames; at most two
windows are open at once (the new one is encoded alongside the old one during the overlap, so there is
no burst of re-encoding at a restart).

Numerics: forward and step agree to ~1e-6 on random weights; with Whisper's weights the residual stream
reaches ~500, so in float32 they differ by up to ~1e-3 from rounding alone (float64: 1e-13).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from reallm_cli.errors import ModelError, ReallmError
from reallm_cli.timebase import MEL_FRAME_MS, N_MELS

FRAME_MS = 2 * MEL_FRAME_MS  # conv2 has stride 2: one output frame per 20 ms
STEM_LOOKAHEAD_MS = MEL_FRAME_MS  # conv2 frame j needs mel frame 2j+2, one past its own two frames
FILE_FORMAT = "reallm-whisper-encoder/1"


class WhisperConfigError(ReallmError):
    """Inconsistent chunk / look-ahead / window settings."""


class EncoderInputError(ReallmError):
    """Mel input of the wrong shape, or a stream used after its end."""


@dataclass(frozen=True)
class WhisperEncoderConfig:
    """Architecture (from the pretrained file) plus the streaming schedule (chosen at load time)."""

    d_model: int = 512
    n_heads: int = 8
    n_layers: int = 6
    ffn_dim: int = 2048
    n_mels: int = N_MELS
    n_ctx: int = 1500  # positions Whisper was trained with (30 s of 20 ms frames)
    layer_norm_eps: float = 1e-5
    chunk_ms: int = 240
    lookahead_ms: int = 0  # N * chunk_ms, spent in the first N layers
    # Right-context mode (when > 0; then lookahead_ms is 0): every layer sees this much audio ahead, and
    # those frames are recomputed at each step, Emformer-style (see the module docstring).
    right_context_ms: int = 0
    hop_ms: int = 0  # right-context mode: audio finished per step, a multiple of chunk_ms (0: one chunk)
    # 28.8 s windows, 4.8 s re-encoded: a restart every ~24 s; multiples of both 240 and 480 ms chunks.
    window_ms: int = 28_800  # one encoder window (<= n_ctx frames)
    overlap_ms: int = 4_800  # left context re-encoded at each restart
    source: str = ""  # e.g. "whisper-base", for humans

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise WhisperConfigError(f"whisper encoder config: {msg}")

        if self.d_model % self.n_heads:
            bad(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.chunk_ms <= 0 or self.chunk_ms % FRAME_MS:
            bad(f"chunk_ms {self.chunk_ms} must be a positive multiple of {FRAME_MS} ms")
        if self.lookahead_ms < 0 or self.lookahead_ms % self.chunk_ms:
            bad(f"lookahead_ms {self.lookahead_ms} must be 0 or a multiple of chunk_ms {self.chunk_ms}")
        if self.lookahead_chunks > self.n_layers:
            bad(f"look-ahead of {self.lookahead_chunks} chunks needs more than {self.n_layers} layers")
        if self.window_ms <= 0 or self.window_ms % self.chunk_ms:
            bad(f"window_ms {self.window_ms} must be a positive multiple of chunk_ms {self.chunk_ms}")
        if self.window_frames > self.n_ctx:
            bad(f"window_ms {self.window_ms} exceeds the {self.n_ctx * FRAME_MS} ms the model has positions for")
        if self.overlap_ms < 0 or self.overlap_ms % self.chunk_ms:
            bad(f"overlap_ms {self.overlap_ms} must be 0 or a multiple of chunk_ms {self.chunk_ms}")
        if self.right_context_ms:
            if self.lookahead_ms:
                bad("lookahead_ms and right_context_ms exclude each other")
            for name in ("right_context_ms", "hop_ms"):
                v = getattr(self, name)
                if v < 0 or v % self.chunk_ms:
                    bad(f"{name} {v} must be 0 or a multiple of chunk_ms {self.chunk_ms}")
            if self.overlap_ms % self.step_ms:
                bad(f"overlap_ms {self.overlap_ms} must be a multiple of hop_ms {self.step_ms}")
        elif self.hop_ms:
            bad("hop_ms needs right_context_ms")
        if self.stride_frames <= 0:
            bad(f"window_ms {self.window_ms} must exceed overlap_ms + look-ahead "
                f"({self.overlap_ms} + {self.ahead_ms})")

    @property
    def frame_ms(self) -> int:
        return FRAME_MS

    @property
    def frames_per_chunk(self) -> int:
        return self.chunk_ms // FRAME_MS

    @property
    def lookahead_chunks(self) -> int:
        return self.lookahead_ms // self.chunk_ms

    @property
    def step_ms(self) -> int:
        """Right-context mode: the audio one step finishes (hop_ms, by default one chunk)."""
        return self.hop_ms or self.chunk_ms

    @property
    def ahead_ms(self) -> int:
        """How much audio past the end of a chunk its output frames wait for (at most, in right-context mode:
        the first chunk of a hop waits for the rest of the hop too)."""
        if self.right_context_ms:
            return self.right_context_ms + self.step_ms - self.chunk_ms
        return self.lookahead_ms

    @property
    def window_frames(self) -> int:
        return self.window_ms // FRAME_MS

    @property
    def overlap_frames(self) -> int:
        return self.overlap_ms // FRAME_MS

    @property
    def stride_frames(self) -> int:
        """Distance between window starts: each window emits this many frames (the first one: + overlap)."""
        if self.right_context_ms:  # whole hops, each with its right context inside the window
            step = self.step_ms // FRAME_MS
            return (self.window_frames - self.overlap_frames - self.right_context_ms // FRAME_MS) // step * step
        return self.window_frames - self.overlap_frames - self.lookahead_chunks * self.frames_per_chunk

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def window_start_frame(cfg: WhisperEncoderConfig, k: int) -> int:
    """First (global) output frame encoded by window k, at position 0."""
    return k * cfg.stride_frames


def window_emit_range(cfg: WhisperEncoderConfig, k: int) -> tuple[int, int]:
    """Global output frames [start, end) that window k emits; consecutive windows tile the stream."""
    start = 0 if k == 0 else window_start_frame(cfg, k) + cfg.overlap_frames
    return start, window_start_frame(cfg, k + 1) + cfg.overlap_frames


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's fixed position table (length, channels): sin | cos over geometric timescales 1 .. 10000."""
    half = channels // 2
    inc = math.log(10_000) / (half - 1)
    inv = torch.exp(-inc * torch.arange(half, dtype=torch.float64))
    t = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([t.sin(), t.cos()], dim=1).float()


def chunk_mask(q_start: int, n_q: int, n_k: int, frames_per_chunk: int, lookahead_chunks: int,
               device: torch.device) -> torch.Tensor | None:
    """(n_q, n_k) bool, True = may attend: key chunk <= query chunk + look-ahead; None when all keys are visible."""
    if n_q == 0 or n_k == 0:
        return None
    if (n_k - 1) // frames_per_chunk <= q_start // frames_per_chunk + lookahead_chunks:
        return None
    q_chunk = torch.arange(q_start, q_start + n_q, device=device) // frames_per_chunk
    k_chunk = torch.arange(n_k, device=device) // frames_per_chunk
    return k_chunk[None, :] <= q_chunk[:, None] + lookahead_chunks


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Linear(d_model, d_model)
        # No key bias, as in Whisper: it adds the same q.b to every logit of a query, which softmax ignores.
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.key_value: nn.Module | None = None  # inference only: key and value as one (quantize.fuse_projections)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, H, T, dh)

    def keys_values(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.key_value is not None:
            b, t, _ = h.shape
            kv = self.key_value(h).view(b, t, 2 * self.n_heads, -1).transpose(1, 2)  # (B, 2H, T, dh)
            return kv[:, : self.n_heads], kv[:, self.n_heads:]
        return self.heads(self.key(h)), self.heads(self.value(h))

    def attend(self, h: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = self.heads(self.query(h))  # (B, H, Tq, dh)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, Tq, dh)
        b, _, t, _ = a.shape
        return self.out(a.transpose(1, 2).reshape(b, t, -1))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, cfg: WhisperEncoderConfig):
        super().__init__()
        self.attn_ln = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads)
        self.mlp_ln = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.ffn_dim), nn.GELU(), nn.Linear(cfg.ffn_dim, cfg.d_model))

    def finish(self, x: torch.Tensor, h: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        """Queries x (B, Tq, D) with h = attn_ln(x), over keys/values (B, H, Tk, dh) -> (B, Tq, D)."""
        x = x + self.attn.attend(h, k, v, mask)
        return x + self.mlp(self.mlp_ln(x))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.attn_ln(x)
        k, v = self.attn.keys_values(h)
        return self.finish(x, h, k, v, mask)


# ----------------------------------------------------------------------------------------- streaming state


@dataclass
class LayerCache:
    """One layer of one window."""

    k: torch.Tensor  # (B, H, window_frames, dh), valid [:, :, :n_keys]
    v: torch.Tensor  # (B, H, window_frames, dh)
    held: torch.Tensor  # (B, <= frames_per_chunk, D) inputs whose queries wait for the next chunk (look-ahead layers)
    n_keys: int = 0  # frames whose keys/values are cached
    n_queries: int = 0  # frames this layer has output


@dataclass
class WindowState:
    index: int  # k
    start_frame: int  # global output frame at position 0
    emit_start: int  # global output frames [emit_start, emit_end) are this window's to emit
    emit_end: int
    layers: list[LayerCache]
    n_fed: int = 0  # frames fed (positions 0 .. n_fed-1)
    todo: torch.Tensor | None = None  # right-context mode: inputs (B, t, D) fed and not yet final


@dataclass
class WhisperStreamState:
    mel_tail: torch.Tensor  # (B, <= 2, n_mels) last mel frames conv1 still needs; starts as one zero pad frame
    h1_tail: torch.Tensor  # (B, <= 2, D) conv1 outputs conv2 still needs; starts as one zero pad frame
    pending: torch.Tensor  # (B, < frames_per_chunk, D) conv frames not yet a whole chunk
    windows: list[WindowState] = field(default_factory=list)  # open windows, oldest first (at most 2)
    next_window: int = 0  # index of the next window to open
    n_fed: int = 0  # conv frames fed to the transformer windows (global)
    n_emitted: int = 0  # output frames returned so far
    n_mel: int = 0  # mel frames pushed
    finished: bool = False


# ----------------------------------------------------------------------------------------- the encoder


class WhisperStreamingEncoder(nn.Module):
    """Chunk-causal Whisper encoder; keeps the StreamingEncoder contract (model/encoder.py)."""

    def __init__(self, config: WhisperEncoderConfig):
        super().__init__()
        self.config = config
        self.out_dim = config.d_model
        self.frame_ms = FRAME_MS
        self.chunk_ms = config.chunk_ms
        self.lookahead_ms = config.ahead_ms  # what the engine waits for past a chunk's end (at most)
        self.hop_chunks = config.step_ms // config.chunk_ms if config.right_context_ms else 1  # chunks a step finishes
        self.stem_lookahead_ms = STEM_LOOKAHEAD_MS
        self.conv1 = nn.Conv1d(config.n_mels, config.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(config.d_model, config.d_model, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(config.n_ctx, config.d_model))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(config) for _ in range(config.n_layers))
        self.ln_post = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    # ---- helpers

    def _layer_lookahead(self, layer: int) -> int:
        return 1 if layer < self.config.lookahead_chunks else 0

    def _check_mel(self, mel: torch.Tensor) -> None:
        if mel.dim() != 3 or mel.shape[-1] != self.config.n_mels:
            raise EncoderInputError(f"expected log-mel of shape (batch, frames, {self.config.n_mels}), "
                                    f"got {tuple(mel.shape)}")

    def conv_stem(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T_mel, n_mels) -> (B, ceil(T_mel / 2), D), lengths; padding frames act as the stream's end."""
        b, t, _ = mel.shape
        if t == 0:
            return mel.new_zeros(b, 0, self.config.d_model), torch.zeros_like(mel_lengths)
        valid = torch.arange(t, device=mel.device)[None, :] < mel_lengths[:, None]  # (B, T_mel)
        x = (mel * valid[..., None]).transpose(1, 2)  # (B, n_mels, T_mel)
        h1 = F.gelu(self.conv1(x)) * valid[:, None, :]  # conv2 must see zeros past the end, as when streaming
        h2 = F.gelu(self.conv2(h1)).transpose(1, 2)  # (B, T_out, D)
        return h2, (mel_lengths + 1) // 2

    def _encode_window(self, x: torch.Tensor, valid: torch.Tensor | None, full_attention: bool,
                       upto: int | None) -> list[torch.Tensor]:
        """One window (positions from 0) in one masked pass over (B, T, D) conv frames.

        Returns [final frames] if ``upto`` is None, else the inputs of blocks 0 .. upto (upto + 1 tensors:
        conv frames + positions, then each block's output), running only the blocks needed.
        """
        t = x.shape[1]
        x = x + self.positional_embedding[:t].to(x.dtype)
        masks = self._window_masks(t, valid, full_attention, x.device)
        hidden = [x]
        for layer, block in enumerate(self.blocks[: self.config.n_layers if upto is None else upto]):
            x = block(x, masks[self._layer_lookahead(layer)])
            hidden.append(x)
        return [self.ln_post(x)] if upto is None else hidden

    def _window_masks(self, t: int, valid: torch.Tensor | None, full_attention: bool,
                      device: torch.device) -> dict[int, torch.Tensor | None]:
        """Attention masks of one window of ``t`` frames, by look-ahead (0 or 1 chunk); ``valid`` = lengths."""
        cfg = self.config
        masks = {}
        for la in (0, 1):
            m = None if full_attention else chunk_mask(0, t, t, cfg.frames_per_chunk, la, device)
            if valid is not None:
                key_ok = torch.arange(t, device=device)[None, :] < valid[:, None]  # (B, T)
                m2 = key_ok[:, None, :] if m is None else (m[None] & key_ok[:, None, :])  # (B, T|1, T)
                # Padding queries see everything, so no row is all -inf (their outputs are discarded).
                m = (m2 | ~key_ok[:, :, None])[:, None]  # (B, 1, T, T)
            masks[la] = m
        return masks

    def forward_top(self, hidden: torch.Tensor, lengths: torch.Tensor, start: int) -> torch.Tensor:
        """Blocks ``start`` .. end and ``ln_post`` on ``hidden`` (B, T, D), the input of block ``start``
        (``forward_hidden(...)[0][start]``) -> final frames (B, T, D), padding zeroed.

        Covers one window (T <= ``window_ms``): there it equals ``forward``. Used to train or re-run the top
        blocks on cached hidden states (encoder adaptation) without re-running the lower ones.
        """
        t = hidden.shape[1]
        if self.config.right_context_ms:
            raise EncoderInputError("forward_top is not available in right-context mode")
        if not 0 <= start <= self.config.n_layers:
            raise EncoderInputError(f"start must be in 0..{self.config.n_layers}, got {start}")
        if t > self.config.window_frames:
            raise EncoderInputError(f"forward_top covers one window ({self.config.window_frames} frames), got {t}")
        valid = None if bool((lengths == t).all()) else lengths.to(hidden.device)
        masks = self._window_masks(t, valid, False, hidden.device)
        x = hidden
        for layer in range(start, self.config.n_layers):
            x = self.blocks[layer](x, masks[self._layer_lookahead(layer)])
        return self._zero_padding(self.ln_post(x), lengths.to(hidden.device))

    # ---- parallel

    def forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor, *,
                full_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T_mel, n_mels), (B,) -> frames (B, T_out, D), lengths (B,); T_out = ceil(T_mel / 2).

        ``full_attention=True`` is the original Whisper (no mask, one window, positions from 0); it exists to
        check an import against the original's outputs.
        """
        outs, lengths = self._forward(mel, mel_lengths, full_attention, upto=None)
        return outs[0], lengths

    def forward_hidden(self, mel: torch.Tensor, mel_lengths: torch.Tensor, *, upto: int | None = None,
                       full_attention: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Inputs of blocks 0 .. upto (default all: n_layers + 1 tensors (B, T_out, D); the last is the final
        block's output before ``ln_post``), stitched across windows like ``forward``; runs only ``upto``
        blocks. For feature caches: within one window (<= ``window_ms``), running the remaining blocks on
        hidden[upto] with the same masks reproduces ``forward`` exactly."""
        upto = self.config.n_layers if upto is None else upto
        if not 0 <= upto <= self.config.n_layers:
            raise EncoderInputError(f"upto must be in 0..{self.config.n_layers}, got {upto}")
        return self._forward(mel, mel_lengths, full_attention, upto=upto)

    def _forward(self, mel: torch.Tensor, mel_lengths: torch.Tensor, full_attention: bool,
                 upto: int | None) -> tuple[list[torch.Tensor], torch.Tensor]:
        self._check_mel(mel)
        if mel_lengths.shape != (mel.shape[0],):
            raise EncoderInputError(f"mel_lengths must have shape ({mel.shape[0]},), got {tuple(mel_lengths.shape)}")
        mel_lengths = mel_lengths.to(mel.device)
        x, lengths = self.conv_stem(mel, mel_lengths)  # (B, T, D)
        b, t, d = x.shape
        cfg = self.config
        if full_attention:
            if t > cfg.n_ctx:
                raise EncoderInputError(f"full attention covers {cfg.n_ctx} frames ({cfg.n_ctx * FRAME_MS} ms) "
                                        f"at most, got {t}")
            valid = None if bool((lengths == t).all()) else lengths
            outs = self._encode_window(x, valid, True, upto)
            return [self._zero_padding(y, lengths) for y in outs], lengths
        if cfg.right_context_ms:
            if upto is not None:
                raise EncoderInputError("hidden states of single blocks are not available in right-context mode")
            y = x.new_zeros(b, t, d)
            for i in range(b):  # the streaming schedule itself, one utterance at a time: forward == step
                n = int(lengths[i])
                y[i, :n] = self._feed(x[i:i + 1, :n], self.init_state(1), final=True)[0]
            return [y], lengths
        stitched: list[torch.Tensor] = []
        k = 0
        while True:  # the windows of the streaming schedule, each emitting its own stretch of frames
            emit_start, emit_end = window_emit_range(cfg, k)
            if emit_start >= t:
                break
            start = window_start_frame(cfg, k)
            end = min(start + cfg.window_frames, t)
            win_valid = (lengths - start).clamp(0, end - start)
            valid = None if bool((win_valid == end - start).all()) else win_valid
            outs = self._encode_window(x[:, start:end], valid, False, upto)
            if not stitched:
                stitched = [x.new_zeros(b, t, d) for _ in outs]
            lo, hi = emit_start - start, min(emit_end, end) - start
            for dst, src in zip(stitched, outs):
                dst[:, emit_start:start + hi] = src[:, lo:hi]
            k += 1
        if not stitched:  # no frames at all
            stitched = [x.new_zeros(b, t, d) for _ in range(1 if upto is None else upto + 1)]
        return [self._zero_padding(y, lengths) for y in stitched], lengths

    @staticmethod
    def _zero_padding(y: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        keep = torch.arange(y.shape[1], device=y.device)[None, :] < lengths[:, None]
        return y * keep[..., None]

    # ---- streaming

    def init_state(self, batch_size: int = 1) -> WhisperStreamState:
        p = self.conv1.weight
        d = self.config.d_model
        return WhisperStreamState(
            mel_tail=p.new_zeros(batch_size, 1, self.config.n_mels),
            h1_tail=p.new_zeros(batch_size, 1, d),
            pending=p.new_zeros(batch_size, 0, d),
        )

    @torch.no_grad()
    def step(self, mel: torch.Tensor, state: WhisperStreamState) -> tuple[torch.Tensor, WhisperStreamState]:
        """Push (B, t, n_mels) mel frames (any t >= 0); return the newly final frames (B, t', D)."""
        self._check_mel(mel)
        if state.finished:
            raise EncoderInputError("step() after flush(): start a new stream with init_state()")
        if mel.shape[0] != state.mel_tail.shape[0]:
            raise EncoderInputError(f"stream has batch size {state.mel_tail.shape[0]}, got {mel.shape[0]}")
        state.n_mel += mel.shape[1]
        frames = self._stem_step(mel.to(state.mel_tail.dtype), state, end=False)
        pending = torch.cat([state.pending, frames], dim=1)
        whole = pending.shape[1] // self.config.frames_per_chunk * self.config.frames_per_chunk
        state.pending = pending[:, whole:].clone()  # not a view that keeps this whole push alive
        return self._feed(pending[:, :whole], state, final=False), state

    @torch.no_grad()
    def flush(self, state: WhisperStreamState) -> tuple[torch.Tensor, WhisperStreamState]:
        """End of stream: zero-pad the convolutions, release held-back chunks, return the remaining frames."""
        if state.finished:
            raise EncoderInputError("flush() called twice on one stream")
        b = state.mel_tail.shape[0]
        frames = self._stem_step(state.mel_tail.new_zeros(b, 0, self.config.n_mels), state, end=True)
        pending = torch.cat([state.pending, frames], dim=1)
        state.pending = pending[:, :0]
        out = self._feed(pending, state, final=True)
        state.finished = True
        return out, state

    def _stem_step(self, mel: torch.Tensor, state: WhisperStreamState, end: bool) -> torch.Tensor:
        """Incremental conv stem (padding done here, not by the layers): a zero frame at the start of each
        convolution's input, and at the end one more for its right padding."""
        buf = torch.cat([state.mel_tail, mel], dim=1)  # (B, n, n_mels)
        if end and state.n_mel > 0:
            buf = F.pad(buf, (0, 0, 0, 1))
        h1 = buf.new_zeros(buf.shape[0], 0, self.config.d_model)
        if buf.shape[1] >= 3:
            h1 = F.conv1d(buf.transpose(1, 2), self.conv1.weight, self.conv1.bias)
            h1 = F.gelu(h1).transpose(1, 2)  # (B, n - 2, D)
        state.mel_tail = buf[:, -2:].clone() if buf.shape[1] >= 3 else buf
        buf2 = torch.cat([state.h1_tail, h1], dim=1)  # (B, m, D)
        if end and state.n_mel > 0:
            buf2 = F.pad(buf2, (0, 0, 0, 1))
        n_out = (buf2.shape[1] - 3) // 2 + 1 if buf2.shape[1] >= 3 else 0
        if n_out == 0:
            state.h1_tail = buf2
            return buf2.new_zeros(buf2.shape[0], 0, self.config.d_model)
        y = F.conv1d(buf2[:, : 2 * n_out + 1].transpose(1, 2), self.conv2.weight, self.conv2.bias, stride=2)
        y = F.gelu(y).transpose(1, 2)  # (B, n_out, D)
        state.h1_tail = buf2[:, 2 * n_out:].clone()
        return y

    def _open_window(self, state: WhisperStreamState) -> None:
        cfg = self.config
        k = state.next_window
        p = state.h1_tail
        b, dh = p.shape[0], cfg.d_model // cfg.n_heads
        layers = [LayerCache(k=p.new_empty(b, cfg.n_heads, cfg.window_frames, dh),
                             v=p.new_empty(b, cfg.n_heads, cfg.window_frames, dh),
                             held=p.new_zeros(b, 0, cfg.d_model)) for _ in range(cfg.n_layers)]
        emit_start, emit_end = window_emit_range(cfg, k)
        state.windows.append(WindowState(k, window_start_frame(cfg, k), emit_start, emit_end, layers))
        state.next_window += 1

    def _feed(self, x: torch.Tensor, state: WhisperStreamState, final: bool) -> torch.Tensor:
        """Feed conv frames (B, n, D) (whole chunks unless final) to the open windows; return emitted frames."""
        cfg = self.config
        first, last = state.n_fed, state.n_fed + x.shape[1]
        pieces: list[tuple[int, torch.Tensor]] = []  # (global start, frames)
        push = self._window_push_rc if cfg.right_context_ms else self._window_push
        a = first
        while a < last:
            if window_start_frame(cfg, state.next_window) == a:
                self._open_window(state)
            cut = min([last, window_start_frame(cfg, state.next_window)]
                      + [w.start_frame + cfg.window_frames for w in state.windows])
            for w in state.windows:
                pieces.append(push(w, x[:, a - first:cut - first], final=False))
            state.windows = [w for w in state.windows if w.n_fed < cfg.window_frames]
            a = cut
        state.n_fed = last
        if final:
            for w in state.windows:
                pieces.append(push(w, x[:, :0], final=True))
            state.windows = []
        out = [state.pending.new_zeros(state.pending.shape[0], 0, cfg.d_model)]
        for start, y in pieces:
            if y.shape[1] == 0:
                continue
            if start != state.n_emitted:  # a window emitted out of turn: the schedule above is broken
                raise RuntimeError(f"internal error: frame {start} emitted, expected {state.n_emitted}")
            out.append(y)
            state.n_emitted += y.shape[1]
        return torch.cat(out, dim=1)

    def _window_push(self, w: WindowState, x: torch.Tensor, final: bool) -> tuple[int, torch.Tensor]:
        """Run new frames (B, n, D) of one window through its layers; return (global start, emitted frames)."""
        cfg = self.config
        fpc = cfg.frames_per_chunk
        x = x + self.positional_embedding[w.n_fed:w.n_fed + x.shape[1]].to(x.dtype)
        w.n_fed += x.shape[1]
        complete = final or w.n_fed == cfg.window_frames  # no more keys will come: release what is held
        for layer, block in enumerate(self.blocks):
            c = w.layers[layer]
            t = x.shape[1]
            h = None
            if t:
                h = block.attn_ln(x)
                k, v = block.attn.keys_values(h)
                c.k[:, :, c.n_keys:c.n_keys + t] = k
                c.v[:, :, c.n_keys:c.n_keys + t] = v
                c.n_keys += t
            la = self._layer_lookahead(layer)
            if la:
                xq = torch.cat([c.held, x], dim=1) if c.held.shape[1] else x
                # Chunk c may run once chunk c + 1 is complete in the keys (or no more keys will come).
                ready = c.n_keys if complete else max(c.n_keys // fpc - 1, 0) * fpc
                n_q = ready - c.n_queries
                c.held, xq = xq[:, n_q:], xq[:, :n_q]
                h = block.attn_ln(xq) if n_q else None
            else:
                xq = x
            q0, n_q = c.n_queries, xq.shape[1]
            c.n_queries += n_q
            if layer == cfg.n_layers - 1:
                # The top layer's outputs are only needed where this window emits (not in the overlap
                # that only serves as context, nor in the look-ahead tail the next window emits).
                g0 = w.start_frame + q0
                lo, hi = max(w.emit_start, g0), min(w.emit_end, g0 + n_q)
                if hi <= lo:
                    return lo, xq[:, :0]
                xq, h, q0 = xq[:, lo - g0:hi - g0], h[:, lo - g0:hi - g0], q0 + lo - g0
            if xq.shape[1] == 0:
                x = xq
                continue
            mask = chunk_mask(q0, xq.shape[1], c.n_keys, fpc, la, x.device)
            x = block.finish(xq, h, c.k[:, :, :c.n_keys], c.v[:, :, :c.n_keys], mask)
        return w.start_frame + q0, self.ln_post(x)


    def _window_push_rc(self, w: WindowState, x: torch.Tensor, final: bool) -> tuple[int, torch.Tensor]:
        """Right-context mode: new frames (B, n, D) into one window; each step finishes one hop of frames,
        running every layer over the hop plus ``right_context_ms`` of the frames after it, which see the hop's
        keys and those of every earlier hop. The hop's keys and values are kept; the right context's are
        recomputed at the next step, from inputs that have then seen further ahead themselves."""
        cfg = self.config
        step, rc = cfg.step_ms // FRAME_MS, cfg.right_context_ms // FRAME_MS
        x = x + self.positional_embedding[w.n_fed:w.n_fed + x.shape[1]].to(x.dtype)
        w.n_fed += x.shape[1]
        complete = final or w.n_fed == cfg.window_frames  # no more frames come: finish with what is there
        todo = x if w.todo is None else torch.cat([w.todo, x], dim=1)
        g0 = w.start_frame + w.layers[0].n_keys  # the first frame this call finishes
        outs = []
        while todo.shape[1] >= step + rc or (complete and todo.shape[1]):
            n = min(step, todo.shape[1])
            h_in = todo[:, :n + rc]
            for layer, (c, block) in enumerate(zip(w.layers, self.blocks)):
                h = block.attn_ln(h_in)
                k, v = block.attn.keys_values(h)
                end = c.n_keys + k.shape[2]
                c.k[:, :, c.n_keys:end] = k
                c.v[:, :, c.n_keys:end] = v
                if layer == cfg.n_layers - 1:  # the top layer's right-context outputs are never used
                    h_in, h = h_in[:, :n], h[:, :n]
                h_in = block.finish(h_in, h, c.k[:, :, :end], c.v[:, :, :end], None)
                c.n_keys += n  # the right context's keys are overwritten at the next step
            outs.append(h_in)
            todo = todo[:, n:]
        w.todo = todo
        if not outs:
            return g0, x[:, :0]
        y = torch.cat(outs, dim=1)
        lo, hi = max(w.emit_start, g0), min(w.emit_end, g0 + y.shape[1])
        if hi <= lo:
            return lo, y[:, :0]
        return lo, self.ln_post(y[:, lo - g0:hi - g0])


# ----------------------------------------------------------------------------------------- files


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
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"whisper encoder file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"not a safetensors file: {path}") from exc
    if meta.get("format") != FILE_FORMAT:
        raise ModelError(f"not a reallm whisper encoder file (format {meta.get('format')!r}): {path}")
    try:
        return WhisperEncoderConfig(**json.loads(meta["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"corrupt config in whisper encoder file {path}: {exc}") from exc


def load_whisper_encoder(path: str | Path, chunk_ms: int = 240, lookahead_ms: int = 0,
                         window_ms: int | None = None, overlap_ms: int | None = None,
                         dtype: torch.dtype = torch.float32, right_context_ms: int = 0,
                         hop_ms: int = 0) -> WhisperStreamingEncoder:
    """Rebuild the encoder from its file with the given streaming schedule; frozen, eval mode, ``dtype``."""
    from safetensors.torch import load_file

    cfg = read_whisper_encoder_config(path)
    changes = {"chunk_ms": chunk_ms, "lookahead_ms": lookahead_ms, "right_context_ms": right_context_ms,
               "hop_ms": hop_ms}
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

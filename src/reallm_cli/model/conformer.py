"""A streaming Conformer encoder built from scratch (the paper's encoder path).

Every part is causal or chunk-causal, so streaming is exact rather than approximate:
- subsampling: two 3x3 Conv2d with stride 2 over (time, freq), padded on the LEFT in time only, so
  output frame k covers mel frames 4k-3 .. 4k+3 and never looks past the end of its own 40 ms;
- self-attention: a frame sees its own chunk and ``left_chunks`` previous chunks (RoPE positions);
- convolution module: depthwise conv padded on the left only, LayerNorm instead of BatchNorm (BatchNorm's
  batch statistics would make a frame depend on other frames and other utterances).
``forward`` runs a whole utterance with masks; ``init_state``/``step``/``flush`` carry a
``ConformerState`` with bounded caches, and the concatenated streaming output equals ``forward``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from reallm_cli.errors import ReallmError
from reallm_cli.model.config import config_from_dict
from reallm_cli.model.decoder import apply_rope, rope_cos_sin
from reallm_cli.timebase import DEFAULT_CHUNK_MS, MEL_FRAME_MS, N_MELS, exact_div


class EncoderInputError(ReallmError, ValueError):
    """Mel input of the wrong shape, or a stream used after ``flush``."""


@dataclass(frozen=True)
class ConformerConfig:
    kind: ClassVar[str] = "conformer"  # the tag of this config in a model file

    n_mels: int = N_MELS
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 8
    ff_mult: int = 4
    conv_kernel: int = 15  # depthwise conv kernel, in output frames (causal: kernel-1 frames of history)
    subsampling: int = 4  # only 4 is implemented: 10 ms mel frames -> 40 ms output frames
    subsampling_channels: int = 256
    chunk_ms: int = DEFAULT_CHUNK_MS
    left_chunks: int = 4  # attention context: own chunk + this many previous chunks, per layer
    dropout: float = 0.1
    rope_theta: float = 10_000.0

    def __post_init__(self) -> None:
        if self.subsampling != 4:
            raise ValueError(f"only 4x subsampling is implemented, got {self.subsampling}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ValueError(f"d_model {self.d_model} must split into n_heads {self.n_heads} even-sized heads")
        if self.conv_kernel < 1 or self.left_chunks < 0:
            raise ValueError("conv_kernel must be >= 1 and left_chunks >= 0")
        exact_div(self.chunk_ms, self.frame_ms)

    @property
    def frame_ms(self) -> int:
        return MEL_FRAME_MS * self.subsampling  # 40

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ConformerConfig":
        """The config as a model file stores it: every field, no other key."""
        return config_from_dict(cls, d, "conformer encoder config")


CONFORMER_PRESETS: dict[str, ConformerConfig] = {
    # ~70M parameters; with the "paper-80m" decoder (2 x d512, vocab 4096) about 80M in all.
    "paper-80m": ConformerConfig(d_model=384, n_heads=6, n_layers=20, ff_mult=4, conv_kernel=15,
                                 subsampling_channels=256, left_chunks=4),
    # ~6M parameters; trainable and real-time on a laptop CPU.
    "small": ConformerConfig(d_model=192, n_heads=4, n_layers=8, ff_mult=4, conv_kernel=15,
                             subsampling_channels=128, left_chunks=4),
}


# --------------------------------------------------------------------------------------------- state


@dataclass
class ConformerLayerCache:
    k: torch.Tensor  # (B, H, n_ctx, head_dim), n_ctx <= left_chunks * frames_per_chunk; RoPE applied
    v: torch.Tensor  # (B, H, n_ctx, head_dim)
    conv: torch.Tensor  # (B, d_model, conv_kernel - 1): depthwise conv input history (zeros = left pad)


@dataclass
class ConformerState:
    mel: torch.Tensor  # (B, t_pending, n_mels): mel frames not yet part of a complete chunk
    sub1: torch.Tensor  # (B, 1, 1, n_mels): last mel frame seen by conv1 (zeros = left pad)
    sub2: torch.Tensor  # (B, C, 1, n_mels // 2): last conv1 output frame seen by conv2 (zeros = left pad)
    layers: list[ConformerLayerCache]
    chunk_frames: int  # output frames per chunk for this stream
    frames_done: int = 0  # output frames emitted so far = absolute position of the next frame
    finished: bool = False

    def nbytes(self) -> int:
        ts = [self.mel, self.sub1, self.sub2] + [t for c in self.layers for t in (c.k, c.v, c.conv)]
        return sum(t.numel() * t.element_size() for t in ts)


# --------------------------------------------------------------------------------------------- modules


class CausalSubsampling(nn.Module):
    """(B, T, n_mels) -> (B, T // 4, d_model); in time, left padding only."""

    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        c = cfg.subsampling_channels
        self.conv1 = nn.Conv2d(1, c, kernel_size=3, stride=2)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=2)
        self.freq1 = (cfg.n_mels - 1) // 2 + 1  # 3-wide stride-2 conv with 1+1 freq padding: 80 -> 40
        self.freq2 = (self.freq1 - 1) // 2 + 1  # 40 -> 20
        self.proj = nn.Linear(c * self.freq2, cfg.d_model)

    def _conv(self, conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return F.silu(conv(F.pad(x, (1, 1, 0, 0))))  # freq padding only; time history comes from caller

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        B, C, T, Fq = x.shape  # (B, C, T', F')
        return self.proj(x.permute(0, 2, 1, 3).reshape(B, T, C * Fq))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = mel[:, None]  # (B, 1, T, F)
        x = self._conv(self.conv1, F.pad(x, (0, 0, 1, 0)))  # (B, C, T//2, F/2)
        x = self._conv(self.conv2, F.pad(x, (0, 0, 1, 0)))  # (B, C, T//4, F/4)
        return self._out(x)

    def step(self, mel: torch.Tensor, state: ConformerState) -> torch.Tensor:
        """mel (B, 4n, F) continuing the stream -> (B, n, d_model); updates sub1/sub2 caches."""
        x = torch.cat((state.sub1, mel[:, None]), dim=2)  # (B, 1, 1 + 4n, F)
        state.sub1 = x[:, :, -1:]
        x = self._conv(self.conv1, x)  # (B, C, 2n, F/2)
        x = torch.cat((state.sub2, x), dim=2)  # (B, C, 1 + 2n, F/2)
        state.sub2 = x[:, :, -1:]
        x = self._conv(self.conv2, x)  # (B, C, n, F/4)
        return self._out(x)


class FeedForward(nn.Module):
    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.d_model)
        self.up = nn.Linear(cfg.d_model, cfg.ff_mult * cfg.d_model)
        self.down = nn.Linear(cfg.ff_mult * cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.down(self.drop(F.silu(self.up(self.norm(x))))))


class SelfAttention(nn.Module):
    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.norm = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def qkv_heads(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """(B, T, D) -> q, k, v (B, H, T, hd) with RoPE on q and k."""
        B, T, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        B, H, T, hd = out.shape
        return self.drop(self.out(out.transpose(1, 2).reshape(B, T, H * hd)))


class ConvModule(nn.Module):
    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        d = cfg.d_model
        self.kernel = cfg.conv_kernel
        self.norm = nn.LayerNorm(d)
        self.pw1 = nn.Linear(d, 2 * d)
        self.dw = nn.Conv1d(d, d, cfg.conv_kernel, groups=d)
        self.dw_norm = nn.LayerNorm(d)
        self.pw2 = nn.Linear(d, d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, history: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D); history (B, D, K-1) or None for zeros -> (B, T, D), new history (B, D, K-1)."""
        y = F.glu(self.pw1(self.norm(x)), dim=-1).transpose(1, 2)  # (B, D, T)
        if history is None:
            y = F.pad(y, (self.kernel - 1, 0))
        else:
            y = torch.cat((history, y), dim=2)  # (B, D, K-1+T)
        new_history = y[:, :, y.shape[2] - (self.kernel - 1):]
        y = self.dw(y).transpose(1, 2)  # (B, T, D)
        return self.drop(self.pw2(F.silu(self.dw_norm(y)))), new_history


class ConformerBlock(nn.Module):
    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        self.ff1 = FeedForward(cfg)
        self.attn = SelfAttention(cfg)
        self.conv = ConvModule(cfg)
        self.ff2 = FeedForward(cfg)
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, cos, sin, attend, conv_history):
        """x (B, T, D); ``attend(q, k, v)`` does the (cached or masked) attention -> x, new conv history."""
        x = x + 0.5 * self.ff1(x)
        q, k, v = self.attn.qkv_heads(x, cos, sin)
        x = x + self.attn.merge(attend(q, k, v))
        y, conv_history = self.conv(x, conv_history)
        x = x + y
        return self.norm(x + 0.5 * self.ff2(x)), conv_history


# --------------------------------------------------------------------------------------------- encoder


def _chunk_attention(q, k, v, lengths: torch.Tensor, chunk_frames: int, left_chunks: int) -> torch.Tensor:
    """Chunk-causal attention without a (T, T) mask: each chunk attends to a window of keys.

    q, k, v (B, H, T, hd), lengths (B,) -> (B, H, T, hd). Memory is O(T * (left_chunks + 1) * chunk).
    """
    B, H, T, hd = q.shape
    f, ctx = chunk_frames, left_chunks * chunk_frames
    n_chunks = -(-T // f)
    pad_right = n_chunks * f - T
    W = ctx + f  # keys per chunk: left context + own chunk
    kw = F.pad(k, (0, 0, ctx, pad_right)).unfold(2, W, f).transpose(-1, -2)  # (B, H, n, W, hd)
    vw = F.pad(v, (0, 0, ctx, pad_right)).unfold(2, W, f).transpose(-1, -2)
    qc = F.pad(q, (0, 0, 0, pad_right)).view(B, H, n_chunks, f, hd)  # (B, H, n, f, hd)
    key_idx = torch.arange(n_chunks, device=q.device)[:, None] * f - ctx + torch.arange(W, device=q.device)
    valid = (key_idx >= 0)[None] & (key_idx[None] < lengths[:, None, None])  # (B, n, W)
    # A padded query whose whole window is padding would give NaN; let every query see itself.
    self_key = torch.arange(W, device=q.device)[None, :] == (ctx + torch.arange(f, device=q.device))[:, None]
    mask = valid[:, None, :, None, :] | self_key  # (B, 1, n, f, W)
    out = F.scaled_dot_product_attention(qc, kw, vw, attn_mask=mask)  # (B, H, n, f, hd)
    return out.reshape(B, H, n_chunks * f, hd)[:, :, :T]


class ConformerEncoder(nn.Module):
    """StreamingEncoder: (B, T_mel, 80) log-mel -> (B, T_mel // 4, d_model), one frame per 40 ms."""

    wait_ms = 0
    hop_chunks = 1
    stem_lookahead_ms = 0  # the causal subsampling reads no mel frame past a chunk's own

    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        self.cfg = cfg
        self.out_dim = cfg.d_model
        self.frame_ms = cfg.frame_ms
        self.chunk_ms = cfg.chunk_ms
        self.subsample = CausalSubsampling(cfg)
        self.blocks = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.n_layers))
        self.head_dim = cfg.d_model // cfg.n_heads

    def chunk_frames(self, chunk_ms: int | None = None) -> int:
        """Output frames per chunk; a different ``chunk_ms`` than the config's may be chosen per call."""
        return exact_div(chunk_ms or self.cfg.chunk_ms, self.frame_ms)

    def _check_mel(self, mel: torch.Tensor) -> None:
        if mel.dim() != 3 or mel.shape[-1] != self.cfg.n_mels:
            raise EncoderInputError(f"expected log-mel of shape (B, T, {self.cfg.n_mels}), got {tuple(mel.shape)}")

    def _rope(self, start: int, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_cos_sin(torch.arange(start, start + n, device=device), self.head_dim, self.cfg.rope_theta)

    def forward(
        self, mel: torch.Tensor, mel_lengths: torch.Tensor | None = None, chunk_ms: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T_mel, 80), (B,) -> frames (B, T_mel // 4, D) (zero past each length), lengths (B,)."""
        self._check_mel(mel)
        B, T_mel, _ = mel.shape
        if mel_lengths is None:
            mel_lengths = torch.full((B,), T_mel, dtype=torch.long, device=mel.device)
        lengths = torch.div(mel_lengths, 4, rounding_mode="floor")
        f = self.chunk_frames(chunk_ms)
        x = self.subsample(mel)  # (B, T, D)
        T = x.shape[1]
        cos, sin = self._rope(0, T, mel.device)

        def attend(q, k, v):
            return _chunk_attention(q, k, v, lengths, f, self.cfg.left_chunks)

        # Right padding cannot leak into real frames: convs are causal and attention masks padded keys.
        for blk in self.blocks:
            x, _ = blk(x, cos, sin, attend, None)
        valid = torch.arange(T, device=mel.device)[None, :] < lengths[:, None]  # (B, T)
        return x * valid[..., None], lengths

    # ------------------------------------------------------------------------------------- streaming

    def init_state(self, batch_size: int = 1, chunk_ms: int | None = None) -> ConformerState:
        p = next(self.parameters())
        kw = dict(dtype=p.dtype, device=p.device)
        c, H = self.cfg, self.cfg.n_heads
        return ConformerState(
            mel=torch.zeros(batch_size, 0, c.n_mels, **kw),
            sub1=torch.zeros(batch_size, 1, 1, c.n_mels, **kw),
            sub2=torch.zeros(batch_size, c.subsampling_channels, 1, self.subsample.freq1, **kw),
            layers=[
                ConformerLayerCache(
                    k=torch.zeros(batch_size, H, 0, self.head_dim, **kw),
                    v=torch.zeros(batch_size, H, 0, self.head_dim, **kw),
                    conv=torch.zeros(batch_size, c.d_model, c.conv_kernel - 1, **kw),
                )
                for _ in range(c.n_layers)
            ],
            chunk_frames=self.chunk_frames(chunk_ms),
        )

    def _step_chunk(self, x: torch.Tensor, state: ConformerState) -> torch.Tensor:
        """One (possibly final partial) chunk of subsampled frames (B, f, D) through all blocks."""
        f = x.shape[1]
        cos, sin = self._rope(state.frames_done, f, x.device)
        ctx = self.cfg.left_chunks * state.chunk_frames
        for blk, cache in zip(self.blocks, state.layers):

            def attend(q, k, v, cache=cache):
                keys = torch.cat((cache.k, k), dim=2)  # (B, H, n_ctx + f, hd)
                values = torch.cat((cache.v, v), dim=2)
                keep = min(ctx, keys.shape[2])  # bounded: the last `left_chunks` chunks only
                cache.k, cache.v = keys[:, :, keys.shape[2] - keep :], values[:, :, values.shape[2] - keep :]
                # Only whole previous chunks are cached and the own chunk is whole: no mask needed.
                return F.scaled_dot_product_attention(q, keys, values)

            x, cache.conv = blk(x, cos, sin, attend, cache.conv)
        state.frames_done += f
        return x

    def _run_frames(self, mel: torch.Tensor, state: ConformerState) -> torch.Tensor:
        """mel (B, 4n, F) starting at a chunk boundary -> (B, n, D), chunk by chunk through the blocks."""
        x = self.subsample.step(mel, state)  # (B, n, D)
        f = state.chunk_frames
        return torch.cat([self._step_chunk(x[:, i : i + f], state) for i in range(0, x.shape[1], f)], dim=1)

    @torch.no_grad()
    def step(self, mel: torch.Tensor, state: ConformerState) -> tuple[torch.Tensor, ConformerState]:
        """Push (B, t, 80) mel frames (any t); return the frames of newly completed chunks (B, t', D)."""
        self._check_mel(mel)
        if state.finished:
            raise EncoderInputError("this stream was flushed; start a new one with init_state()")
        if mel.shape[0] != state.mel.shape[0]:
            raise EncoderInputError(f"batch size {mel.shape[0]} does not match the stream's {state.mel.shape[0]}")
        chunk_mel = state.chunk_frames * 4
        buf = torch.cat((state.mel, mel.to(state.mel.dtype)), dim=1)  # (B, pending + t, F)
        n_ready = buf.shape[1] // chunk_mel * chunk_mel
        state.mel = buf[:, n_ready:]
        if n_ready == 0:
            return buf.new_zeros(buf.shape[0], 0, self.out_dim), state
        return self._run_frames(buf[:, :n_ready], state), state

    @torch.no_grad()
    def flush(self, state: ConformerState) -> tuple[torch.Tensor, ConformerState]:
        """End of stream: the final partial chunk's frames (mel frames beyond a multiple of 4 are dropped)."""
        if state.finished:
            raise EncoderInputError("this stream was already flushed")
        state.finished = True
        n = state.mel.shape[1] // 4 * 4
        pending, state.mel = state.mel[:, :n], state.mel[:, :0]
        if n == 0:
            return pending.new_zeros(pending.shape[0], 0, self.out_dim), state
        return self._run_frames(pending, state), state

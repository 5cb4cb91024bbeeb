"""The Speech ReaLLM decoder: a small decoder-only transformer that reads input EMBEDDINGS.

The caller interleaves speech embeddings with word-piece embeddings (see ``model.interleave``), so the
decoder takes (B, L, D) vectors rather than token ids; ``embed`` turns ids into such vectors. Two layer
layouts: Llama's (RMSNorm, SwiGLU, no biases) and Whisper's decoder's (LayerNorm, GELU, biases), so that
Whisper's pretrained decoder layers can be loaded (``DecoderConfig.style``).

Attention is causal and limited to a sliding window of ``window`` positions, in training and streaming
alike, so a stream of any length runs with a fixed-size ring KV cache (``KVCache``) and bounded cost per
step. RoPE angles are computed in float64 from integer positions, so hours into a stream (positions in
the millions) the rotations are as exact as at position 0; attention only ever sees relative offsets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int = 4096
    d_model: int = 512
    n_layers: int = 2
    n_heads: int = 8
    n_kv_heads: int = 8  # < n_heads gives grouped-query attention (must divide n_heads)
    ffn_hidden: int = 1408  # SwiGLU hidden width (~8/3 * d_model, as in Llama)
    rope_theta: float = 10_000.0
    window: int = 512  # sliding attention window, in positions (speech slots + word pieces)
    norm_eps: float = 1e-5
    tie_embeddings: bool = True  # output head shares the token embedding matrix
    dropout: float = 0.0  # on the inputs and each residual branch, in training only
    # "llama": RMSNorm, SwiGLU, no biases. "whisper": LayerNorm, GELU MLP and biases, the layout of Whisper's
    # decoder, so that its pretrained self-attention and MLP layers can be loaded (model/whisper_import.py).
    style: str = "llama"

    def __post_init__(self) -> None:
        if self.style not in ("llama", "whisper"):
            raise ValueError(f"style must be 'llama' or 'whisper', got {self.style!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.n_kv_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("head dimension must be even for RoPE")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


DECODER_PRESETS: dict[str, DecoderConfig] = {
    # The paper's size class: 2 layers of d 512 on top of a ~70M Conformer (~80M in all).
    "paper-80m": DecoderConfig(vocab_size=4096, d_model=512, n_layers=2, n_heads=8, n_kv_heads=8, ffn_hidden=1408),
    # Trainable on a laptop CPU in well under an hour.
    "small": DecoderConfig(vocab_size=4096, d_model=256, n_layers=2, n_heads=4, n_kv_heads=4, ffn_hidden=704, window=384),
}


# ----------------------------------------------------------------------------------------------- RoPE


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer positions (T,) -> cos, sin (T, head_dim // 2) in float32, computed in float64.

    float32 angles would lose ~1e-2 rad at position 1e5 (one hour of 40 ms frames); float64 keeps the
    rotation exact to float32 rounding at any position a stream can reach.
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hd/2,)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (T, hd/2)
    angles = torch.remainder(angles, 2 * math.pi)
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., T, head_dim) by cos/sin (T, head_dim // 2); halves layout (x1, x2) = x.chunk(2)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# ----------------------------------------------------------------------------------------- building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_gate = nn.Linear(dim, hidden, bias=False)
        self.w_up = nn.Linear(dim, hidden, bias=False)
        self.w_down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class GeluMLP(nn.Module):
    """Whisper's feed-forward block: Linear, GELU, Linear, with biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        bias = cfg.style == "whisper"  # Whisper: biases on q, v and out; none on k (softmax ignores it)
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=bias)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=bias)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=bias)
        self.wqkv: nn.Module | None = None  # inference only: wq, wk and wv as one (quantize.fuse_projections)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """(B, T, D) -> q (B, H, T, hd), k and v (B, Hkv, T, hd); q and k rotated."""
        B, T, _ = x.shape
        if self.wqkv is not None:
            h, hkv = self.n_heads, self.n_kv_heads
            qkv = self.wqkv(x).view(B, T, h + 2 * hkv, self.head_dim).transpose(1, 2)  # (B, H + 2 Hkv, T, hd)
            qk = apply_rope(qkv[:, : h + hkv], cos, sin)  # q and k rotated in one go
            return qk[:, :h], qk[:, h:], qkv[:, h + hkv:]
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q (B, H, T, hd), k/v (B, Hkv, S, hd), mask (T, S) bool True=visible -> (B, T, D)."""
        rep = self.n_heads // self.n_kv_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, hd)
        B, _, T, _ = out.shape
        return self.wo(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


def make_norm(cfg: DecoderConfig) -> nn.Module:
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps) if cfg.style == "whisper" else RMSNorm(cfg.d_model, cfg.norm_eps)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.ffn_norm = make_norm(cfg)
        self.ffn = GeluMLP(cfg.d_model, cfg.ffn_hidden) if cfg.style == "whisper" else SwiGLU(cfg.d_model, cfg.ffn_hidden)


# ----------------------------------------------------------------------------------------------- cache


@dataclass
class KVCache:
    """Ring buffer of the last ``window`` positions' keys and values, for every layer.

    Position p lives in slot p % window; memory is allocated once and never grows.
    """

    k: torch.Tensor  # (n_layers, B, n_kv_heads, window, head_dim), RoPE already applied
    v: torch.Tensor  # (n_layers, B, n_kv_heads, window, head_dim)
    slot_pos: torch.Tensor  # (window,) long: absolute position held by each slot, -1 when empty
    pos: int  # absolute position of the next input (grows without bound)
    start: int = 0  # absolute position of the first input

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.slot_pos))


# ----------------------------------------------------------------------------------------------- model


class LlamaDecoder(nn.Module):
    """Embeddings in, next-token logits out; ``forward`` for training, ``step`` + ``KVCache`` for streams."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., L) long -> (..., L, D)."""
        return self.tok_embeddings(tokens)

    def _run(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None,
             span: slice | None = None):
        """The layers over x (B, t, D). With a cache, the new positions attend to all its slots too, or,
        given ``span``, to the slots it names, which end with the new positions' own (written first, so
        that attention reads the cache in place instead of a copy)."""
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        p, train = self.cfg.dropout, self.training  # F.dropout is the identity when not training
        x = F.dropout(x, p, train)
        for i, layer in enumerate(self.layers):
            q, k, v = layer.attn.project(layer.attn_norm(x), cos, sin)
            if cache is not None and span is not None:
                new = slice(span.stop - k.shape[2], span.stop)
                cache.k[i, :, :, new], cache.v[i, :, :, new] = k, v
                keys, values = cache.k[i, :, :, span], cache.v[i, :, :, span]  # (B, Hkv, old + t, hd)
            elif cache is not None:
                keys = torch.cat((cache.k[i], k), dim=2)  # (B, Hkv, window + t, hd)
                values = torch.cat((cache.v[i], v), dim=2)
                self._write_ring(cache, i, positions, k, v)
            else:
                keys, values = k, v
            x = x + F.dropout(layer.attn.attend(q, keys, values, mask), p, train)
            x = x + F.dropout(layer.ffn(layer.ffn_norm(x)), p, train)
        return self.norm(x)

    def forward(self, x: torch.Tensor, outputs: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, D) embeddings -> logits (B, L, V), causal within the sliding window; with ``outputs``
        (B, L) bool, only the logits of those positions, (n, V) in row-major order (the output head is
        the largest single layer, and training needs no logits at padding or at untrained slots).

        Right padding needs no mask: attention is causal, so padded tail positions never influence
        real ones; the loss ignores them through its targets.
        """
        if x.dim() != 3 or x.shape[-1] != self.cfg.d_model:
            raise ValueError(f"decoder input must be (B, L, {self.cfg.d_model}), got {tuple(x.shape)}")
        L = x.shape[1]
        positions = torch.arange(L, device=x.device)
        offset = positions[:, None] - positions[None, :]  # (L, L) query - key
        mask = (offset >= 0) & (offset < self.cfg.window)
        hidden = self._run(x, positions, mask, None)
        return self.output(hidden if outputs is None else hidden[outputs])

    # ---------------------------------------------------------------------------------- streaming

    def init_cache(self, batch_size: int = 1, start_pos: int = 0) -> KVCache:
        """An empty ring cache; ``start_pos`` only shifts absolute positions (outputs do not change)."""
        c = self.cfg
        p = next(self.parameters())
        shape = (c.n_layers, batch_size, c.n_kv_heads, c.window, c.head_dim)
        return KVCache(
            k=torch.zeros(shape, dtype=p.dtype, device=p.device),
            v=torch.zeros(shape, dtype=p.dtype, device=p.device),
            slot_pos=torch.full((c.window,), -1, dtype=torch.long, device=p.device),
            pos=int(start_pos),
            start=int(start_pos),
        )

    def _write_ring(self, cache: KVCache, layer: int, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        # Only the newest `window` positions can ever be seen again; older ones of a long block are dropped.
        n = min(k.shape[2], self.cfg.window)
        slots = positions[-n:] % self.cfg.window
        cache.k[layer, :, :, slots] = k[:, :, -n:]
        cache.v[layer, :, :, slots] = v[:, :, -n:]

    def fits_in_order(self, cache: KVCache, t: int) -> bool:
        """Whether ``t`` more positions land in the ring's free slots, in order (none overwritten): then the
        last of them can be taken back with ``rewind``."""
        return cache.start % self.cfg.window + cache.pos - cache.start + t <= self.cfg.window

    def rewind(self, cache: KVCache, n: int) -> None:
        """Forget the last ``n`` positions fed, as if they never were; only for positions that overwrote
        nothing (``fits_in_order`` held when they were fed)."""
        if not 0 <= n <= cache.pos - cache.start or not self.fits_in_order(cache, 0):
            raise ValueError(f"cannot rewind {n} positions of a cache at {cache.pos - cache.start}")
        cache.pos -= n
        cache.slot_pos[(cache.pos + torch.arange(n)) % self.cfg.window] = -1

    @torch.no_grad()
    def step(self, x: torch.Tensor, cache: KVCache, last_only: bool = False,
             at: torch.Tensor | None = None) -> torch.Tensor:
        """Feed (B, t, D) new embeddings; return their logits (B, t, V), or with ``last_only`` the last
        position's (B, 1, V) (greedy decoding reads no other, and the head is the largest layer), or with
        ``at`` (n,) the logits of those of the t positions (B, n, V). Updates ``cache`` in place."""
        if x.dim() != 3 or x.shape[-1] != self.cfg.d_model:
            raise ValueError(f"decoder input must be (B, t, {self.cfg.d_model}), got {tuple(x.shape)}")
        if x.shape[0] != cache.batch_size:
            raise ValueError(f"batch size {x.shape[0]} does not match the cache's {cache.batch_size}")
        t = x.shape[1]
        if t == 0:
            return x.new_zeros(x.shape[0], 0, self.cfg.vocab_size)
        positions = torch.arange(cache.pos, cache.pos + t, device=x.device)  # (t,)
        w, first, n_old = self.cfg.window, cache.start % self.cfg.window, cache.pos - cache.start
        if first + n_old + t <= w:
            # Nothing overwritten yet, and old and new positions together fit the window in order: attend
            # to the filled slots only (a stream's decoder context restarts long before it fills 512), and
            # every old key is visible to every new position, so only the new ones need a causal mask.
            span = slice(first, first + n_old + t)  # the new positions land right after the old ones
            mask = None if t == 1 else torch.ones(t, n_old + t, dtype=torch.bool, device=x.device).tril(n_old)
        else:
            span = None
            key_pos = torch.cat((cache.slot_pos, positions))  # (window + t,)
            offset = positions[:, None] - key_pos[None, :]  # (t, window + t)
            mask = (key_pos[None, :] >= 0) & (offset >= 0) & (offset < w)
        # slot_pos is read for the mask above before the layers overwrite slots, then updated once.
        hidden = self._run(x, positions, mask, cache, span)
        logits = self.output(hidden[:, -1:] if last_only else hidden if at is None else hidden[:, at])
        n = min(t, self.cfg.window)
        cache.slot_pos[positions[-n:] % self.cfg.window] = positions[-n:]
        cache.pos += t
        return logits


def count_parameters(module: nn.Module) -> int:
    """Distinct trainable parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())

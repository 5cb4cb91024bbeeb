"""A decoder that reads speech through cross-attention: Whisper's decoder layout, streaming the ReaLLM way.

The text side is a Whisper-style decoder (learned positions, pre-norm self-attention, cross-attention to
the encoder's frames, GELU MLP, output tied to the token embedding), so Whisper's pretrained decoder loads
into it whole. It streams as Speech ReaLLM does: after each chunk it writes pieces until BLANK, greedily;
the pieces written after chunk e read the frames of chunks 0 .. e and no later ones. What differs from the
paper's decoder-only layout is where speech enters: through cross-attention, not as embeddings in the
self-attention sequence (``reallm.ReaLLM`` holds either kind).

BLANKs are not kept in the text context. At each chunk the question "a piece, or BLANK?" is asked by a
short-lived copy of the last text token, at that token's position, reading the new chunk; it is not cached
and nothing attends to it. A piece written joins the context and the question is asked again, until
BLANK. The text begins with ``prompt_tokens`` learned embeddings (Whisper's task prompt), which read the
chunks up to the first that may be answered (``prompt_chunks``).

Streaming state (``CrossCache``) is allocated once per context: the self-attention keys and values of at
most ``n_ctx`` text positions and the cross-attention keys and values of at most ``max_frames`` frames.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class CrossDecoderConfig:
    vocab_size: int  # output pieces (the tokenizer's); BLANK is the tokenizer's blank id
    d_model: int = 512
    n_layers: int = 6
    n_heads: int = 8
    ffn_hidden: int = 2048
    n_ctx: int = 448  # learned text positions (prompt and pieces)
    prompt_tokens: int = 4  # learned embeddings before the text
    prompt_chunks: int = 2  # chunks the prompt reads; chunks before the last of them are not asked
    blank_penalty: float = 0.0  # taken off BLANK's logit at every step of greedy decoding
    no_repeat: bool = True  # a piece is not written twice in a row after one chunk (240 ms hold no word twice)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.prompt_tokens < 1 or self.prompt_chunks < 1:
            raise ValueError("prompt_tokens and prompt_chunks must be >= 1")
        if self.n_ctx <= self.prompt_tokens:
            raise ValueError(f"n_ctx {self.n_ctx} leaves no room after {self.prompt_tokens} prompt tokens")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


class CrossLayer(nn.Module):
    """One pre-norm Whisper decoder layer: self-attention, cross-attention to the speech frames, MLP."""

    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.heads = heads
        self.sa_norm, self.sa_qkv, self.sa_out = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ca_norm, self.ca_q, self.ca_kv, self.ca_out = nn.LayerNorm(d), nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.ffn_norm, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, ffn), nn.Linear(ffn, d)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, H, T, hd)."""
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def self_qkv(self, x: torch.Tensor):
        return (self.split(p) for p in self.sa_qkv(self.sa_norm(x)).chunk(3, -1))

    def rest(self, x, attended, mem_k, mem_v, cross_mask):
        """After self-attention's output ``attended`` (B, H, T, hd): its projection, cross-attention, MLP."""
        x = x + self.sa_out(attended.transpose(1, 2).flatten(2))
        q = self.split(self.ca_q(self.ca_norm(x)))
        a = F.scaled_dot_product_attention(q, mem_k, mem_v, attn_mask=cross_mask)
        x = x + self.ca_out(a.transpose(1, 2).flatten(2))
        return x + self.fc2(F.gelu(self.fc1(self.ffn_norm(x))))

    def memory(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.ca_kv(frames).chunk(2, -1)
        return self.split(k), self.split(v)


@dataclass
class CrossCache:
    """One context's streaming state: text keys/values (L, 1, H, n_ctx, hd) of ``n`` positions and speech
    keys/values (L, 1, H, max_frames, hd) of ``frames`` frames; allocated once, never grown."""

    k: torch.Tensor
    v: torch.Tensor
    mem_k: torch.Tensor
    mem_v: torch.Tensor
    n: int = 0
    frames: int = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.mem_k, self.mem_v))


class CrossAttentionDecoder(nn.Module):
    def __init__(self, cfg: CrossDecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.prompt = nn.Parameter(torch.zeros(cfg.prompt_tokens, cfg.d_model))
        self.positions = nn.Parameter(torch.zeros(cfg.n_ctx, cfg.d_model))
        self.layers = nn.ModuleList(CrossLayer(cfg.d_model, cfg.n_heads, cfg.ffn_hidden) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.output.weight = self.tok_embeddings.weight

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids (...,) -> (..., D); ids from ``vocab_size`` on are the prompt's embeddings, in order."""
        v = self.cfg.vocab_size
        x = self.tok_embeddings(tokens.clamp(max=v - 1))
        return torch.where((tokens >= v)[..., None], self.prompt[(tokens - v).clamp(min=0)], x)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, visible: torch.Tensor, frames: torch.Tensor,
                self_mask: torch.Tensor) -> torch.Tensor:
        """Training: ids (B, T) (the prompt's from ``vocab_size`` on) at ``positions`` (B, T), each reading
        ``visible`` (B, T) of the frames (B, S, D), with ``self_mask`` (B, 1, T, T) True = may attend.
        Returns logits (B, T, V). A row may hold short-lived questions beside the text: positions that repeat
        another's, which the mask lets nothing attend to (``cross_context``)."""
        x = self.embed(tokens) + self.positions[positions]
        cross = (torch.arange(frames.shape[1])[None, None, :] < visible[:, :, None])[:, None]
        for layer in self.layers:
            q, k, v = layer.self_qkv(x)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=self_mask)
            x = layer.rest(x, a, *layer.memory(frames), cross)
        return self._logits(x)

    # -- streaming ---------------------------------------------------------------------------------

    def init_cache(self, max_frames: int) -> CrossCache:
        c, p = self.cfg, next(self.parameters())
        text = (c.n_layers, 1, c.n_heads, c.n_ctx, c.head_dim)
        speech = (c.n_layers, 1, c.n_heads, max_frames, c.head_dim)
        z = lambda shape: torch.zeros(shape, dtype=torch.float32, device=p.device)  # noqa: E731
        return CrossCache(z(text), z(text), z(speech), z(speech))

    def add_frames(self, cache: CrossCache, frames: torch.Tensor) -> None:
        """Encoder frames (t, D) join the speech memory."""
        t = frames.shape[0]
        if cache.frames + t > cache.mem_k.shape[3]:
            raise ValueError(f"speech memory full ({cache.mem_k.shape[3]} frames)")
        for i, layer in enumerate(self.layers):
            k, v = layer.memory(frames[None].float())
            cache.mem_k[i, :, :, cache.frames:cache.frames + t] = k
            cache.mem_v[i, :, :, cache.frames:cache.frames + t] = v
        cache.frames += t

    def drop_frames(self, cache: CrossCache, t: int) -> None:
        """Forget the last ``t`` frames of the speech memory."""
        cache.frames -= t

    def _prompt_ids(self) -> torch.Tensor:
        return torch.arange(self.cfg.vocab_size, self.cfg.vocab_size + self.cfg.prompt_tokens)

    def _cross_mask(self, cache: CrossCache, visible: torch.Tensor) -> torch.Tensor:
        """(t,) frames each new position may read -> (t, frames) True = may read."""
        return torch.arange(cache.frames)[None, :] < visible[:, None]

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(x))

    @torch.no_grad()
    def feed(self, cache: CrossCache, tokens: torch.Tensor | None, visible: torch.Tensor,
             logits: bool = True) -> torch.Tensor | None:
        """Append text positions to the context, causally: token ids (t,) or (None) the prompt, each reading
        ``visible`` (t,) speech frames. Returns the last position's logits (V,) (None without ``logits``)."""
        ids = self._prompt_ids() if tokens is None else tokens
        t, n = ids.shape[0], cache.n
        if n + t > self.cfg.n_ctx:
            raise ValueError(f"text context full ({self.cfg.n_ctx} positions)")
        x = (self.embed(ids) + self.positions[n:n + t])[None]
        cross = self._cross_mask(cache, visible)
        self_mask = None if t == 1 else torch.ones(t, n + t, dtype=torch.bool).tril(n)
        f = cache.frames
        for i, layer in enumerate(self.layers):
            q, k, v = layer.self_qkv(x)
            cache.k[i, :, :, n:n + t], cache.v[i, :, :, n:n + t] = k, v
            a = F.scaled_dot_product_attention(q, cache.k[i, :, :, :n + t], cache.v[i, :, :, :n + t], attn_mask=self_mask)
            x = layer.rest(x, a, cache.mem_k[i, :, :, :f], cache.mem_v[i, :, :, :f], cross)
        cache.n = n + t
        return self._logits(x[0, -1:])[0] if logits else None

    @torch.no_grad()
    def ask(self, cache: CrossCache, token: int | None, visible: torch.Tensor) -> torch.Tensor:
        """The chunk questions: k short-lived copies of the context's last position (token id ``token``, or
        None when it is the prompt's last), the i-th reading ``visible[i]`` frames; none is cached and none
        sees another. Returns their logits (k, V)."""
        k_q, last = visible.shape[0], cache.n - 1
        ids = self._prompt_ids()[-1:] if token is None else torch.tensor([token])
        x = (self.embed(ids) + self.positions[last]).expand(1, k_q, -1)
        cross = self._cross_mask(cache, visible)
        # each question sees the context before the last position, and itself
        self_mask = torch.cat((torch.ones(k_q, last, dtype=torch.bool), torch.eye(k_q, dtype=torch.bool)), 1)
        f = cache.frames
        for i, layer in enumerate(self.layers):
            q, k, v = layer.self_qkv(x)
            keys = torch.cat((cache.k[i, :, :, :last], k), 2)
            values = torch.cat((cache.v[i, :, :, :last], v), 2)
            a = F.scaled_dot_product_attention(q, keys, values, attn_mask=self_mask)
            x = layer.rest(x, a, cache.mem_k[i, :, :, :f], cache.mem_v[i, :, :, :f], cross)
        return self._logits(x[0])

"""The Whisper encoder's parts, as in openai/whisper: position table, attention, residual block.

The attention is split into ``keys_values`` and ``attend`` so that a streaming step can compute the keys
and values of new frames into a cache and then let queries attend over the whole cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from reallm_cli.model.whisper_config import WhisperEncoderConfig


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """Whisper's fixed position table (length, channels): sin | cos over geometric timescales 1 .. 10000."""
    half = channels // 2
    inc = math.log(10_000) / (half - 1)
    inv = torch.exp(-inc * torch.arange(half, dtype=torch.float64))
    t = torch.arange(length, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat([t.sin(), t.cos()], dim=1).float()


def padding_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """(B, 1, T, T) bool, True = may attend: the valid keys of each utterance in a padded batch. Padding
    queries see every key, so that no row is all -inf (their outputs are discarded)."""
    key_ok = torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]  # (B, T)
    return (key_ok[:, None, :] | ~key_ok[:, :, None])[:, None]


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

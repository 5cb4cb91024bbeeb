"""Whisper base's decoder on the ReaLLM streaming sequence (issue 33, stage 1: a recipe prototype, not yet in
the engine).

The text side is Whisper's decoder as trained (learned positions, self-attention, cross-attention, MLP, tied
output), BLANK is Whisper's ``<|nocaptions|>``. The speech side is the streaming encoder's frames, 12 per
240 ms chunk; a text position may read the frames of the chunks it is allowed to have heard (``visible``),
so the pieces of chunk c see chunks 0 .. c + emit delay, exactly as in the interleaved ReaLLM sequence.

BLANKs are not kept in the text context (as in a transducer's prediction network): at each chunk the
question "a piece, or BLANK?" is asked by a *transient* copy of the last text token, at that token's
position, seeing the new chunk; it is not cached. A piece written is appended to the context and asked
again, until BLANK. Long runs of BLANK in the context made the first prototype stop writing for good.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from reallm_cli.model.whisper_import import _dequantize, read_ct2_variables

PROMPT = (50258, 50259, 50359, 50363)  # <|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|>
BLANK = 50362  # <|nocaptions|>
EOT = 50257  # ids from here on are Whisper's special tokens, never text
FRAMES_PER_CHUNK = 12  # 240 ms of 20 ms encoder frames
TRAINED = ("layers.", "ln.")  # what training changes; embeddings and positions stay Whisper's


class Layer(nn.Module):
    """One pre-norm Whisper decoder layer: self-attention, cross-attention to the speech frames, MLP."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.sa_ln, self.sa_qkv, self.sa_o = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ca_ln, self.ca_q, self.ca_kv, self.ca_o = nn.LayerNorm(d), nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.ff_ln, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def split(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B, H, T, dh)
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x, speech_kv, self_mask, cross_mask, cache: dict | None = None, transient: bool = False):
        q, k, v = (self.split(p) for p in self.sa_qkv(self.sa_ln(x)).chunk(3, -1))
        if cache is not None and transient:  # stands in for the last cached token and is not kept
            k, v = torch.cat([cache["k"][:, :, :-1], k], 2), torch.cat([cache["v"][:, :, :-1], v], 2)
        elif cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
            cache["k"], cache["v"] = k, v
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=self_mask)
        x = x + self.sa_o(a.transpose(1, 2).flatten(2))
        a = F.scaled_dot_product_attention(self.split(self.ca_q(self.ca_ln(x))), *speech_kv, attn_mask=cross_mask)
        x = x + self.ca_o(a.transpose(1, 2).flatten(2))
        return x + self.fc2(F.gelu(self.fc1(self.ff_ln(x))))


class StreamingWhisperDecoder(nn.Module):
    def __init__(self, vocab: int = 51865, d: int = 512, heads: int = 8, n_layers: int = 6, n_ctx: int = 448):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(n_ctx, d))
        self.layers = nn.ModuleList(Layer(d, heads) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d)

    @property
    def n_ctx(self) -> int:
        return self.pos.shape[0]

    def speech_memory(self, frames: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Encoder frames (B, S, D) -> each layer's cross-attention keys and values."""
        out = []
        for layer in self.layers:
            k, v = layer.ca_kv(frames).chunk(2, -1)
            out.append((layer.split(k), layer.split(v)))
        return out

    def forward(self, tokens, memory, visible, *, positions=None, self_mask=None, start: int = 0,
                caches: list[dict] | None = None, transient: bool = False) -> torch.Tensor:
        """tokens (B, T) at ``positions`` (B, T) (default start .. start + T - 1); ``visible`` (B, T): how many
        speech frames each may read; ``self_mask`` (B, 1, T, T') True = may attend (default causal over
        the cache and the new tokens). Returns logits (B, T, V)."""
        t = tokens.shape[1]
        x = self.emb(tokens) + (self.pos[start:start + t] if positions is None else self.pos[positions])
        frames = memory[0][0].shape[2]
        cross = (torch.arange(frames)[None, None, :] < visible[:, :, None])[:, None]
        if self_mask is None:
            self_mask = torch.arange(start + t)[None, :] <= (torch.arange(t) + start)[:, None]
        for i, layer in enumerate(self.layers):
            x = layer(x, memory[i], self_mask, cross, None if caches is None else caches[i], transient)
        return self.ln(x) @ self.emb.weight.T


def load_whisper_base(ct2_model_bin: Path, trained: Path | None = None) -> StreamingWhisperDecoder:
    """Whisper base's decoder from CTranslate2's model.bin; ``trained``: a safetensors file of the trained
    parts (``TRAINED``) laid over it, or a training checkpoint (.pt)."""
    _spec, _rev, v = read_ct2_variables([Path(ct2_model_bin)], prefix="decoder/")
    g = lambda name: _dequantize(v, "decoder/" + name)  # noqa: E731
    sd = {"emb.weight": g("embeddings/weight"), "pos": g("position_encodings/encodings"),
          "ln.weight": g("layer_norm/gamma"), "ln.bias": g("layer_norm/beta")}
    norms = {"sa_ln": "self_attention/layer_norm", "ca_ln": "attention/layer_norm", "ff_ln": "ffn/layer_norm"}
    linears = {"sa_qkv": "self_attention/linear_0", "sa_o": "self_attention/linear_1", "ca_q": "attention/linear_0",
               "ca_kv": "attention/linear_1", "ca_o": "attention/linear_2", "fc1": "ffn/linear_0", "fc2": "ffn/linear_1"}
    n_layers = len({m.group(1) for n in v if (m := re.match(r"decoder/layer_(\d+)/", n))})
    for i in range(n_layers):
        for ours, theirs in norms.items():
            sd[f"layers.{i}.{ours}.weight"] = g(f"layer_{i}/{theirs}/gamma")
            sd[f"layers.{i}.{ours}.bias"] = g(f"layer_{i}/{theirs}/beta")
        for ours, theirs in linears.items():
            sd[f"layers.{i}.{ours}.weight"] = g(f"layer_{i}/{theirs}/weight")
            sd[f"layers.{i}.{ours}.bias"] = g(f"layer_{i}/{theirs}/bias")
    m = StreamingWhisperDecoder(n_layers=n_layers)
    m.load_state_dict(sd)
    if trained is not None:
        if Path(trained).suffix == ".safetensors":
            from safetensors.torch import load_file
            new = load_file(str(trained))
        else:
            new = torch.load(trained, map_location="cpu")
            new = new.get("model", new)
        m.load_state_dict({k: t.float() for k, t in new.items()}, strict=False)
    return m


@torch.inference_mode()
def stream_pieces(m: StreamingWhisperDecoder, frames: torch.Tensor, emit_delay: int = 1, blank_penalty: float = 0.0,
                  max_per_chunk: int = 8, extra_chunks: int = 1, no_repeat: bool = True) -> list[tuple[int, int]]:
    """Greedy streaming over one utterance's encoder frames (1, S, D), chunk by chunk as they would arrive:
    [(piece, chunk it was written after)]. ``blank_penalty`` is taken off BLANK's logit at every step;
    ``no_repeat``: a piece is not written twice in a row within one chunk (240 ms hold no word twice)."""
    n = frames.shape[1]
    chunks = -(-n // FRAMES_PER_CHUNK)
    memory = m.speech_memory(frames.float())
    caches = [dict() for _ in m.layers]
    prompt_visible = min(n, (1 + emit_delay) * FRAMES_PER_CHUNK)
    m(torch.tensor([PROMPT]), memory, torch.tensor([[prompt_visible] * len(PROMPT)]), caches=caches)
    pos, last, out = len(PROMPT), PROMPT[-1], []
    for c in range(chunks + extra_chunks):
        vis = torch.tensor([[min(n, (c + 1 + emit_delay) * FRAMES_PER_CHUNK)]])
        logits = m(torch.tensor([[last]]), memory, vis, start=pos - 1, caches=caches, transient=True)[0, -1]
        prev = None
        for _ in range(max_per_chunk):
            logits[BLANK] -= blank_penalty
            if no_repeat and prev is not None:
                logits[prev] = float("-inf")
            y = int(logits.argmax())
            if y == BLANK or pos >= m.n_ctx:
                break
            out.append((y, c))
            last = prev = y
            logits = m(torch.tensor([[y]]), memory, vis, start=pos, caches=caches)[0, -1]
            pos += 1
    return out

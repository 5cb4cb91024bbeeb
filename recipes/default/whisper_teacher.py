"""Recipe code (knowledge distillation, tried and not kept in the default model; docs/experiments.md).

Offline Whisper as a soft-label teacher for the ReaLLM decoder (knowledge distillation).

The default model's decoder starts from Whisper tiny.en's decoder and keeps its BPE vocabulary (a subset),
so the complete offline Whisper tiny.en (its encoder over the whole utterance, its decoder with
cross-attention) can say, for every word piece of a training transcript, how likely each piece of our
vocabulary was there given all the audio and the pieces before it. Training the ReaLLM decoder toward
those distributions as well as toward the transcript passes on what Whisper knows of English and of
real speech, not only which piece is right.

Our own reader of the CTranslate2 ``model.bin`` (``whisper_import``) gives the weights; the decoder here is
Whisper's as published: learned absolute positions, pre-norm self-attention (causal), cross-attention to
the encoder, GELU MLP, the output head tied to the token embedding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reallm_cli.audio.features import whisper_log_mel
from reallm_cli.errors import ModelError
from reallm_cli.train.reallm_loss import SoftLabels
from reallm_cli.model.whisper_import import _dequantize, _layer_weights, read_ct2_variables

WINDOW_SAMPLES = 30 * 16000  # Whisper always encodes a 30 s window
SOT, NO_TIMESTAMPS = 50257, 50362  # Whisper .en models: <|startoftranscript|>, <|notimestamps|>
GAP_S = 0.3  # silence between the utterances of one window


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.v, self.out = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.k = nn.Linear(d, d, bias=False)  # a key bias shifts a query's logits equally: dropped, as on import

    def forward(self, x: torch.Tensor, source: torch.Tensor, causal: bool) -> torch.Tensor:
        b, t, d = x.shape

        def split(z):
            return z.view(b, -1, self.heads, d // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(source)), split(self.v(source)),
                                           is_causal=causal)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.self_ln, self.cross_ln, self.mlp_ln = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.self_attn, self.cross_attn = _Attention(d, heads), _Attention(d, heads)
        self.fc1, self.fc2 = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        h = self.self_ln(x)
        x = x + self.self_attn(h, h, causal=True)
        x = x + self.cross_attn(self.cross_ln(x), audio, causal=False)
        return x + self.fc2(F.gelu(self.fc1(self.mlp_ln(x))))


class WhisperDecoder(nn.Module):
    """Whisper's text decoder with cross-attention: (tokens (B, L), encoder output (B, T, D)) -> logits."""

    def __init__(self, vocab: int, n_pos: int, d: int, heads: int, ffn: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(n_pos, d))
        self.blocks = nn.ModuleList(_Block(d, heads, ffn) for _ in range(layers))
        self.ln = nn.LayerNorm(d)

    @property
    def max_tokens(self) -> int:
        return self.pos.shape[0]

    def forward(self, tokens: torch.Tensor, audio: torch.Tensor, head_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, L, vocab), or over ``head_ids`` only (B, L, len(head_ids))."""
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, audio)
        head = self.embed.weight if head_ids is None else self.embed.weight[head_ids]
        return self.ln(x) @ head.T


def load_whisper_decoder(model_bin_paths: list[Path]) -> WhisperDecoder:
    """The complete decoder (with cross-attention) out of a CTranslate2 Whisper ``model.bin``."""
    spec, _revision, v = read_ct2_variables([Path(p) for p in model_bin_paths], prefix="decoder/")
    if spec != "WhisperSpec":
        raise ModelError(f"model.bin is a {spec!r}, not a Whisper model")
    e = "decoder/"
    emb = _dequantize(v, e + "embeddings/weight")
    vocab, d = emb.shape
    n_layers = len({m.group(1) for k in v if (m := re.match(r"decoder/layer_(\d+)/", k))})
    ffn = v[e + "layer_0/ffn/linear_0/weight"].shape[0]
    dec = WhisperDecoder(vocab, v[e + "position_encodings/encodings"].shape[0], d, int(v[e + "num_heads"]), ffn,
                         n_layers)
    sd = {"embed.weight": emb, "pos": _dequantize(v, e + "position_encodings/encodings"),
          "ln.weight": _dequantize(v, e + "layer_norm/gamma"), "ln.bias": _dequantize(v, e + "layer_norm/beta")}
    names = {"attn_ln": "self_ln", "q": "self_attn.q", "k": "self_attn.k", "v": "self_attn.v",
             "out": "self_attn.out", "mlp_ln": "mlp_ln", "fc1": "fc1", "fc2": "fc2"}
    for i in range(n_layers):
        src, dst = f"{e}layer_{i}/", f"blocks.{i}."
        sd.update(_layer_weights(v, src, dst, d, names))  # self-attention and MLP, as the encoder's import reads them
        kv_w, kv_b = _dequantize(v, src + "attention/linear_1/weight").split(d), _dequantize(v, src + "attention/linear_1/bias")
        sd.update({
            dst + "cross_ln.weight": _dequantize(v, src + "attention/layer_norm/gamma"),
            dst + "cross_ln.bias": _dequantize(v, src + "attention/layer_norm/beta"),
            dst + "cross_attn.q.weight": _dequantize(v, src + "attention/linear_0/weight"),
            dst + "cross_attn.q.bias": _dequantize(v, src + "attention/linear_0/bias"),
            dst + "cross_attn.k.weight": kv_w[0], dst + "cross_attn.v.weight": kv_w[1], dst + "cross_attn.v.bias": kv_b[d:],
            dst + "cross_attn.out.weight": _dequantize(v, src + "attention/linear_2/weight"),
            dst + "cross_attn.out.bias": _dequantize(v, src + "attention/linear_2/bias"),
        })
    dec.load_state_dict({k: t.float() for k, t in sd.items()})
    return dec.eval()


class WhisperTeacher:
    """Offline Whisper (encoder + decoder) scoring our transcripts piece by piece.

    ``keep_ids`` maps our vocabulary (index 0 is BLANK) to Whisper's ids; ``allowed`` (our indices) are the
    pieces a normalised transcript can contain: the teacher's mass on anything else (capitals, punctuation,
    special tokens) is dropped and the rest renormalised.
    """

    def __init__(self, encoder, decoder: WhisperDecoder, keep_ids: list[int], allowed: list[int], k: int = 8):
        self.encoder, self.decoder, self.k = encoder.eval(), decoder.eval(), k
        self.whisper_ids = torch.tensor(keep_ids)
        self.allowed = torch.tensor(sorted(allowed))
        self.allowed_whisper = self.whisper_ids[self.allowed]

    @torch.inference_mode()
    def soft_labels(self, utterances: list[tuple[np.ndarray, list[int]]]) -> list[SoftLabels]:
        """Soft labels for each (16 kHz audio, pieces as our indices) of a group that ``pack`` made.

        The group is heard as one zero-padded 30 s window (utterances one after another, ``GAP_S`` of
        silence between) and its transcripts teacher-forced one after another, as Whisper reads a
        30 s window and conditions on the text before: one encoder pass serves several utterances.
        """
        gap = np.zeros(int(GAP_S * 16000), np.float32)
        audio = np.concatenate([x for a, _ in utterances for x in (a.astype(np.float32), gap)])
        if len(audio) > WINDOW_SAMPLES + len(gap):
            raise ValueError(f"a group of {len(audio) / 16000:.1f} s does not fit Whisper's 30 s window")
        window = np.zeros(WINDOW_SAMPLES, np.float32)
        window[: min(len(audio), WINDOW_SAMPLES)] = audio[:WINDOW_SAMPLES]
        mel = whisper_log_mel(window)[None]
        frames, _ = self.encoder.forward(mel, torch.tensor([mel.shape[1]]), full_attention=True)
        pieces = [p for _, ps in utterances for p in ps]
        if len(pieces) + 2 > self.decoder.max_tokens:
            raise ValueError(f"a group of {len(pieces)} pieces does not fit Whisper's {self.decoder.max_tokens} positions")
        tokens = torch.cat([torch.tensor([SOT, NO_TIMESTAMPS]), self.whisper_ids[torch.tensor(pieces, dtype=torch.long)]])
        logits = self.decoder(tokens[None, :-1], frames, head_ids=self.allowed_whisper)[0, 1:].float()
        top_p, top_i = torch.softmax(logits, dim=-1).topk(self.k, dim=-1)  # each row: the next piece
        top_p = top_p / top_p.sum(-1, keepdim=True)
        out, start = [], 0
        for _, ps in utterances:
            rows = slice(start, start + len(ps))
            out.append(SoftLabels(self.allowed[top_i[rows]].numpy().astype(np.int32),
                                  top_p[rows].numpy().astype(np.float16)))
            start += len(ps)
        return out


def pack(durations: list[float], n_pieces: list[int], max_s: float = 29.0, max_pieces: int = 440) -> list[list[int]]:
    """Consecutive indices grouped so that each group's audio (with its gaps) and pieces fit one Whisper
    window; an utterance too long for a window on its own is left out."""
    groups: list[list[int]] = []
    cur: list[int] = []
    cur_s = cur_p = 0
    for i, (d, n) in enumerate(zip(durations, n_pieces)):
        if d + GAP_S > max_s or n > max_pieces:
            continue
        if cur and (cur_s + d + GAP_S > max_s or cur_p + n > max_pieces):
            groups.append(cur)
            cur, cur_s, cur_p = [], 0, 0
        cur.append(i)
        cur_s += d + GAP_S
        cur_p += n
    if cur:
        groups.append(cur)
    return groups

"""Cross-entropy on the interleaved sequence: speech embeddings stand where BLANK would be."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import torch
import torch.nn.functional as F

from reallm_cli.model.interleave import IGNORE, assemble_decoder_inputs, build_interleaved, collate_interleaved
from reallm_cli.model.reallm import ReaLLM


@dataclass
class SoftLabels:
    """A teacher's ``k`` most likely pieces at each transcript piece: our vocabulary's indices and their
    probabilities (renormalised over the pieces allowed), both (n_pieces, k)."""

    ids: np.ndarray  # int32
    probs: np.ndarray  # float16


def reallm_loss(
    model: ReaLLM,
    frames: torch.Tensor,
    frame_lengths: torch.Tensor,
    tokens: list[list[int]],
    token_chunks: list[list[int]],
    blank: int,
    soft: Sequence[SoftLabels | None] | None = None,
    soft_weight: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy over every position (pieces and BLANKs) of the interleaved sequences.

    With ``soft`` (per utterance, a teacher's distribution at each of its pieces, or None) and
    ``soft_weight`` w, a piece's target is the mixture (1 - w) * the piece + w * the teacher's
    distribution (knowledge distillation); BLANK targets stay as they are.
    """
    speech = model.speech_embeddings(frames)  # (B, N * slots, D)
    n_chunks = model.chunk_lengths(frame_lengths).tolist()
    slots = model.config.slots_per_chunk
    batch = collate_interleaved(
        [build_interleaved(n, t, c, blank, slots) for n, t, c in zip(n_chunks, tokens, token_chunks)], pad_target=IGNORE
    )
    dev = frames.device  # the interleaved layout is built on the CPU; move it to where the model runs
    tok_emb = model.decoder.embed(batch.input_tokens.to(dev))  # (B, L, D)
    x = assemble_decoder_inputs(speech, tok_emb, batch.is_speech.to(dev), batch.speech_index.to(dev))
    trained = (batch.targets != IGNORE).to(dev)
    targets = batch.targets.to(dev)[trained]  # (n,)
    logits = model.decoder(x, outputs=trained)  # (n, V): no logits at padding or at a chunk's inner slots
    if soft is None or soft_weight <= 0:
        loss = F.cross_entropy(logits, targets)
    else:
        per_position = F.cross_entropy(logits.float(), targets, reduction="none")
        rows, ids, probs = _soft_targets(soft, tokens, targets != blank, dev)
        if len(rows):
            logq = torch.log_softmax(logits[rows].float(), dim=-1).gather(1, ids)
            soft_ce = -(probs * logq).sum(-1)
            per_position = per_position.index_add(0, rows, soft_weight * (soft_ce - per_position[rows]))
        loss = per_position.mean()
    with torch.no_grad():
        piece = targets != blank
        acc = ((logits.argmax(-1) == targets) & piece).sum() / piece.sum().clamp(min=1)
    return loss, {"piece_acc": float(acc)}


def _soft_targets(soft: Sequence[SoftLabels | None], tokens: list[list[int]], is_piece: torch.Tensor,
                  dev: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of the trained positions that have a teacher distribution, with its ids and probabilities.

    Trained positions come row by row and, within a row, in sequence order, and a row's pieces are its
    transcript's tokens in order; so the k-th piece position of utterance b is its token k."""
    piece_rows = torch.nonzero(is_piece).squeeze(1)
    rows, ids, probs, start = [], [], [], 0
    for b, toks in enumerate(tokens):
        n = len(toks)
        s = soft[b]
        if s is not None:
            if len(s.ids) != n:
                raise ValueError(f"soft labels for {len(s.ids)} pieces, transcript has {n}")
            rows.append(piece_rows[start : start + n])
            ids.append(torch.from_numpy(s.ids).long())
            probs.append(torch.from_numpy(s.probs).float())
        start += n
    if start != len(piece_rows):
        raise ValueError(f"{len(piece_rows)} piece positions for {start} transcript pieces")
    if not rows:
        return torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1)
    return torch.cat(rows), torch.cat(ids).to(dev), torch.cat(probs).to(dev)

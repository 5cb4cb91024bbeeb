"""Cross-entropy on the interleaved sequence: speech embeddings stand where BLANK would be."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reallm_cli.model.interleave import assemble_decoder_inputs, build_interleaved, collate_interleaved
from reallm_cli.model.reallm import ReaLLM

IGNORE = -100


def reallm_loss(
    model: ReaLLM,
    frames: torch.Tensor,
    frame_lengths: torch.Tensor,
    tokens: list[list[int]],
    token_chunks: list[list[int]],
    blank: int,
) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy over every position (pieces and BLANKs) of the interleaved sequences."""
    speech = model.speech_embeddings(frames)  # (B, N, D)
    n_chunks = model.chunk_lengths(frame_lengths).tolist()
    batch = collate_interleaved(
        [build_interleaved(n, t, c, blank) for n, t, c in zip(n_chunks, tokens, token_chunks)], pad_target=IGNORE
    )
    dev = frames.device  # the interleaved layout is built on the CPU; move it to where the model runs
    tok_emb = model.decoder.embed(batch.input_tokens.to(dev))  # (B, L, D)
    x = assemble_decoder_inputs(speech, tok_emb, batch.is_speech.to(dev), batch.speech_index.to(dev))
    logits = model.decoder(x)  # (B, L, V)
    targets = batch.targets.to(dev)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)
    with torch.no_grad():
        piece = (targets != IGNORE) & (targets != blank)
        acc = ((logits.argmax(-1) == targets) & piece).sum() / piece.sum().clamp(min=1)
    return loss, {"piece_acc": float(acc)}

"""Cross-entropy on the interleaved sequence: speech embeddings stand where BLANK would be."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reallm_cli.model.interleave import IGNORE, assemble_decoder_inputs, build_interleaved, collate_interleaved
from reallm_cli.model.reallm import ReaLLM


def reallm_loss(
    model: ReaLLM,
    frames: torch.Tensor,
    frame_lengths: torch.Tensor,
    tokens: list[list[int]],
    token_chunks: list[list[int]],
    blank: int,
) -> tuple[torch.Tensor, dict]:
    """Mean cross-entropy over every position (pieces and BLANKs) of the interleaved sequences."""
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
    loss = F.cross_entropy(logits, targets)
    with torch.no_grad():
        piece = targets != blank
        acc = ((logits.argmax(-1) == targets) & piece).sum() / piece.sum().clamp(min=1)
    return loss, {"piece_acc": float(acc)}


"""Warm-starting the ReaLLM decoder as a language model on text alone, before it ever hears speech.

The paper fine-tunes a pre-trained Llama; our decoder is small and trained here, and a few hours of
transcribed speech teach it little about spelling and word order. Text is cheap, so the decoder first
learns to continue transcripts in the very layout it will read later: word pieces interleaved with
speech slots. With no audio behind them, the slots hold random vectors (so the decoder learns not to
trust them yet), and each text is spread over a made-up number of chunks at a plausible speaking rate.

Without audio, BLANK (when a chunk's pieces end) cannot be predicted, so only piece targets count in
the loss; which piece comes next can be, from the pieces before it. Fine-tuning on real interleaved
speech (``reallm_loss``) then teaches the decoder to listen to the slots and when to stop.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from reallm_cli.model.decoder import LlamaDecoder
from reallm_cli.model.interleave import IGNORE, assemble_decoder_inputs, build_interleaved, collate_interleaved
from reallm_cli.train.batching import DurationBatchSampler


def random_alignment(n_tokens: int, rng: random.Random, pieces_per_chunk: tuple[float, float] = (0.5, 1.5),
                     max_lead_chunks: int = 4) -> tuple[int, list[int]]:
    """A made-up (n_chunks, token_chunks) for a text of ``n_tokens`` pieces.

    The text is spoken at a rate drawn from ``pieces_per_chunk`` after a pause of 0..max_lead_chunks
    chunks, and each piece lands in a random chunk of that span (sorted, so the order is kept).
    """
    lead = rng.randint(0, max_lead_chunks)
    if n_tokens == 0:
        return lead + 1, []
    rate = rng.uniform(*pieces_per_chunk)
    span = max(1, round(n_tokens / rate))
    chunks = sorted(lead + rng.randrange(span) for _ in range(n_tokens))
    return lead + span + rng.randint(0, 2), chunks


def text_lm_loss(decoder: LlamaDecoder, token_lists: Sequence[Sequence[int]], blank: int, rng: random.Random,
                 slot_std: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Cross-entropy on the piece targets of randomly interleaved texts; speech slots hold N(0, slot_std²) noise."""
    items = []
    for tokens in token_lists:
        n_chunks, chunks = random_alignment(len(tokens), rng)
        items.append(build_interleaved(n_chunks, tokens, chunks, blank))
    batch = collate_interleaved(items, pad_target=IGNORE)
    targets = batch.targets.masked_fill(batch.targets == blank, IGNORE)
    n_slots = int(batch.n_slots.max())
    seed = rng.getrandbits(63)
    speech = torch.randn(len(items), n_slots, decoder.d_model, generator=torch.Generator().manual_seed(seed)) * slot_std
    x = assemble_decoder_inputs(speech, decoder.embed(batch.input_tokens), batch.is_speech, batch.speech_index)
    logits = decoder(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)
    with torch.no_grad():
        piece = targets != IGNORE
        acc = ((logits.argmax(-1) == targets) & piece).sum() / piece.sum().clamp(min=1)
    return loss, {"piece_acc": float(acc), "pieces": int(piece.sum())}


def text_batches(lengths: Sequence[int], max_pieces: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch of batches of text indices, similar lengths together, at most ``max_pieces`` padded pieces each.

    The duration sampler of the speech stages, with piece counts for durations: a pure function of
    (lengths, max_pieces, seed, epoch), so a resumed run sees the same batches.
    """
    sampler = DurationBatchSampler([max(1, n) for n in lengths], max_pieces, seed=seed)
    return sampler.batches(epoch)

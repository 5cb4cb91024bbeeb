import random

import pytest
import torch

from reallm_cli.model.decoder import DecoderConfig, LlamaDecoder
from reallm_cli.model.interleave import build_interleaved
from text_lm import random_alignment, text_batches, text_lm_loss

BLANK = 0


@pytest.mark.parametrize("n_tokens", [0, 1, 7, 40])
def test_random_alignment_is_valid_and_keeps_order(n_tokens):
    rng = random.Random(n_tokens)
    for _ in range(50):
        n_chunks, chunks = random_alignment(n_tokens, rng)
        assert len(chunks) == n_tokens
        assert chunks == sorted(chunks)
        assert all(0 <= c < n_chunks for c in chunks)
        build_interleaved(n_chunks, list(range(1, n_tokens + 1)), chunks, BLANK)  # raises if invalid


def test_random_alignment_follows_the_speaking_rate():
    rng = random.Random(0)
    rates = []
    for _ in range(200):
        n_chunks, _ = random_alignment(30, rng, pieces_per_chunk=(1.0, 1.0), max_lead_chunks=0)
        rates.append(30 / n_chunks)
    assert 0.9 < sum(rates) / len(rates) <= 1.0  # 30 chunks of speech + 0..2 chunks of trailing pause


def test_text_batches_cover_every_text_once_within_the_budget_and_repeat_exactly():
    lengths = [random.Random(i).randint(1, 60) for i in range(500)]
    batches = text_batches(lengths, max_pieces=256, seed=1, epoch=0)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(500))
    for b in batches:
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 256
    assert text_batches(lengths, 256, seed=1, epoch=0) == batches
    assert text_batches(lengths, 256, seed=1, epoch=1) != batches


def _decoder(vocab=16, layers=1):
    torch.manual_seed(0)
    return LlamaDecoder(DecoderConfig(vocab_size=vocab, d_model=64, n_layers=layers, n_heads=2, n_kv_heads=2,
                                      ffn_hidden=128, window=64))


def test_loss_counts_pieces_only_never_blank():
    dec = _decoder()
    loss, stats = text_lm_loss(dec, [[3, 4, 5], [6, 7]], BLANK, random.Random(0))
    assert stats["pieces"] == 5  # every piece is a target once; the BLANK targets after each chunk are not
    assert torch.isfinite(loss)


def test_decoder_learns_text_it_is_shown_and_ignores_the_noise_slots():
    """Two sentences, shown over and over with random interleaving: the next piece becomes predictable
    from the pieces before it, whatever the slots hold and wherever they fall."""
    dec = _decoder(layers=2)
    texts = [[3, 4, 5, 6, 7, 8], [9, 10, 11, 12, 13, 14]]
    opt = torch.optim.AdamW(dec.parameters(), lr=3e-3)
    rng = random.Random(0)
    first = None
    for _ in range(300):
        loss, stats = text_lm_loss(dec, texts, BLANK, rng)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    dec.eval()
    with torch.no_grad():
        acc = [text_lm_loss(dec, texts, BLANK, random.Random(seed))[1]["piece_acc"] for seed in range(10)]
    # the first piece of each text cannot be known, the other 10 of 12 can; chance is about 1 in 12
    assert sum(acc) / len(acc) >= 0.7
    assert loss.item() < first / 3

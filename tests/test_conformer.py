"""The streaming Conformer: streaming equals offline, causality, bounded caches, clear errors."""

from __future__ import annotations

import random

import pytest
import torch

from reallm_cli.model.conformer import (
    CONFORMER_PRESETS,
    ConformerConfig,
    ConformerEncoder,
    EncoderInputError,
)
from reallm_cli.model.decoder import DECODER_PRESETS, LlamaDecoder, count_parameters
from reallm_cli.model.encoder import StreamingEncoder

torch.set_num_threads(1)

TINY = ConformerConfig(d_model=32, n_heads=4, n_layers=3, ff_mult=2, conv_kernel=5, subsampling_channels=8,
                       left_chunks=2, dropout=0.0)


def tiny_encoder(seed: int = 0) -> ConformerEncoder:
    torch.manual_seed(seed)
    return ConformerEncoder(TINY).eval()


def stream(enc: ConformerEncoder, mel: torch.Tensor, chunk_ms: int, rng: random.Random, max_push: int = 70):
    state = enc.init_state(mel.shape[0], chunk_ms=chunk_ms)
    outs, i = [], 0
    while i < mel.shape[1]:
        t = rng.randint(1, max_push)
        out, state = enc.step(mel[:, i : i + t], state)
        # step only ever returns whole chunks
        assert out.shape[1] % enc.chunk_frames(chunk_ms) == 0
        outs.append(out)
        i += t
    out, state = enc.flush(state)
    outs.append(out)
    return torch.cat(outs, dim=1), state


def test_implements_streaming_encoder_contract():
    enc = tiny_encoder()
    assert isinstance(enc, StreamingEncoder)
    assert (enc.out_dim, enc.frame_ms, enc.chunk_ms, enc.wait_ms) == (32, 40, 240, 0)


@pytest.mark.parametrize("chunk_ms", [240, 480])
@pytest.mark.parametrize("seed", [0, 1])
def test_forward_equals_streaming(chunk_ms: int, seed: int):
    enc = tiny_encoder(seed)
    rng = random.Random(seed)
    t_mel = 24 * 9 + 13  # a partial last chunk and 1 leftover mel frame that no output frame covers
    mel = torch.randn(2, t_mel, 80)
    full, lengths = enc(mel, torch.tensor([t_mel, t_mel]), chunk_ms=chunk_ms)
    assert lengths.tolist() == [t_mel // 4] * 2
    streamed, _ = stream(enc, mel, chunk_ms, rng)
    assert streamed.shape == full.shape
    torch.testing.assert_close(streamed, full, atol=1e-5, rtol=0)


def test_chunk_size_changes_the_output():
    # Guards the test above: if chunk_ms were ignored, 240 and 480 would agree.
    enc = tiny_encoder()
    mel = torch.randn(1, 96, 80)
    a, _ = enc(mel, chunk_ms=240)
    b, _ = enc(mel, chunk_ms=480)
    assert (a - b).abs().max() > 1e-3


def test_chunk_causal_no_lookahead():
    enc = tiny_encoder()
    mel = torch.randn(1, 24 * 5, 80)
    base, _ = enc(mel)
    changed = mel.clone()
    changed[:, 24 * 3 :] += torch.randn_like(changed[:, 24 * 3 :])  # alter audio from chunk 3 on
    out, _ = enc(changed)
    torch.testing.assert_close(out[:, : 6 * 3], base[:, : 6 * 3], atol=1e-6, rtol=0)
    assert (out[:, 6 * 3 : 6 * 4] - base[:, 6 * 3 : 6 * 4]).abs().max() > 1e-3  # chunk 3 itself sees it


def test_within_chunk_attention_sees_the_whole_chunk():
    # Frame 0 of a chunk depends on later frames of the same chunk (chunk-causal, not frame-causal).
    enc = tiny_encoder()
    mel = torch.randn(1, 48, 80)
    base, _ = enc(mel)
    changed = mel.clone()
    changed[:, 20:24] += 1.0  # last frame of chunk 0
    out, _ = enc(changed)
    assert (out[:, 0] - base[:, 0]).abs().max() > 1e-4


def test_padded_batch_matches_single_and_is_zero_past_length():
    enc = tiny_encoder()
    mel = torch.randn(2, 200, 80)
    full, lengths = enc(mel, torch.tensor([200, 93]))
    single, _ = enc(mel[1:, :93], torch.tensor([93]))
    assert lengths.tolist() == [50, 23]
    torch.testing.assert_close(full[1:, :23], single, atol=1e-5, rtol=0)
    assert full[1, 23:].abs().max() == 0
    assert torch.isfinite(full).all()


def test_cache_stays_bounded_over_a_long_stream():
    enc = tiny_encoder()
    rng = random.Random(3)
    state = enc.init_state(1)
    ctx = TINY.left_chunks * enc.chunk_frames()
    sizes = []
    for _ in range(150):
        enc.step(torch.randn(1, rng.randint(1, 60), 80), state)
        sizes.append(state.nbytes())
        assert all(c.k.shape[2] <= ctx and c.v.shape[2] <= ctx for c in state.layers)
        assert state.mel.shape[1] < 24
    assert state.frames_done > 10 * ctx  # the stream was long compared to the cache
    assert max(sizes[len(sizes) // 2 :]) <= max(sizes[: len(sizes) // 2])


def test_bad_input_and_reuse_after_flush_raise():
    enc = tiny_encoder()
    with pytest.raises(EncoderInputError, match="80"):
        enc(torch.randn(1, 50, 64))
    state = enc.init_state(1)
    with pytest.raises(EncoderInputError):
        enc.step(torch.randn(1, 10), state)
    with pytest.raises(EncoderInputError, match="batch"):
        enc.step(torch.randn(2, 30, 80), state)
    enc.step(torch.randn(1, 30, 80), state)
    enc.flush(state)
    with pytest.raises(EncoderInputError, match="flushed"):
        enc.step(torch.randn(1, 30, 80), state)
    with pytest.raises(ValueError):
        ConformerConfig(chunk_ms=250)  # not a whole number of 40 ms frames


def test_paper_preset_is_about_80m_with_its_decoder():
    enc = count_parameters(ConformerEncoder(CONFORMER_PRESETS["paper-80m"]))
    dec = count_parameters(LlamaDecoder(DECODER_PRESETS["paper-80m"]))
    assert 75e6 < enc + dec < 85e6
    assert count_parameters(ConformerEncoder(CONFORMER_PRESETS["small"])) < 15e6


def test_left_context_is_bounded():
    # One layer, kernel-1 conv: chunk c sees chunks c-left..c, plus 3 mel frames before them (subsampling).
    cfg = ConformerConfig(d_model=32, n_heads=4, n_layers=1, ff_mult=2, conv_kernel=1, subsampling_channels=8,
                          left_chunks=2, dropout=0.0)
    torch.manual_seed(0)
    enc = ConformerEncoder(cfg).eval()
    mel = torch.randn(1, 24 * 6, 80)
    c = 5
    base, _ = enc(mel)
    far = mel.clone()
    far[:, : 24 * (c - 2) - 3] += 1.0  # everything before the visible window's receptive field
    near = mel.clone()
    near[:, 24 * (c - 2) : 24 * (c - 2) + 4] += 1.0  # the oldest visible chunk
    out_far, _ = enc(far)
    out_near, _ = enc(near)
    torch.testing.assert_close(out_far[:, 6 * c :], base[:, 6 * c :], atol=1e-6, rtol=0)
    assert (out_near[:, 6 * c :] - base[:, 6 * c :]).abs().max() > 1e-4


def test_training_forward_backward_reaches_every_parameter():
    cfg = ConformerConfig(d_model=32, n_heads=4, n_layers=2, ff_mult=2, conv_kernel=5, subsampling_channels=8)
    enc = ConformerEncoder(cfg).train()
    out, lengths = enc(torch.randn(2, 100, 80), torch.tensor([100, 61]))
    out.pow(2).mean().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(p.grad.abs().sum() > 0 for p in enc.parameters())

"""The Llama-style decoder: cached streaming equals the uncached forward, window, bounded memory."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from reallm_cli.model.decoder import DecoderConfig, LlamaDecoder, rope_cos_sin

torch.set_num_threads(1)

WINDOW = 6
TINY = DecoderConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=48, window=WINDOW)


def tiny_decoder(cfg: DecoderConfig = TINY, seed: int = 0) -> LlamaDecoder:
    torch.manual_seed(seed)
    return LlamaDecoder(cfg).eval()


def run_blocks(dec: LlamaDecoder, x: torch.Tensor, blocks: list[int], start_pos: int = 0) -> torch.Tensor:
    cache = dec.init_cache(x.shape[0], start_pos=start_pos)
    outs, i = [], 0
    for t in blocks:
        outs.append(dec.step(x[:, i : i + t], cache))
        i += t
    assert i == x.shape[1]
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("style", ["llama", "whisper"])
def test_one_at_a_time_equals_forward_beyond_window(style: str):
    dec = tiny_decoder(dataclasses.replace(TINY, style=style))
    x = torch.randn(2, 5 * WINDOW + 1, 32)
    with torch.no_grad():
        full = dec(x)
    cached = run_blocks(dec, x, [1] * x.shape[1])
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("blocks", [[3, 1, 7, 2, 5, 1, 12], [WINDOW, WINDOW, 1, WINDOW + 4, 10]])
def test_uneven_blocks_equal_forward(blocks: list[int]):
    dec = tiny_decoder(seed=1)
    x = torch.randn(1, sum(blocks), 32)
    with torch.no_grad():
        full = dec(x)
    torch.testing.assert_close(run_blocks(dec, x, blocks), full, atol=1e-5, rtol=0)


def test_far_into_a_stream_equals_start():
    # Hours of stream: only relative positions matter, and float64 RoPE angles keep that true.
    dec = tiny_decoder()
    x = torch.randn(1, 3 * WINDOW, 32)
    with torch.no_grad():
        full = dec(x)
    far = run_blocks(dec, x, [1] * x.shape[1], start_pos=10**9 + 7)
    torch.testing.assert_close(far, full, atol=1e-5, rtol=0)


def test_rope_angles_accurate_at_large_positions():
    cos, sin = rope_cos_sin(torch.tensor([10**9]), 8, 10_000.0)
    assert abs(float(cos[0, 0]) - __import__("math").cos(10**9)) < 1e-6
    assert abs(float(sin[0, 0]) - __import__("math").sin(10**9)) < 1e-6


def test_sliding_window_limits_what_a_position_sees():
    cfg = DecoderConfig(vocab_size=40, d_model=32, n_layers=1, n_heads=4, n_kv_heads=4, ffn_hidden=48, window=WINDOW)
    dec = tiny_decoder(cfg)
    x = torch.randn(1, 20, 32)
    i = 15
    with torch.no_grad():
        base = dec(x)
        outside, inside = x.clone(), x.clone()
        outside[:, i - WINDOW] += 1.0  # just out of the window
        inside[:, i - WINDOW + 1] += 1.0  # the oldest position in the window
        assert torch.equal(dec(outside)[:, i], base[:, i])
        assert (dec(inside)[:, i] - base[:, i]).abs().max() > 1e-4


def test_memory_constant_beyond_window():
    dec = tiny_decoder()
    cache = dec.init_cache(1)
    ptrs, nbytes = (cache.k.data_ptr(), cache.v.data_ptr()), cache.nbytes()
    for _ in range(4 * WINDOW):
        dec.step(torch.randn(1, 1, 32), cache)
    dec.step(torch.randn(1, 3 * WINDOW, 32), cache)
    assert cache.nbytes() == nbytes
    assert (cache.k.data_ptr(), cache.v.data_ptr()) == ptrs
    assert cache.pos == 7 * WINDOW
    assert sorted(cache.slot_pos.tolist()) == list(range(6 * WINDOW, 7 * WINDOW))


def test_embed_and_tied_head():
    dec = tiny_decoder()
    e = dec.embed(torch.tensor([[1, 2, 3]]))
    assert e.shape == (1, 3, 32)
    assert dec.output.weight is dec.tok_embeddings.weight


def test_logits_of_selected_positions_only():
    dec = tiny_decoder()
    x = torch.randn(2, 9, TINY.d_model)
    keep = torch.rand(2, 9, generator=torch.Generator().manual_seed(1)) > 0.5
    with torch.no_grad():
        torch.testing.assert_close(dec(x, outputs=keep), dec(x)[keep])
    assert dec(x, outputs=keep).shape == (int(keep.sum()), TINY.vocab_size)


def test_a_step_can_return_its_last_position_only():
    dec = tiny_decoder()
    x = torch.randn(1, 5, TINY.d_model)
    full, last = dec.init_cache(1), dec.init_cache(1)
    torch.testing.assert_close(dec.step(x[:, :3], last, last_only=True), dec.step(x[:, :3], full)[:, -1:])
    torch.testing.assert_close(dec.step(x[:, 3:], last), dec.step(x[:, 3:], full))  # the caches agree


def test_bad_shapes_raise():
    dec = tiny_decoder()
    with pytest.raises(ValueError, match="32"):
        dec(torch.randn(1, 4, 31))
    with pytest.raises(ValueError, match="batch"):
        dec.step(torch.randn(2, 1, 32), dec.init_cache(1))
    with pytest.raises(ValueError):
        DecoderConfig(n_heads=8, n_kv_heads=3)


def test_dropout_acts_in_training_only():
    import dataclasses

    plain = tiny_decoder()
    dropped = tiny_decoder(dataclasses.replace(TINY, dropout=0.3))
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(2, 9, TINY.d_model)
    with torch.no_grad():
        dropped.train()
        a, b = dropped(x), dropped(x)
        dropped.eval()
        assert not torch.allclose(a, b)  # random masks differ between calls
        assert torch.equal(dropped(x), plain.eval()(x))  # eval: as if there were no dropout
        assert torch.allclose(run_blocks(dropped, x, [4, 5]), plain(x), atol=1e-5)  # streaming unaffected
    with pytest.raises(ValueError, match="dropout"):
        DecoderConfig(dropout=1.0)


def test_whisper_style_has_whisper_layer_layout():
    dec = tiny_decoder(dataclasses.replace(TINY, style="whisper"))
    names = set(dict(dec.named_parameters()))
    assert {"layers.0.attn.wq.bias", "layers.0.attn.wv.bias", "layers.0.attn.wo.bias", "layers.0.ffn.fc1.bias",
            "layers.0.attn_norm.bias", "norm.bias"} <= names
    assert "layers.0.attn.wk.bias" not in names and "layers.0.ffn.w_gate.weight" not in names
    with pytest.raises(ValueError, match="style"):
        DecoderConfig(style="gpt")


def test_a_fresh_cache_reads_only_its_filled_slots():
    # Until the ring wraps, a step attends to the slots written so far and nothing else: garbage in the
    # empty slots (NaN poisons any product that reads it) leaves the outputs equal to the uncached forward.
    dec = tiny_decoder(seed=2)
    x = torch.randn(1, WINDOW, 32)
    with torch.no_grad():
        full = dec(x)
    cache = dec.init_cache(1)
    cache.k.fill_(float("nan"))
    cache.v.fill_(float("nan"))
    outs = [dec.step(x[:, :2], cache), dec.step(x[:, 2:3], cache), dec.step(x[:, 3:], cache)]
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=1e-5, rtol=0)


def test_rewound_positions_are_as_if_never_fed():
    dec = tiny_decoder(dataclasses.replace(TINY, window=16))
    a, b, c = (torch.randn(1, n, TINY.d_model) for n in (3, 4, 2))
    ahead, plain = dec.init_cache(1), dec.init_cache(1)
    dec.step(a, ahead)
    dec.step(b, ahead)  # fed ahead, then taken back
    assert dec.fits_in_order(ahead, 0)
    dec.rewind(ahead, b.shape[1])
    dec.step(a, plain)
    torch.testing.assert_close(dec.step(c, ahead), dec.step(c, plain))
    assert ahead.pos == plain.pos and torch.equal(ahead.slot_pos, plain.slot_pos)
    # beyond the window, fed again, identical too: the ring then holds the same slots
    more = torch.randn(1, 20, TINY.d_model)
    torch.testing.assert_close(dec.step(more, ahead), dec.step(more, plain))


def test_logits_at_chosen_positions_of_a_step():
    dec = tiny_decoder()
    x = torch.randn(1, 5, TINY.d_model)
    full, some = dec.init_cache(1), dec.init_cache(1)
    at = torch.tensor([1, 4])
    torch.testing.assert_close(dec.step(x, some, at=at), dec.step(x, full)[:, at])


def test_a_ring_that_wrapped_cannot_rewind():
    dec = tiny_decoder()  # window 6
    cache = dec.init_cache(1)
    assert dec.fits_in_order(cache, WINDOW) and not dec.fits_in_order(cache, WINDOW + 1)
    dec.step(torch.randn(1, WINDOW + 2, TINY.d_model), cache)
    with pytest.raises(ValueError, match="cannot rewind"):
        dec.rewind(cache, 1)
    with pytest.raises(ValueError, match="cannot rewind"):
        dec.rewind(dec.init_cache(1), 1)  # nothing to take back

"""The streaming Whisper encoder: step == forward across restarts, exactly its right context, batches, errors.

All on small random models (the pretrained import is checked in test_whisper_import.py).
"""

from __future__ import annotations

import random

import pytest
import torch

from reallm_cli.model.encoder import StreamingEncoder
from reallm_cli.model.whisper_config import WhisperEncoderConfig
from reallm_cli.model.whisper_encoder import EncoderInputError, WhisperStreamingEncoder, hop_spans, hops_mask

torch.set_num_threads(1)


def small(seed: int = 0, **kw) -> WhisperStreamingEncoder:
    torch.manual_seed(seed)
    cfg = WhisperEncoderConfig(**{"d_model": 32, "n_heads": 4, "n_layers": 3, "ffn_dim": 64, **kw})
    return WhisperStreamingEncoder(cfg).eval()


def stream(model, mel: torch.Tensor, sizes: list[int] | None = None, seed: int = 0) -> torch.Tensor:
    """Push mel (B, T, 80) in random-sized blocks (0 included), then flush; concatenated output."""
    rng = random.Random(seed)
    sizes = sizes or [0, 1, 2, 5, 11, 24, 25, 48, 97, 150]
    state = model.init_state(mel.shape[0])
    outs, i = [], 0
    while i < mel.shape[1]:
        n = rng.choice(sizes)
        out, state = model.step(mel[:, i:i + n], state)
        outs.append(out)
        i += n
    out, state = model.flush(state)
    outs.append(out)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("chunk_ms,rc_chunks,hop_chunks", [(240, 0, 1), (240, 2, 1), (240, 3, 2), (480, 1, 1)])
def test_step_equals_forward_across_window_restarts(chunk_ms, rc_chunks, hop_chunks):
    # Short windows (1.92 s + the right context, a quarter of overlap) so 777 mel frames cross several restarts.
    n_chunks = 1920 // chunk_ms
    model = small(chunk_ms=chunk_ms, right_context_ms=rc_chunks * chunk_ms, hop_ms=hop_chunks * chunk_ms,
                  window_ms=(n_chunks + rc_chunks) * chunk_ms, overlap_ms=n_chunks // 4 * chunk_ms)
    assert model.config.stride_frames < 389 // 3  # really several windows
    mel = torch.randn(2, 777, 80)
    with torch.no_grad():
        ref, lengths = model(mel, torch.tensor([777, 600]))
    assert ref.shape == (2, 389, 32) and lengths.tolist() == [389, 300]
    assert (ref[0] - stream(model, mel[:1], seed=chunk_ms + rc_chunks)[0]).abs().max().item() < 1e-5
    assert (ref[1, :300] - stream(model, mel[1:, :600], seed=hop_chunks)[0]).abs().max().item() < 1e-5
    assert ref[1, 300:].abs().max().item() == 0.0


@pytest.mark.parametrize("n_mel", [1, 2, 3, 23, 24, 25, 48, 49])
def test_step_equals_forward_on_short_and_ragged_ends(n_mel):
    model = small(right_context_ms=240, hop_ms=480)
    mel = torch.randn(1, n_mel, 80)
    with torch.no_grad():
        ref, lengths = model(mel, torch.tensor([n_mel]))
    got = stream(model, mel, sizes=[1, 7, 24])
    assert lengths.item() == (n_mel + 1) // 2 == got.shape[1]
    assert (ref - got).abs().max().item() < 1e-5


def test_empty_input_gives_empty_output():
    model = small()
    out, state = model.flush(model.init_state(1))
    assert out.shape == (1, 0, 32)
    with torch.no_grad():
        y, lengths = model(torch.zeros(2, 0, 80), torch.tensor([0, 0]))
        y2, lengths2 = model(torch.randn(2, 5, 80), torch.tensor([0, 5]))
    assert y.shape == (2, 0, 32) and lengths.tolist() == [0, 0]
    assert lengths2.tolist() == [0, 3] and y2[0].abs().max().item() == 0.0


def right_context_reference(model, mel: torch.Tensor) -> torch.Tensor:
    """What the schedule means, written plainly for one window: at step s every layer runs over hop s plus
    its right context, attending to the keys kept from hops 0 .. s-1 and to those just computed."""
    cfg = model.config
    hop, rc = cfg.hop_ms // 20, cfg.right_context_ms // 20
    with torch.no_grad():
        x, _ = model.conv_stem(mel, torch.tensor([mel.shape[1]]))
        x = x + model.positional_embedding[: x.shape[1]]
        kept = [x[:, :0]] * cfg.n_layers  # per layer: normed inputs of finished frames
        outs = []
        for a in range(0, x.shape[1], hop):
            h_in = x[:, a:a + hop + rc]
            n = min(hop, h_in.shape[1])
            for layer, block in enumerate(model.blocks):
                h = block.attn_ln(h_in)
                keys_in = torch.cat([kept[layer], h], dim=1)
                kept[layer] = keys_in[:, : a + n]
                k, v = block.attn.keys_values(keys_in)
                h_in = block.finish(h_in, h, k, v, None)
            outs.append(model.ln_post(h_in[:, :n]))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("hop_chunks,rc_chunks", [(1, 0), (1, 1), (1, 3), (2, 3)])
def test_right_context_mode_is_what_it_says(hop_chunks, rc_chunks):
    model = small(right_context_ms=240 * rc_chunks, hop_ms=240 * hop_chunks)
    mel = torch.randn(1, 333, 80)
    with torch.no_grad():
        got, _ = model(mel, torch.tensor([333]))
    assert (got - right_context_reference(model, mel)).abs().max().item() < 1e-5


def test_no_right_context_and_a_hop_of_one_chunk_is_chunk_causal():
    """Within one window: every layer attends to its own chunk and the earlier ones (a mask, in one pass)."""
    model = small()
    mel = torch.randn(1, 333, 80)
    with torch.no_grad():
        x, _ = model.conv_stem(mel, torch.tensor([333]))
        chunk = torch.arange(x.shape[1]) // model.config.frames_per_chunk
        mask = chunk[None, :] <= chunk[:, None]  # (T_q, T_k)
        ref = x + model.positional_embedding[: x.shape[1]]
        for block in model.blocks:
            ref = block(ref, mask)
        got, _ = model(mel, torch.tensor([333]))
    assert (got - model.ln_post(ref)).abs().max().item() < 1e-5


def dependence(model, c: int, limit: int) -> tuple[float, float]:
    """How much the outputs up to chunk c move when mel from frame ``limit`` on changes (should be 0), and how
    much output chunk c moves when the 12 mel frames before ``limit - 1`` change (should not be 0)."""
    mel = torch.randn(1, 24 * 10, 80)
    later, last = mel.clone(), mel.clone()
    later[:, limit:] += torch.randn_like(later[:, limit:])
    last[:, limit - 13:limit - 1] += 1.0
    with torch.no_grad():
        base, unchanged, changed = (model(m, torch.tensor([240]))[0][:, : 12 * (c + 1)] for m in (mel, later, last))
    return (base - unchanged).abs().max().item(), (base - changed)[:, 12 * c:].abs().max().item()


@pytest.mark.parametrize("rc_chunks,hop_chunks", [(0, 1), (1, 1), (2, 2)])
def test_a_chunk_sees_exactly_its_hop_and_right_context(rc_chunks, hop_chunks):
    """Output chunk c (the first of its hop) depends on mel up to the end of its hop plus the right context (and
    the conv stem's frame), and really on the last chunk of that span; the engine waits for as much."""
    model = small(right_context_ms=240 * rc_chunks, hop_ms=240 * hop_chunks, n_layers=4)
    assert model.wait_ms == 240 * (rc_chunks + hop_chunks - 1)  # what the engine waits for past chunk c's end
    c = 2 * hop_chunks
    beyond, last = dependence(model, c, limit=24 * (c + hop_chunks + rc_chunks) + 1)
    assert beyond < 1e-6
    assert last > 1e-3


def test_step_emits_a_hop_as_soon_as_its_right_context_arrived():
    model = small(right_context_ms=240)
    state = model.init_state(1)
    out, state = model.step(torch.randn(1, 48, 80), state)  # chunks 0, 1 (chunk 1 lacks the stem's frame)
    assert out.shape[1] == 0
    out, state = model.step(torch.randn(1, 1, 80), state)  # chunk 0's right context (chunk 1) is now complete
    assert out.shape[1] == 12
    model = small(right_context_ms=240, hop_ms=480)
    out, state = model.step(torch.randn(1, 73, 80), model.init_state(1))  # a hop of two chunks and chunk 2
    assert out.shape[1] == 24


def test_padding_in_a_batch_does_not_change_results():
    model = small(right_context_ms=240, window_ms=1920 + 240, overlap_ms=480)
    a, b = torch.randn(1, 500, 80), torch.randn(1, 333, 80)
    batch = torch.zeros(2, 500, 80)
    batch[0], batch[1, :333] = a[0], b[0]
    batch[1, 333:] = 7.0  # garbage in the padding must not leak
    with torch.no_grad():
        ya, _ = model(a, torch.tensor([500]))
        yb, _ = model(b, torch.tensor([333]))
        y, lengths = model(batch, torch.tensor([500, 333]))
        full, _ = model(batch, torch.tensor([500, 333]), full_attention=True)
        full_b, _ = model(b, torch.tensor([333]), full_attention=True)
    assert lengths.tolist() == [250, 167]
    assert (y[0] - ya[0]).abs().max().item() < 1e-5
    assert (y[1, :167] - yb[0]).abs().max().item() < 1e-5
    assert y[1, 167:].abs().max().item() == 0.0
    assert (full[1, :167] - full_b[0]).abs().max().item() < 1e-5 and full[1, 167:].abs().max().item() == 0.0


@pytest.mark.slow
def test_ten_minutes_stream_with_bounded_state_and_equals_forward():
    model = small(d_model=16, n_heads=2, n_layers=2, ffn_dim=32, right_context_ms=720, hop_ms=480)
    n_mel = 10 * 60 * 100
    mel = torch.randn(1, n_mel, 80)
    state = model.init_state(1)
    outs, max_windows, max_pending = [], 0, 0
    for i in range(0, n_mel, 24):
        out, state = model.step(mel[:, i:i + 24], state)
        outs.append(out)
        max_windows = max(max_windows, len(state.windows))
        max_pending = max(max_pending, state.pending.shape[1], state.mel_tail.shape[1], state.h1_tail.shape[1])
        for w in state.windows:
            assert w.todo.shape[1] < (480 + 720) // 20  # less than a hop and its right context
            for layer in w.layers:
                assert layer.k.shape[2] == model.config.window_frames  # preallocated, never grows
    out, state = model.flush(state)
    outs.append(out)
    got = torch.cat(outs, dim=1)
    assert max_windows <= 2 and max_pending < 12
    with torch.no_grad():
        ref, _ = model(mel, torch.tensor([n_mel]))
    assert got.shape == ref.shape == (1, n_mel // 2, 16)
    assert (ref - got).abs().max().item() < 1e-5


def test_full_attention_is_unmasked_and_bounded():
    model = small()
    mel = torch.randn(1, 100, 80)
    with torch.no_grad():
        full, _ = model(mel, torch.tensor([100]), full_attention=True)
        chunked, _ = model(mel, torch.tensor([100]))
    assert (full - chunked)[:, :12].abs().max().item() > 1e-3  # the first chunk now sees the future
    with pytest.raises(EncoderInputError, match="full attention"):
        model(torch.randn(1, 3002, 80), torch.tensor([3002]), full_attention=True)


def test_protocol_attributes():
    model = small(chunk_ms=480, right_context_ms=480, hop_ms=960)
    assert isinstance(model, StreamingEncoder)
    assert (model.out_dim, model.frame_ms, model.chunk_ms, model.wait_ms, model.hop_chunks) == (32, 20, 480, 960, 2)


def test_bad_stream_input_is_a_clear_error():
    model = small()
    state = model.init_state(1)
    with pytest.raises(EncoderInputError, match="shape"):
        model.step(torch.randn(1, 10, 40), state)
    with pytest.raises(EncoderInputError, match="batch"):
        model.step(torch.randn(2, 10, 80), state)
    model.flush(state)
    with pytest.raises(EncoderInputError, match="flush"):
        model.step(torch.randn(1, 10, 80), state)


def test_hop_spans_finish_what_the_right_context_allows():
    assert hop_spans(59, 24, 36, complete=False) == []
    assert hop_spans(60, 24, 36, complete=False) == [(0, 24, 36)]
    assert hop_spans(108, 24, 36, complete=False) == [(0, 24, 36), (24, 24, 36), (48, 24, 36)]
    # no more frames come: every frame is finished, the right contexts shrink, the last hop is short
    assert hop_spans(58, 24, 36, complete=True) == [(0, 24, 34), (24, 24, 10), (48, 10, 0)]
    assert hop_spans(0, 24, 36, complete=True) == []


def test_hops_mask_lets_a_hop_see_earlier_hops_and_only_its_own_right_context():
    assert hops_mask([(0, 2, 1)], n_keys=5, device=torch.device("cpu")) is None
    m = hops_mask([(0, 2, 1), (2, 2, 1)], n_keys=1, device=torch.device("cpu"))
    # queries: hop 0 (2), hop 1 (2), rc 0, rc 1; keys: 1 cached, hop 0 (2), hop 1 (2), rc 0, rc 1
    assert m.int().tolist() == [[1, 1, 1, 0, 0, 1, 0],
                                [1, 1, 1, 0, 0, 1, 0],
                                [1, 1, 1, 1, 1, 0, 1],
                                [1, 1, 1, 1, 1, 0, 1],
                                [1, 1, 1, 0, 0, 1, 0],
                                [1, 1, 1, 1, 1, 0, 1]]


@pytest.mark.parametrize("rc_chunks,hop_chunks", [(3, 2), (2, 1), (0, 1)])
def test_many_hops_in_one_pass_equal_one_hop_at_a_time(rc_chunks, hop_chunks, monkeypatch):
    # A file's blocks finish many hops per call, in one masked pass; the live schedule finished one at a time.
    model = small(right_context_ms=rc_chunks * 240, hop_ms=hop_chunks * 240, window_ms=(8 + rc_chunks) * 240,
                  overlap_ms=2 * 240)
    mel = torch.randn(1, 901, 80)
    batched, passes = WhisperStreamingEncoder._finish_hops, []

    def counted(self, w, todo, spans):
        passes.append(len(spans))
        return batched(self, w, todo, spans)

    def one_at_a_time(self, w, todo, spans):
        return torch.cat([batched(self, w, todo[:, a:], [(0, n, r)]) for a, n, r in spans], dim=1)

    monkeypatch.setattr(WhisperStreamingEncoder, "_finish_hops", counted)
    assert model.hops_per_pass == 4
    stream(model, mel, sizes=[901])
    assert max(passes) == 4
    passes.clear()
    model.hops_per_pass = 1000
    in_one_block = stream(model, mel, sizes=[901])
    assert max(passes) >= 5  # many hops in one pass did happen
    monkeypatch.setattr(WhisperStreamingEncoder, "_finish_hops", one_at_a_time)
    reference = stream(model, mel, sizes=[901])
    assert in_one_block.shape == reference.shape == (1, 451, 32)
    assert (in_one_block - reference).abs().max().item() < 1e-5


def test_a_window_keeps_its_own_frames_of_the_audio_it_re_encodes():
    """state.overlaps[g]: window k's final frames of the frames before g, where it begins to emit. They are
    what a stream whose frames start at window k's start computes first (the same inputs at positions 0 ..),
    and streaming in blocks keeps the same ones; only the last two windows' are kept."""
    from reallm_cli.model.whisper_config import window_emit_range, window_start_frame

    model = small(right_context_ms=720, hop_ms=480, window_ms=4800, overlap_ms=960)
    cfg = model.config
    mel = torch.randn(1, 1600, 80)  # 16 s: several windows of 2.88 s stride
    with torch.no_grad():
        x, _ = model.conv_stem(mel, torch.tensor([1600]))
        state = model.init_state(1)
        model._feed(x, state, final=True)
        starts = [window_emit_range(cfg, k)[0] for k in range(1, 6)]
        assert sorted(state.overlaps) == [g for g in starts if g < x.shape[1]][-2:]
        for g in state.overlaps:
            k = starts.index(g) + 1
            a = window_start_frame(cfg, k)
            fresh = model._feed(x[:, a:], model.init_state(1), final=True)  # window 0 of a stream from there
            assert state.overlaps[g].shape == (1, cfg.overlap_frames, cfg.d_model)
            torch.testing.assert_close(state.overlaps[g], fresh[:, :g - a], atol=1e-5, rtol=1e-5)
        blocks = model.init_state(1)
        for i in range(0, 1600, 24):
            model.step(mel[:, i:i + 24], blocks)
        model.flush(blocks)
        assert sorted(blocks.overlaps) == sorted(state.overlaps)
        for g in state.overlaps:
            torch.testing.assert_close(blocks.overlaps[g], state.overlaps[g], atol=1e-5, rtol=1e-5)

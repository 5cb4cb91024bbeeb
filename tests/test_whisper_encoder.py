"""The chunk-causal Whisper encoder: streaming == parallel, bounded look-ahead, restarts, files, errors.

All on small random models (the pretrained import is checked in test_whisper_import.py).
"""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from reallm_cli.errors import ModelError, ReallmError
from reallm_cli.model.encoder import StreamingEncoder
from reallm_cli.model.whisper_encoder import (
    EncoderInputError,
    WhisperConfigError,
    WhisperEncoderConfig,
    WhisperStreamingEncoder,
    load_whisper_encoder,
    save_whisper_encoder,
    window_emit_range,
    window_start_frame,
)

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


@pytest.mark.parametrize("chunk_ms", [240, 480])
@pytest.mark.parametrize("lookahead_chunks", [0, 1, 2])
def test_step_equals_forward_across_window_restarts(chunk_ms, lookahead_chunks):
    # A short window (1.92 s + look-ahead, a quarter of overlap) so 777 mel frames cross several restarts.
    n_chunks = 1920 // chunk_ms
    model = small(chunk_ms=chunk_ms, lookahead_ms=lookahead_chunks * chunk_ms,
                  window_ms=(n_chunks + lookahead_chunks) * chunk_ms, overlap_ms=n_chunks // 4 * chunk_ms)
    assert model.config.stride_frames < 389 // 3  # really several windows
    mel = torch.randn(2, 777, 80)
    with torch.no_grad():
        ref, lengths = model(mel, torch.tensor([777, 777]))
    got = stream(model, mel, seed=chunk_ms + lookahead_chunks)
    assert ref.shape == got.shape == (2, 389, 32)
    assert lengths.tolist() == [389, 389]
    assert (ref - got).abs().max().item() < 1e-5


@pytest.mark.parametrize("n_mel", [1, 2, 3, 23, 24, 25, 48, 49])
def test_step_equals_forward_on_short_and_ragged_ends(n_mel):
    model = small(lookahead_ms=240)
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


@pytest.mark.parametrize("lookahead_chunks", [0, 1, 2])
def test_lookahead_is_bounded_and_used(lookahead_chunks):
    """Output chunk c depends on mel up to chunk c + N plus one frame (the conv stem), and really on chunk c + N."""
    model = small(lookahead_ms=240 * lookahead_chunks, n_layers=4)
    c = 3
    beyond, last = dependence(model, c, limit=24 * (c + 1 + lookahead_chunks) + 1)
    assert beyond < 1e-6
    assert last > 1e-3


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


def test_step_emits_a_chunk_as_soon_as_its_lookahead_arrived():
    model = small(lookahead_ms=240)
    state = model.init_state(1)
    out, state = model.step(torch.randn(1, 48, 80), state)  # chunks 0, 1 (chunk 1 lacks the stem's frame)
    assert out.shape[1] == 0
    out, state = model.step(torch.randn(1, 1, 80), state)  # chunk 0's look-ahead (chunk 1) is now complete
    assert out.shape[1] == 12


def test_padding_in_a_batch_does_not_change_results():
    model = small(lookahead_ms=240, window_ms=1920 + 240, overlap_ms=480)
    a, b = torch.randn(1, 500, 80), torch.randn(1, 333, 80)
    batch = torch.zeros(2, 500, 80)
    batch[0], batch[1, :333] = a[0], b[0]
    batch[1, 333:] = 7.0  # garbage in the padding must not leak
    with torch.no_grad():
        ya, _ = model(a, torch.tensor([500]))
        yb, _ = model(b, torch.tensor([333]))
        y, lengths = model(batch, torch.tensor([500, 333]))
    assert lengths.tolist() == [250, 167]
    assert (y[0] - ya[0]).abs().max().item() < 1e-5
    assert (y[1, :167] - yb[0]).abs().max().item() < 1e-5
    assert y[1, 167:].abs().max().item() == 0.0


@pytest.mark.parametrize("chunk_ms,lookahead_chunks", [(240, 0), (240, 2), (480, 1)])
def test_windows_tile_the_stream_with_full_lookahead(chunk_ms, lookahead_chunks):
    cfg = WhisperEncoderConfig(chunk_ms=chunk_ms, lookahead_ms=lookahead_chunks * chunk_ms)
    la_frames = lookahead_chunks * cfg.frames_per_chunk
    assert window_emit_range(cfg, 0)[0] == 0
    for k in range(5):
        start, end = window_emit_range(cfg, k)
        assert end == window_emit_range(cfg, k + 1)[0]  # each frame emitted by exactly one window
        assert start >= window_start_frame(cfg, k)
        assert end + la_frames <= window_start_frame(cfg, k) + cfg.window_frames  # look-ahead inside the window
        assert window_start_frame(cfg, k) % cfg.frames_per_chunk == 0
    assert cfg.window_frames <= cfg.n_ctx
    assert 20_000 <= cfg.stride_frames * cfg.frame_ms <= 30_000  # a restart every ~24 s


@pytest.mark.slow
def test_ten_minutes_stream_with_bounded_state_and_equals_forward():
    model = small(d_model=16, n_heads=2, n_layers=2, ffn_dim=32, lookahead_ms=240)
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
            for layer in w.layers:
                assert layer.k.shape[2] == model.config.window_frames  # preallocated, never grows
                assert layer.held.shape[1] <= model.config.frames_per_chunk
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


def test_forward_hidden_matches_forward():
    model = small(lookahead_ms=240, window_ms=1920 + 240, overlap_ms=480)
    mel = torch.randn(1, 600, 80)
    with torch.no_grad():
        y, _ = model(mel, torch.tensor([600]))
        hidden, lengths = model.forward_hidden(mel, torch.tensor([600]))
    assert len(hidden) == model.config.n_layers + 1
    assert (model.ln_post(hidden[-1]) - y).abs().max().item() < 1e-5
    with torch.no_grad():
        first, _ = model.forward_hidden(mel, torch.tensor([600]), upto=1)
    assert len(first) == 2 and torch.equal(first[1], hidden[1])
    with pytest.raises(EncoderInputError, match="upto"):
        model.forward_hidden(mel, torch.tensor([600]), upto=9)


@pytest.mark.parametrize("start", [0, 1, 3])
def test_forward_top_on_cached_hidden_equals_forward_in_a_padded_batch(start):
    model = small(seed=start, lookahead_ms=240)
    mel = torch.randn(2, 300, 80)
    lengths = torch.tensor([300, 173])
    with torch.no_grad():
        y, out_len = model(mel, lengths)
        hidden, _ = model.forward_hidden(mel, lengths, upto=start)
        top = model.forward_top(hidden[start], out_len, start)
    assert (top - y).abs().max().item() < 1e-5
    assert top[1, out_len[1]:].abs().max().item() == 0  # padding stays zero


def test_forward_top_refuses_more_than_one_window_and_bad_start():
    model = small(window_ms=1920, overlap_ms=480)
    with pytest.raises(EncoderInputError, match="one window"):
        model.forward_top(torch.zeros(1, 97, 32), torch.tensor([97]), 1)
    with pytest.raises(EncoderInputError, match="start"):
        model.forward_top(torch.zeros(1, 10, 32), torch.tensor([10]), 4)


def test_protocol_attributes():
    model = small(chunk_ms=480, lookahead_ms=480)
    assert isinstance(model, StreamingEncoder)
    assert (model.out_dim, model.frame_ms, model.chunk_ms, model.lookahead_ms) == (32, 20, 480, 480)


@pytest.mark.parametrize("kw,msg", [
    ({"chunk_ms": 250}, "chunk_ms"),
    ({"lookahead_ms": 100}, "lookahead_ms"),
    ({"lookahead_ms": 240 * 7}, "layers"),
    ({"window_ms": 31_200}, "positions"),
    ({"window_ms": 1000}, "window_ms"),
    ({"overlap_ms": 28_800}, "exceed"),
])
def test_bad_config_is_a_clear_error(kw, msg):
    with pytest.raises(WhisperConfigError, match=msg):
        WhisperEncoderConfig(**kw)
    assert issubclass(WhisperConfigError, ReallmError)


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


def test_save_and_load_roundtrip(tmp_path):
    model = small(seed=3)
    path = tmp_path / "enc.safetensors"
    save_whisper_encoder(path, model.config, model.state_dict())
    loaded = load_whisper_encoder(path, chunk_ms=480, lookahead_ms=480)
    assert loaded.config == dataclasses.replace(model.config, chunk_ms=480, lookahead_ms=480)
    assert not any(p.requires_grad for p in loaded.parameters())
    mel = torch.randn(1, 90, 80)
    with torch.no_grad():
        a, _ = model(mel, torch.tensor([90]), full_attention=True)
        b, _ = loaded(mel, torch.tensor([90]), full_attention=True)
    assert torch.equal(a, b)
    half = tmp_path / "half.safetensors"
    save_whisper_encoder(half, model.config, model.state_dict(), dtype=torch.float16)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    with torch.no_grad():
        c, _ = load_whisper_encoder(half)(mel, torch.tensor([90]), full_attention=True)
    assert (a - c).abs().max().item() < 2e-2


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_whisper_encoder(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello world, not safetensors")
    with pytest.raises(ModelError, match="safetensors"):
        load_whisper_encoder(junk)


# ----------------------------------------------------------------------------------------- right-context mode


def right_context_reference(model, mel: torch.Tensor) -> torch.Tensor:
    """What right-context mode means, written plainly for one window: at step s every layer runs over hop s plus
    its right context, attending to the keys kept from hops 0 .. s-1 and to those just computed."""
    cfg = model.config
    step, rc = cfg.step_ms // 20, cfg.right_context_ms // 20
    with torch.no_grad():
        x, _ = model.conv_stem(mel, torch.tensor([mel.shape[1]]))
        x = x + model.positional_embedding[: x.shape[1]]
        kept = [x[:, :0]] * cfg.n_layers  # per layer: normed inputs of finished frames
        outs = []
        for a in range(0, x.shape[1], step):
            h_in = x[:, a:a + step + rc]
            n = min(step, h_in.shape[1])
            for layer, block in enumerate(model.blocks):
                h = block.attn_ln(h_in)
                keys_in = torch.cat([kept[layer], h], dim=1)
                kept[layer] = keys_in[:, : a + n]
                k, v = block.attn.keys_values(keys_in)
                h_in = block.finish(h_in, h, k, v, None)
            outs.append(model.ln_post(h_in[:, :n]))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("hop_chunks,rc_chunks", [(1, 1), (1, 3), (2, 3)])
def test_right_context_mode_is_what_it_says(hop_chunks, rc_chunks):
    model = small(right_context_ms=240 * rc_chunks, hop_ms=240 * hop_chunks)
    mel = torch.randn(1, 333, 80)
    with torch.no_grad():
        got, _ = model(mel, torch.tensor([333]))
    assert (got - right_context_reference(model, mel)).abs().max().item() < 1e-5


@pytest.mark.parametrize("hop_chunks,rc_chunks", [(1, 2), (2, 3)])
def test_right_context_mode_streams_as_forward_across_window_restarts(hop_chunks, rc_chunks):
    model = small(right_context_ms=240 * rc_chunks, hop_ms=240 * hop_chunks, window_ms=2880, overlap_ms=960)
    assert model.config.stride_frames < 389 // 3  # really several windows
    mel = torch.randn(2, 777, 80)
    with torch.no_grad():
        ref, lengths = model(mel, torch.tensor([777, 600]))
    assert lengths.tolist() == [389, 300]
    assert (ref[0] - stream(model, mel[:1], seed=hop_chunks)[0]).abs().max().item() < 1e-5
    assert (ref[1, :300] - stream(model, mel[1:, :600], seed=rc_chunks)[0]).abs().max().item() < 1e-5
    assert ref[1, 300:].abs().max().item() == 0.0


def test_right_context_mode_sees_exactly_its_right_context():
    """Output chunk c (the first of its hop) depends on mel up to the end of its hop plus the right context (and
    the conv stem's frame), and really on the last chunk of that right context."""
    model = small(right_context_ms=480, hop_ms=480, n_layers=4)
    assert model.lookahead_ms == 240 + 480  # what the engine waits for past chunk c's end
    c = 4  # hop [4, 5], right context [6, 7]
    beyond, last = dependence(model, c, limit=24 * 8 + 1)
    assert beyond < 1e-6
    assert last > 1e-3


def test_right_context_windows_hold_whole_hops_and_their_right_context():
    cfg = WhisperEncoderConfig(right_context_ms=720, hop_ms=480)
    step, rc = cfg.step_ms // 20, cfg.right_context_ms // 20
    for k in range(4):
        start, end = window_emit_range(cfg, k)
        assert end == window_emit_range(cfg, k + 1)[0]
        assert (start - window_start_frame(cfg, k)) % step == 0 and (end - window_start_frame(cfg, k)) % step == 0
        assert end + rc <= window_start_frame(cfg, k) + cfg.window_frames
    assert cfg.ahead_ms == 960


@pytest.mark.parametrize("kw,msg", [
    ({"right_context_ms": 720, "lookahead_ms": 240}, "exclude"),
    ({"right_context_ms": 700}, "right_context_ms"),
    ({"right_context_ms": 720, "hop_ms": 500}, "hop_ms"),
    ({"hop_ms": 480}, "needs right_context_ms"),
    ({"right_context_ms": 720, "hop_ms": 960, "overlap_ms": 4800 - 240}, "overlap_ms"),
])
def test_bad_right_context_config_is_a_clear_error(kw, msg):
    with pytest.raises(WhisperConfigError, match=msg):
        WhisperEncoderConfig(**kw)


def test_right_context_mode_has_no_per_block_hidden_states():
    model = small(right_context_ms=240)
    with pytest.raises(EncoderInputError, match="right-context"):
        model.forward_hidden(torch.randn(1, 48, 80), torch.tensor([48]), upto=1)
    with pytest.raises(EncoderInputError, match="right-context"):
        model.forward_top(torch.randn(1, 24, 32), torch.tensor([24]), start=1)

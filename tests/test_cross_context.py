"""cross_context + model/cross_decoder: a cross-attention model streams through the engine as its decoding rules say.

A tiny random model (a Whisper-style encoder on the shipped schedule, a 2-layer cross-attention decoder) is
streamed by ``Session`` and checked against a plain loop over the same frames, one chunk at a time: the
engine's passes over several chunks, its forgetting and the prompt's timing change nothing. The chunk
question, asked by a short-lived copy of the last position, is what feeding that position would give."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from reallm_cli.engine import Recognizer
from reallm_cli.model.checkpoint import build_model, load_model, save_model
from reallm_cli.model.cross_decoder import CrossDecoderConfig
from reallm_cli.model.presets import placeholder_tokenizer
from reallm_cli.model.reallm import ReaLLMConfig
from reallm_cli.model.whisper_config import WhisperEncoderConfig

D = 32


def tiny_cross_model(vocab: int, blank_penalty: float, seed: int = 0, n_ctx: int = 96, window_ms: int = 4800):
    torch.manual_seed(seed)
    enc = WhisperEncoderConfig(d_model=D, n_heads=2, n_layers=2, ffn_dim=2 * D, right_context_ms=720,
                               hop_ms=480, window_ms=window_ms, overlap_ms=960)
    dec = CrossDecoderConfig(vocab_size=vocab, d_model=D, n_layers=2, n_heads=2, ffn_hidden=2 * D, n_ctx=n_ctx,
                             blank_penalty=blank_penalty)
    model = build_model(ReaLLMConfig(encoder=enc, decoder=dec, max_tokens_per_chunk=3, lead_in_ms=480,
                                     emit_delay_chunks=1, end_silence_chunks=1))
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def tok():
    return placeholder_tokenizer(40)


def _audio(seconds: float, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(round(seconds * 16000)) * 0.1).astype(np.float32)


def _stream(rec: Recognizer, audio: np.ndarray, block: int) -> list[tuple[int, int]]:
    pieces: list[tuple[int, int]] = []
    s = rec.session(on_piece=lambda t, c: pieces.append((t, c)))
    for i in range(0, len(audio), block):
        s.push(audio[i:i + block])
    s.flush()
    return pieces


def _stream_frames(model, audio: np.ndarray) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """The encoder's frames of a whole stream (lead-in, audio, end silence) and its windows' overlap frames."""
    from reallm_cli.audio.features import StreamingLogMel

    cfg, chunk = model.config, model.chunk_ms * 16
    lead, tail = cfg.lead_in_ms // model.chunk_ms, (cfg.emit_delay_chunks + cfg.end_silence_chunks) * chunk
    stream = np.concatenate([np.zeros(lead * chunk, np.float32), audio, np.zeros(tail, np.float32)])
    fe, state = StreamingLogMel(), model.encoder.init_state(1)
    with torch.inference_mode():
        frames, _ = model.encoder.step(torch.cat([fe.push(stream), fe.flush()])[None], state)
        rest, _ = model.encoder.flush(state)
    return torch.cat([frames, rest], 1)[0], {g: f[0] for g, f in state.overlaps.items()}


def _reference(model, tok, audio: np.ndarray) -> list[tuple[int, int]]:
    """Greedy, one chunk at a time, over the frames of the whole stream (lead-in, audio, end silence), a
    context per encoder window: at a window's first chunk, a fresh context of the lead-in's frames, the
    window's own frames of the last carried chunks before it, the pieces already written after those, then
    the window's frames."""
    cfg, dec, fpc = model.config, model.decoder, model.frames_per_chunk
    rec = Recognizer(model, tok)
    lead = cfg.lead_in_ms // model.chunk_ms
    carry = min(rec.options.carry_chunks, model.encoder.config.overlap_frames // fpc)  # what a window has of them
    silence = torch.cat(rec.lead_in_embeddings())
    frames, overlaps = _stream_frames(model, audio)
    frames = torch.nn.functional.pad(frames, (0, 0, 0, (-frames.shape[0]) % fpc))
    n_chunks = frames.shape[0] // fpc
    switches = sorted(g // fpc for g in overlaps if g // fpc < n_chunks)
    c, blank, out, written = dec.cfg, tok.blank, [], {}
    # (first chunk decoded, the stream's chunk at the context's position lead, the context's frames)
    starts = [(0, 0, frames)] + [(s, s - carry, torch.cat([silence, overlaps[s * fpc][-carry * fpc:], frames[s * fpc:]]))
                                 for s in switches]
    ends = switches + [n_chunks]
    with torch.inference_mode():
        for (begin, first, ctx_frames), end in zip(starts, ends):  # the stream's chunks [begin, end)
            shift = 0 if begin == 0 else lead - first  # context chunk = the stream's chunk + shift
            cache = dec.init_cache(ctx_frames.shape[0])
            dec.add_frames(cache, ctx_frames)
            dec.feed(cache, None, torch.full((c.prompt_tokens,), c.prompt_chunks * fpc), logits=False)
            last = None
            for g in range(first, begin):  # the pieces already written after the carried chunks
                if written.get(g):
                    dec.feed(cache, torch.tensor(written[g]), torch.full((len(written[g]),), (g + shift + 1) * fpc),
                             logits=False)
                    last = written[g][-1]
            for e in range(max(begin, c.prompt_chunks - 1), end):
                vis = torch.tensor([(e + shift + 1) * fpc])
                logits, prev = dec.ask(cache, last, vis)[0], None
                for _ in range(cfg.max_tokens_per_chunk):
                    logits[blank] -= c.blank_penalty
                    if prev is not None:
                        logits[prev] = float("-inf")
                    y = int(logits.argmax())
                    if y == blank:
                        break
                    out.append((y, e - lead))
                    written.setdefault(e, []).append(y)
                    last = prev = y
                    logits = dec.feed(cache, torch.tensor([y]), vis)
    return out


def test_the_engine_streams_as_a_plain_loop_one_chunk_at_a_time(tok):
    model = tiny_cross_model(tok.vocab_size, blank_penalty=-1.6)
    audio = _audio(8.0)  # three encoder windows of 2.88 s: the context restarts on each window's frames
    want = _reference(model, tok, audio)
    writers = {c for _, c in want}
    assert 3 < len(writers) < len(audio) // 3840 and len(want) > len(writers)  # chunks that write, and that do not
    assert any(c >= 2 * 144 // 12 for _, c in want)  # pieces written in the third window
    rec = Recognizer(model, tok)
    assert _stream(rec, audio, len(audio)) == want
    assert _stream(rec, audio, 1600) == want  # live blocks of 100 ms: the same pieces as the whole file


def test_a_chunk_question_is_what_feeding_the_last_position_would_give(tok):
    dec = tiny_cross_model(tok.vocab_size, 0.0).decoder
    frames, ids = torch.randn(48, D), torch.tensor([5, 7, 9])
    with torch.inference_mode():
        full, short = dec.init_cache(48), dec.init_cache(48)
        for cache in (full, short):
            dec.add_frames(cache, frames)
            dec.feed(cache, None, torch.full((4,), 24), logits=False)
        dec.feed(full, ids, torch.tensor([24, 24, 36]), logits=False)
        dec.feed(short, ids[:2], torch.tensor([24, 24]), logits=False)
        asked = dec.ask(full, 9, torch.tensor([36, 48]))  # two questions in one call
        for row, vis in zip(asked, (36, 48)):
            n = short.n
            torch.testing.assert_close(row, dec.feed(short, ids[2:], torch.tensor([vis])), atol=1e-5, rtol=1e-5)
            short.n = n  # take the fed position back: only the question's answer was wanted
        assert full.n == 4 + 3  # the questions left nothing behind


def test_a_long_stream_restarts_its_context_and_stays_bounded(tok):
    model = tiny_cross_model(tok.vocab_size, blank_penalty=0.0, n_ctx=40)  # writes after most chunks
    rec = Recognizer(model, tok)
    rec.options = type(rec.options)(**{**rec.options.__dict__, "context_chunks": 16, "carry_chunks": 4})
    pieces = []
    s = rec.session(on_piece=lambda t, c: pieces.append((t, c)))
    size = s.decoder.kv.nbytes()
    for i in range(20):  # 20 s, far past 16 chunks and 40 text positions
        s.push(_audio(1.0, seed=i))
        assert s.decoder.kv.n <= 40 and len(s.decoder.chunks) <= 16 + rec.options.chunks_ahead
        assert s.decoder.kv.nbytes() == size  # allocated once per context, never grown
    s.flush()
    assert s.stats.restarts >= 5
    assert max(c for _, c in pieces) > 70  # it still writes near the end


def test_a_cross_model_file_round_trips(tmp_path, tok):
    model = tiny_cross_model(tok.vocab_size, blank_penalty=-1.6)
    path = tmp_path / "cross.safetensors"
    save_model(path, model, tok, dtype=torch.float32)
    loaded, _ = load_model(path)
    assert loaded.config == model.config and loaded.config.to_dict()["decoder_kind"] == "cross"
    audio = _audio(2.0)
    assert _stream(Recognizer(loaded, tok), audio, 4000) == _stream(Recognizer(model, tok), audio, 4000)


@pytest.mark.parametrize("precision", ["fp16", "int8", "bf16"])
def test_a_cross_model_runs_in_every_precision(tmp_path, tok, precision):
    path = tmp_path / "cross.safetensors"
    save_model(path, tiny_cross_model(tok.vocab_size, blank_penalty=-1.6), tok, dtype=torch.float32)
    rec = Recognizer.load(path, precision=precision)
    words = rec.transcribe_array(_audio(2.0))
    assert words and all(w.emit_s >= w.end_s for w in words)


@pytest.mark.parametrize("no_repeat", [True, False])
def test_no_piece_follows_itself_within_a_chunk(tok, no_repeat):
    model = tiny_cross_model(tok.vocab_size, blank_penalty=0.0)
    dec = model.decoder
    with torch.no_grad():  # a head that prefers piece 7 to BLANK to anything else, whatever it reads
        dec.tok_embeddings.weight.zero_()
        dec.tok_embeddings.weight[7, 0], dec.tok_embeddings.weight[tok.blank, 1] = 1.0, 1.0
        dec.norm.weight.zero_(), dec.norm.bias.zero_()
        dec.norm.bias[0], dec.norm.bias[1] = 2.0, 1.0
    model.config = replace(model.config, decoder=replace(dec.cfg, no_repeat=no_repeat))
    dec.cfg = model.config.decoder
    pieces = _stream(Recognizer(model, tok), _audio(1.0), 16000)
    per_chunk = Counter(c for _, c in pieces)
    assert {t for t, _ in pieces} == {7}
    assert set(per_chunk.values()) == ({1} if no_repeat else {model.config.max_tokens_per_chunk})


def test_a_context_that_writes_nothing_for_a_while_restarts_afresh_at_the_same_chunk_in_any_blocks(tok):
    """Whisper's decoder can fall silent mid-stream and stay so while its context lasts; a context that wrote
    nothing for QUIET_RESTART chunks begins afresh (lead-in, prompt). Where it does must not depend on how
    the audio arrives: file and live blocks restart at the same chunks, and write the same pieces."""
    from reallm_cli.cross_context import CrossDecoderContext

    model = tiny_cross_model(tok.vocab_size, blank_penalty=-1.0, n_ctx=200, window_ms=9600)  # windows of 7.7 s
    audio = np.concatenate([_audio(2.0), np.zeros(16000 * 5, np.float32), _audio(2.0, seed=2)])  # a 5 s pause
    runs = []
    for block in (len(audio), 1600):
        rec, begun = Recognizer(model, tok), []
        s = rec.session()
        begin = s.decoder._begin
        s.decoder._begin = lambda chunks, d=s.decoder: (begun.append((d._next, len(chunks))), begin(chunks))[1]
        pieces = []
        s._on_piece = lambda t, c: pieces.append((t, c))
        for i in range(0, len(audio), block):
            s.push(audio[i:i + block])
            assert len(s.decoder.chunks) <= s.decoder._limit() + rec.options.chunks_ahead
        s.flush()
        runs.append((begun, pieces))
    (begun, pieces), live = runs
    assert live == runs[0]
    lead = model.config.lead_in_ms // model.chunk_ms
    quiet = [c for c, n in begun if n == lead]  # afresh: the lead-in's chunks alone
    assert quiet  # nothing written in the QUIET_RESTART chunks before each, a piece just before them
    for c in quiet:
        written = [p + lead for _, p in pieces if p + lead < c]
        assert written and max(written) == c - CrossDecoderContext.QUIET_RESTART - 1
    assert any(p + lead > quiet[0] for _, p in pieces)  # and it writes again after the pause

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
from reallm_cli.train.feature_cache import encode_audio

D = 32


def tiny_cross_model(vocab: int, blank_penalty: float, seed: int = 0, n_ctx: int = 96):
    torch.manual_seed(seed)
    enc = WhisperEncoderConfig(d_model=D, n_heads=2, n_layers=2, ffn_dim=2 * D, right_context_ms=720,
                               hop_ms=480, window_ms=4800, overlap_ms=960)
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


def _reference(model, tok, audio: np.ndarray) -> list[tuple[int, int]]:
    """Greedy, one chunk at a time, over the frames of the whole stream (lead-in, audio, end silence)."""
    cfg, dec, fpc = model.config, model.decoder, model.frames_per_chunk
    lead = cfg.lead_in_ms // model.chunk_ms
    chunk = model.chunk_ms * 16
    tail = (cfg.emit_delay_chunks + cfg.end_silence_chunks) * chunk
    frames = encode_audio(model.encoder, np.concatenate([np.zeros(lead * chunk, np.float32), audio,
                                                         np.zeros(tail, np.float32)]))
    frames = torch.nn.functional.pad(frames, (0, 0, 0, (-frames.shape[0]) % fpc))
    c, blank, out = dec.cfg, tok.blank, []
    with torch.inference_mode():
        cache = dec.init_cache(frames.shape[0])
        dec.add_frames(cache, frames)
        dec.feed(cache, None, torch.full((c.prompt_tokens,), c.prompt_chunks * fpc), logits=False)
        last = None
        for e in range(c.prompt_chunks - 1, frames.shape[0] // fpc):
            vis = torch.tensor([(e + 1) * fpc])
            logits, prev = dec.ask(cache, last, vis)[0], None
            for _ in range(cfg.max_tokens_per_chunk):
                logits[blank] -= c.blank_penalty
                if prev is not None:
                    logits[prev] = float("-inf")
                y = int(logits.argmax())
                if y == blank:
                    break
                out.append((y, e - lead))
                last = prev = y
                logits = dec.feed(cache, torch.tensor([y]), vis)
    return out


def test_the_engine_streams_as_a_plain_loop_one_chunk_at_a_time(tok):
    model = tiny_cross_model(tok.vocab_size, blank_penalty=-1.6)
    audio = _audio(3.0)
    want = _reference(model, tok, audio)
    writers = {c for _, c in want}
    assert 3 < len(writers) < 15 and len(want) > len(writers)  # chunks that write, and chunks that do not
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

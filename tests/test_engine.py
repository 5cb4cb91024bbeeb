"""The streaming engine: block sizes never change the result, and streaming equals an offline pass."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import tiny_model, tiny_right_context_model
from reallm_cli.audio.features import whisper_log_mel
from reallm_cli.bench import synthetic_audio
from reallm_cli.engine import DecodeOptions, DecoderContext, Recognizer
from reallm_cli.model.presets import placeholder_tokenizer

FEED_CHUNKS = DecoderContext.chunks_ahead  # the engine's own, for tests that record its passes


@pytest.fixture(scope="module", params=[1, 3], ids=["1-slot", "3-slots"])
def recognizer(request):
    """Models reading each chunk as one speech embedding (the paper) and as three."""
    tok = placeholder_tokenizer(64)
    model = tiny_model(tok.vocab_size, slots_per_chunk=request.param).eval()
    return Recognizer(model, tok, DecodeOptions(max_tokens_per_chunk=3))


def run(recognizer, audio, blocks):
    """Words and (piece, chunk) of every piece, pushing ``audio`` in ``blocks`` (the rest in one)."""
    pieces = []
    s = recognizer.session(on_piece=lambda p, c: pieces.append((p, c)))
    words, i = [], 0
    for n in blocks:
        words.extend(s.push(audio[i : i + n]).final)
        i += n
    words.extend(s.push(audio[i:]).final)
    words.extend(s.flush().final)
    assert s.stats.pieces == len(pieces) and s.stats.words == len(words)
    return words, pieces


def test_random_block_sizes_give_the_same_words(recognizer):
    audio = synthetic_audio(5.0, seed=3)
    whole, whole_tokens = run(recognizer, audio, [len(audio)])
    assert whole_tokens, "the model emitted nothing; the test would prove nothing"
    rng = np.random.default_rng(0)
    for _ in range(3):
        blocks = list(rng.integers(1, 9000, size=40))
        words, tokens = run(recognizer, audio, blocks)
        assert tokens == whole_tokens
        assert words == whole


def offline_greedy(model, tok, audio, max_tokens, lead=0, context_chunks=None, carry=0):
    """Whole-utterance encoder pass, then greedy decoding by full recomputation (no caches at all).

    With ``context_chunks``, the context-restart rule (``audio`` begins with ``lead`` chunks of silence):
    before chunk c, a context of ``context_chunks`` chunks becomes ``lead`` chunks of a silent stream's
    slots, with no pieces, plus the last ``carry`` chunks, each with the pieces written after it."""

    def slots_of(samples):
        mel = whisper_log_mel(samples, floor="running")
        frames, _ = model.encoder.forward(mel[None], torch.tensor([mel.shape[0]]))
        return model.speech_embeddings(frames)[0].view(-1, model.config.slots_per_chunk, model.decoder.d_model)

    with torch.no_grad():
        speech = slots_of(audio)
        silent = slots_of(np.zeros(len(audio), np.float32))[:lead]
        history = [(speech[c], []) for c in range(speech.shape[0])]
        context, out = [], []  # context: (slots, pieces) in decoding order
        for c in range(speech.shape[0]):
            if context_chunks is not None and len(context) >= context_chunks:
                context = [(e, []) for e in silent] + context[len(context) - carry:]
            context.append(history[c])
            while len(history[c][1]) < max_tokens:
                seq = torch.cat([torch.cat((e, model.decoder.embed(torch.tensor(p, dtype=torch.long)))) for e, p in context])
                t = int(model.decoder(seq[None])[0, -1].argmax())
                if t == tok.blank:
                    break
                history[c][1].append(t)
                out.append((t, c))
    return out


def test_streaming_equals_offline(recognizer):
    audio = synthetic_audio(3.0, seed=5)
    _, tokens = run(recognizer, audio, [2400] * 30)
    expected = offline_greedy(recognizer.model, recognizer.tokenizer, audio, recognizer.options.max_tokens_per_chunk)
    assert tokens == expected


def test_token_cap_per_chunk(recognizer):
    _, tokens = run(recognizer, synthetic_audio(3.0), [48000])
    per_chunk = np.bincount([c for _, c in tokens])
    assert per_chunk.max() <= recognizer.options.max_tokens_per_chunk


def test_words_have_ordered_times(recognizer):
    words, _ = run(recognizer, synthetic_audio(4.0, seed=1), [16000] * 4)
    assert words
    for w in words:
        assert 0 <= w.start_s < w.end_s <= w.emit_s
    assert [w.start_s for w in words] == sorted(w.start_s for w in words)


def test_lead_in_decodes_silence_first_and_keeps_times_on_the_audio(recognizer):
    lead = 2
    rec = Recognizer(recognizer.model, recognizer.tokenizer, DecodeOptions(max_tokens_per_chunk=3, lead_in_chunks=lead))
    audio = synthetic_audio(3.0, seed=5)
    chunk = int(recognizer.model.chunk_ms * 16)  # samples
    padded = np.concatenate([np.zeros(lead * chunk, np.float32), audio])
    expected = [(t, c - lead) for t, c in offline_greedy(rec.model, rec.tokenizer, padded, 3) if c >= lead]
    assert expected, "the model emitted nothing; the test would prove nothing"
    words, tokens = run(rec, audio, [2400] * 30)
    assert [x for x in tokens if x[1] >= 0] == expected
    words2, tokens2 = run(rec, audio, [len(audio)])
    assert (words2, tokens2) == (words, tokens)  # block sizes still change nothing
    assert all(0 <= w.start_s < w.end_s <= w.emit_s for w in words)
    assert max(w.end_s for w in words) <= len(audio) / 16000 + recognizer.model.chunk_ms / 1000


def test_recognizer_takes_the_lead_in_from_the_model_config(recognizer):
    import dataclasses

    model = recognizer.model
    saved = model.config
    try:
        model.config = dataclasses.replace(saved, lead_in_ms=2 * model.chunk_ms)
        assert Recognizer(model, recognizer.tokenizer).options.lead_in_chunks == 2
    finally:
        model.config = saved
    assert Recognizer(model, recognizer.tokenizer).options.lead_in_chunks == 0


def test_a_late_writing_model_gets_trailing_silence_and_earlier_word_times(recognizer):
    """emit_delay_chunks = d: d chunks of silence are decoded after the audio, and a word written after
    chunk c is dated d chunks earlier, though it is shown (emit_s) when it is written."""
    d = 1
    rec = Recognizer(recognizer.model, recognizer.tokenizer, DecodeOptions(max_tokens_per_chunk=3, emit_delay_chunks=d))
    audio = synthetic_audio(3.0, seed=5)
    chunk = int(recognizer.model.chunk_ms * 16)  # samples
    padded = np.concatenate([audio, np.zeros(d * chunk, np.float32)])
    expected = offline_greedy(rec.model, rec.tokenizer, padded, 3)
    assert expected, "the model emitted nothing; the test would prove nothing"
    words, tokens = run(rec, audio, [2400] * 30)
    assert tokens == expected  # the audio plus d chunks of silence, decoded as one stream
    assert all(0 <= w.start_s < w.end_s <= w.emit_s for w in words)
    # the same pending word (first chunk 4, last chunk 6) finished by both: dated one chunk earlier, shown as late
    from reallm_cli.engine import _PendingWord

    late = rec.session().emission.finish_word(_PendingWord([1], 4, 6))
    plain = recognizer.session().emission.finish_word(_PendingWord([1], 4, 6))
    chunk_s = recognizer.model.chunk_ms / 1000
    assert (late.start_s, late.end_s) == (round(plain.start_s - chunk_s, 3), round(plain.end_s - chunk_s, 3))
    assert late.emit_s == plain.emit_s


def test_the_decoder_context_restarts_with_the_lead_in_and_the_last_chunks(recognizer):
    lead, context_chunks, carry = 1, 5, 2
    opts = DecodeOptions(max_tokens_per_chunk=3, lead_in_chunks=lead, context_chunks=context_chunks, carry_chunks=carry)
    rec = Recognizer(recognizer.model, recognizer.tokenizer, opts)
    audio = synthetic_audio(4.0, seed=5)
    chunk = int(recognizer.model.chunk_ms * 16)  # samples
    padded = np.concatenate([np.zeros(lead * chunk, np.float32), audio])
    restarting = offline_greedy(rec.model, rec.tokenizer, padded, 3, lead, context_chunks, carry)
    expected = [(t, c - lead) for t, c in restarting if c >= lead]
    assert expected, "the model emitted nothing; the test would prove nothing"
    pieces = []
    s = rec.session(on_piece=lambda p, c: pieces.append((p, c)))
    for i in range(0, len(audio), 3000):
        s.push(audio[i : i + 3000])
    s.flush()
    assert s.stats.restarts >= 3  # 17 chunks + lead-in through a context of 5
    assert [x for x in pieces if x[1] >= 0] == expected
    slots = rec.model.config.slots_per_chunk
    assert s.decoder.kv.pos <= context_chunks * (slots + 3)  # the cache holds one context, not the whole stream
    assert s.decoder.kv.pos < s.chunks_done * slots


def test_a_context_restarts_without_a_lead_in_too(recognizer):
    opts = DecodeOptions(max_tokens_per_chunk=3, context_chunks=4, carry_chunks=1)
    rec = Recognizer(recognizer.model, recognizer.tokenizer, opts)
    audio = synthetic_audio(3.0, seed=5)
    expected = offline_greedy(rec.model, rec.tokenizer, audio, 3, 0, 4, 1)
    pieces = []
    s = rec.session(on_piece=lambda p, c: pieces.append((p, c)))
    s.push(audio)
    s.flush()
    assert s.stats.restarts >= 2 and pieces == expected


def test_a_restarted_context_must_be_shorter_than_the_limit(recognizer):
    with pytest.raises(ValueError):
        DecodeOptions(context_chunks=4, carry_chunks=4)
    with pytest.raises(ValueError):
        Recognizer(recognizer.model, recognizer.tokenizer, DecodeOptions(lead_in_chunks=2, context_chunks=4,
                                                                          carry_chunks=2)).session()


def passes_and_pieces(rec, audio, monkeypatch):
    """Every decoder pass's chunk count and every piece, streaming ``audio`` in one block."""
    passes, pieces = [], []

    def recorded(self, slots):
        logits, restarted = FEED_CHUNKS(self, slots)
        passes.append(logits.shape[0])
        return logits, restarted

    monkeypatch.setattr(DecoderContext, "chunks_ahead", recorded)
    s = rec.session(on_piece=lambda p, c: pieces.append((p, c)))
    s.push(audio)
    s.flush()
    return passes, pieces


def test_a_pass_reads_two_chunks_past_the_quiet_so_far(recognizer, monkeypatch):
    """Chunks read past the first that writes are read again, so a pass reads two more chunks than have
    passed since the last write: short in speech, growing to ``chunks_ahead`` where nothing is written,
    and the pieces are those of one chunk at a time."""
    audio = synthetic_audio(6.0, seed=5)
    one_at_a_time = replace(recognizer.options, chunks_ahead=1)
    _, expected = passes_and_pieces(Recognizer(recognizer.model, recognizer.tokenizer, one_at_a_time), audio,
                                    monkeypatch)
    passes, pieces = passes_and_pieces(recognizer, audio, monkeypatch)
    assert expected and pieces == expected
    wrote, quiet, c = {chunk for _, chunk in pieces}, 0, 0
    for k in passes:
        assert k <= 2 + quiet
        n = next((i + 1 for i in range(k) if c + i in wrote), k)  # the chunks the pass decided
        quiet, c = (0 if c + n - 1 in wrote else quiet + n), c + n
    silent = replace(recognizer.options, max_tokens_per_chunk=0)  # nothing is ever written
    passes, _ = passes_and_pieces(Recognizer(recognizer.model, recognizer.tokenizer, silent),
                                  synthetic_audio(12.0, seed=5), monkeypatch)  # 50 chunks ready at once
    assert passes[:3] == [2, 4, 8]  # then the tiny model's short ring cache caps them


# -- the shipped mode: a Whisper-style encoder in right-context mode (720 ms ahead, hops of 480 ms) ----------


@pytest.fixture(scope="module")
def rc_recognizer():
    """A tiny random ReaLLM on the shipped encoder schedule, with 4.8 s windows so 8 s cross two restarts."""
    tok = placeholder_tokenizer(64)
    model = tiny_right_context_model(tok.vocab_size, d=32, enc_heads=4, enc_layers=2, dec_window=128).eval()
    assert model.encoder.hop_chunks == 2 and model.encoder.wait_ms == 960
    return Recognizer(model, tok, DecodeOptions(max_tokens_per_chunk=3))


def test_right_context_live_equals_file_word_for_word_and_time_for_time(rc_recognizer):
    audio = synthetic_audio(8.0, seed=2)
    file_words, file_pieces = run(rc_recognizer, audio, [len(audio)])
    assert len(file_words) >= 3, "the model wrote too little; the test would prove little"
    rng = np.random.default_rng(1)
    for sizes in ([160] * 800, [3840] * 33, list(rng.integers(1, 5000, size=60))):  # 10 ms, one chunk, random
        assert run(rc_recognizer, audio, sizes) == (file_words, file_pieces)
    assert rc_recognizer.transcribe_array(audio, block_samples=1234) == file_words


def test_right_context_streaming_equals_offline_and_flush_writes_the_tail(rc_recognizer):
    """Pieces equal a whole-utterance encoder pass decoded by full recomputation, tail chunk included; the
    last hop and its right context (up to 960 ms) are decoded by ``flush``, which ends the last word."""
    audio = synthetic_audio(6.1, seed=4)  # ends inside a chunk
    pieces = []
    s = rc_recognizer.session(on_piece=lambda p, c: pieces.append((p, c)))
    pushed = []
    for i in range(0, len(audio), 4000):
        pushed.extend(s.push(audio[i : i + 4000]).final)
    chunks_before_flush = s.chunks_done
    tail = s.flush()
    n_chunks = -(-len(audio) // 3840)
    assert s.chunks_done == n_chunks  # 6.1 s: 25 whole chunks and a tail
    assert n_chunks - chunks_before_flush >= 3  # a hop and its right context waited for the end
    assert pieces == offline_greedy(rc_recognizer.model, rc_recognizer.tokenizer, audio, 3)
    assert tail.final and tail.partial == ""
    late = [c for _, c in pieces if c >= chunks_before_flush]
    assert late, "no piece after the last push; flush would prove nothing"
    last_word = tail.final[-1]
    assert last_word.end_s == round((max(c for _, c in pieces) + 1) * 0.24, 3)
    words = pushed + list(tail.final)
    assert " ".join(w.text for w in words) == rc_recognizer.tokenizer.decode([p for p, _ in pieces]).strip()
    assert s.flush().final == ()  # a second flush adds nothing


def test_right_context_lead_in_does_not_shift_word_times(rc_recognizer):
    """A session with 2 lead-in chunks decodes what a plain session decodes of 2 chunks of silence and then
    the audio, and dates every word on the audio: 480 ms earlier, emit times too."""
    lead = 2
    rec = Recognizer(rc_recognizer.model, rc_recognizer.tokenizer, DecodeOptions(max_tokens_per_chunk=3,
                                                                                 lead_in_chunks=lead))
    audio = synthetic_audio(6.0, seed=2)
    padded = np.concatenate([np.zeros(lead * 3840, np.float32), audio])
    plain_words, plain_pieces = run(rc_recognizer, padded, [4000] * 30)
    words, pieces = run(rec, audio, [4000] * 30)
    assert pieces == [(p, c - lead) for p, c in plain_pieces]  # nothing was decoded before the hop was whole
    assert [w.text for w in words] == [w.text for w in plain_words]
    shifted = [(w, p) for w, p in zip(words, plain_words) if p.start_s >= lead * 0.24]
    assert len(shifted) >= 3, "too few words after the lead-in; the test would prove little"
    for w, p in shifted:
        assert (w.start_s, w.end_s, w.emit_s) == tuple(round(t - lead * 0.24, 3) for t in (p.start_s, p.end_s, p.emit_s))
    assert all(0 <= w.start_s < w.end_s <= w.emit_s for w in words)
    assert run(rec, audio, [len(audio)]) == (words, pieces)  # block sizes still change nothing


def test_a_word_that_never_ends_is_cut_at_max_word_pieces(recognizer):
    """The word in progress is bounded too: a decoder that only ever continues a word gets it cut."""
    from reallm_cli.engine import Emission

    tok = recognizer.tokenizer
    inner = next(i for i in range(tok.vocab_size) if i != tok.blank and not tok.starts_word(i))
    em = Emission(recognizer.model, tok, DecodeOptions(max_word_pieces=5))
    words = [w for c in range(12) for w in em.piece(inner, c)]
    assert len(words) == 2 and len(em.word.pieces) == 2  # 5 + 5 + 2 pieces
    assert words[0].text == tok.decode([inner] * 5).strip() and words[1].start_s == 5 * 0.24
    with pytest.raises(ValueError):
        DecodeOptions(max_word_pieces=0)


@pytest.mark.parametrize("kind", ["conformer", "whisper-right-context"])
def test_emit_time_is_when_the_chunk_can_first_be_decoded(kind, rc_recognizer):
    """Audio pushed 1 ms at a time: the first moment each chunk's frames are all out of the encoder is the
    time ``emit_s`` assumes (chunk end, encoder look-ahead, and the front end's STFT half window)."""
    from reallm_cli.engine import EncoderStage, frontend_lookahead_ms

    if kind == "conformer":
        tok = placeholder_tokenizer(64)
        model = tiny_model(tok.vocab_size).eval()
    else:
        model = rc_recognizer.model
    enc = model.encoder
    stage = EncoderStage(model)
    audio = synthetic_audio(3.0, seed=1)
    fpc, frames_out, ready_ms = model.frames_per_chunk, 0, {}
    with torch.inference_mode():
        for i in range(0, len(audio), 16):
            frames_out += stage.push(audio[i : i + 16]).reshape(-1, enc.out_dim).shape[0]
            for c in range(frames_out // fpc):
                ready_ms.setdefault(c, (i + 16) / 16)
    assert len(ready_ms) >= 6
    for c, at in ready_ms.items():
        hop_end = -(-(c + 1) // enc.hop_chunks) * enc.hop_chunks  # the hop finishes all its chunks together
        expected = hop_end * 240 + enc.wait_ms - (enc.hop_chunks - 1) * 240 + frontend_lookahead_ms(enc)
        assert at == np.ceil(expected), (c, at, expected)  # 1 ms pushes: the first whole ms at or past it

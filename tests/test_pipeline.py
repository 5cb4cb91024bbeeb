"""A file on two threads: the same events as pushing block by block, errors in their place, no thread left."""

import threading

import pytest
import torch

from conftest import tiny_right_context_model
from reallm_cli.bench import synthetic_audio
from reallm_cli.engine import DecodeOptions, Recognizer
from reallm_cli.model.presets import placeholder_tokenizer
from reallm_cli.pipeline import pipelined_events


@pytest.fixture(scope="module")
def recognizer():
    tok = placeholder_tokenizer(64)
    model = tiny_right_context_model(tok.vocab_size, d=32, enc_heads=4, enc_layers=2, dec_window=128).eval()
    return Recognizer(model, tok, DecodeOptions(max_tokens_per_chunk=3))


def blocks_of(audio, n):
    return [audio[i:i + n] for i in range(0, len(audio), n)]


@pytest.mark.parametrize("block", [3840, 16000 * 2, 1234])
def test_the_same_events_as_pushing_block_by_block(recognizer, block):
    audio = synthetic_audio(8.0, seed=2)
    plain = recognizer.session()
    want = [plain.push(b) for b in blocks_of(audio, block)] + [plain.flush()]
    piped = recognizer.session()
    got = list(pipelined_events(piped, blocks_of(audio, block))) + [piped.flush()]
    assert sum(len(e.final) for e in want) >= 3, "the model wrote too little; the test would prove little"
    assert got == want
    assert piped.stats.chunks == plain.stats.chunks and piped.audio_s == plain.audio_s


def test_torch_threads_are_split_while_it_runs_and_given_back(recognizer):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        events = pipelined_events(recognizer.session(), blocks_of(synthetic_audio(2.0), 3840))
        for _ in events:
            seen.append(torch.get_num_threads())
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_an_error_reading_the_blocks_comes_after_the_blocks_before_it(recognizer):
    audio = synthetic_audio(4.0, seed=3)

    def damaged():
        yield from blocks_of(audio[:16000 * 3], 16000)
        raise OSError("damaged at 3 s")

    session = recognizer.session()
    got = []
    with pytest.raises(OSError, match="damaged at 3 s"):
        for event in pipelined_events(session, damaged()):
            got.append(event)
    assert len(got) == 3 and session.audio_s == 3.0
    session.flush()  # the stream can still be finished: what was decoded is kept


def test_stopping_early_stops_the_second_thread(recognizer):
    before = {t.ident for t in threading.enumerate()}
    events = pipelined_events(recognizer.session(), blocks_of(synthetic_audio(8.0), 3840))
    next(events)
    events.close()  # what an interrupt in the reading loop does (stream_file closes it)
    assert {t.ident for t in threading.enumerate() if t.name == "reallm-encode"} - before == set()


def test_stream_file_gives_the_same_segments_either_way(recognizer, tmp_path):
    import soundfile as sf

    from reallm_cli.transcribe import TranscribeOptions, stream_file

    path = tmp_path / "x.wav"
    sf.write(path, synthetic_audio(8.0, seed=2), 16000)
    one, two = [], []
    stream_file(recognizer, str(path), one.append, TranscribeOptions(block_s=2.0))
    stream_file(recognizer, str(path), two.append, TranscribeOptions(block_s=2.0, pipeline=True))
    assert one and one == two

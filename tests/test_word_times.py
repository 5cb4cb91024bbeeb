"""Word times finer than the chunk: the character CTC head's alignment, its file, and the engine using it."""

import numpy as np
import pytest
import torch

from conftest import tiny_model
from reallm_cli.bench import synthetic_audio
from reallm_cli.engine import DecodeOptions, Recognizer
from reallm_cli.errors import ModelError
from reallm_cli.model.presets import placeholder_tokenizer
from reallm_cli.train.ctc_head import CTCHead
from reallm_cli.word_times import (BLANK, CHARS, FILE_NAME, SPACE, VOCAB_SIZE, FrameTrack, WordTimer,
                                   encoder_fingerprint, find_word_timer, text_ids)

ID = {c: i + 1 for i, c in enumerate(CHARS)}


def test_text_ids_are_the_spoken_characters():
    assert text_ids("Cat's") == [ID["c"], ID["a"], ID["t"], ID["'"], ID["s"]]
    assert text_ids("Mr.") == [ID[c] for c in "mister"]
    assert text_ids("2") == [ID[c] for c in "two"]
    assert text_ids("10") == [ID[c] for c in "ten"]
    assert SPACE in text_ids("twenty-one") or text_ids("21").count(SPACE) == 1
    assert text_ids("...") == []


def constructed(T, spans):
    """Log-posteriors (T, V): blank everywhere except ``spans``, {(first, end): character}."""
    p = np.full((T, VOCAB_SIZE), 1e-4)
    p[:, BLANK] = 1.0
    for (a, b), c in spans.items():
        p[a:b] = 1e-4
        p[a:b, ID[c] if c != " " else SPACE] = 1.0
    p /= p.sum(1, keepdims=True)
    return np.log(p).astype(np.float32)


class _Timer(WordTimer):
    """A timer whose log-posteriors are given, not computed by a head."""

    def __init__(self):
        super().__init__(CTCHead(8, VOCAB_SIZE, hidden=4, dropout=0.0), "x")


def test_alignment_finds_the_constructed_frames():
    # "a" at frames 20-22, then "cat" c 30-32, a 33-35, t 36-39; a 12-frame chunk, a lead-in of one chunk
    lp = constructed(72, {(20, 23): "a", (26, 27): " ", (30, 33): "c", (33, 36): "a", (36, 40): "t"})
    track = FrameTrack(_Timer(), frames_per_chunk=12, lead_chunks=1, frame_s=0.02)
    track._lp = lp
    assert track.word_times("A", first_chunk=1, last_chunk=1, next_text="c") == (round(8 * 0.02, 3), round(11 * 0.02, 3))
    # the decoder put "cat" in chunk 2 and 3; its frames say 30..40, i.e. 18..28 after the 12 lead-in frames
    assert track.word_times("cat", first_chunk=2, last_chunk=3, next_text="") == (0.36, 0.56)


def test_alignment_looks_no_further_than_it_is_told():
    lp = constructed(60, {(10, 13): "h", (13, 16): "i", (40, 44): "h", (44, 46): "i"})
    track = FrameTrack(_Timer(), frames_per_chunk=12, frame_s=0.02)
    track._lp = lp
    assert track.word_times("hi", 0, 0, upto_chunk=1) == (0.2, 0.32)  # the later "hi" is past chunk 1


def test_a_word_with_no_letters_or_no_frames_has_no_fine_times():
    track = FrameTrack(_Timer(), frames_per_chunk=12, frame_s=0.02)
    track._lp = constructed(24, {})
    assert track.word_times("...", 0, 1) is None
    assert track.word_times("abcdefghijklmnopqrstuvwxyz" * 2, 0, 1) is None  # 52 letters, 24 frames


def test_the_head_sees_the_frames_the_engine_pushes():
    timer = WordTimer(CTCHead(16, VOCAB_SIZE, hidden=8, dropout=0.0), "x")
    track = timer.track(frames_per_chunk=4, frame_s=0.02)
    frames = torch.randn(10, 16)
    track.push(frames[:6])
    track.push(frames[6:])
    assert track.n_frames == 10
    np.testing.assert_allclose(track._lp, timer.log_probs(frames), atol=1e-5)


# -- the file ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    tok = placeholder_tokenizer(64)
    return tiny_model(tok.vocab_size).eval(), tok


def timer_for(model, seed=0):
    torch.manual_seed(seed)
    head = CTCHead(model.encoder.out_dim, VOCAB_SIZE, hidden=16, dropout=0.0)
    for p in head.parameters():  # a confident head: letters somewhere, blank elsewhere
        p.data.normal_(0, 2.0)
    return WordTimer(head, encoder_fingerprint(model.encoder), start_offset_s=0.01, end_offset_s=-0.01)


def test_the_file_loads_back_as_fp16_with_its_checksum(tiny, tmp_path):
    model, _ = tiny
    timer = timer_for(model)
    path = timer.save(tmp_path / FILE_NAME)
    assert path.with_name(FILE_NAME + ".sha256").is_file()
    back = WordTimer.load(path)
    assert back.fingerprint == timer.fingerprint and back.start_offset_s == 0.01 and back.end_offset_s == -0.01
    for q in timer.head.parameters():  # the file holds fp16 weights
        q.data = q.data.half().float()
    frames = torch.randn(20, model.encoder.out_dim)
    np.testing.assert_allclose(back.log_probs(frames), timer.log_probs(frames), rtol=1e-5, atol=1e-4)
    assert find_word_timer(tmp_path / "any-model.safetensors", model.encoder) is not None


def test_a_corrupted_word_timer_is_a_one_line_error(tiny, tmp_path):
    model, _ = tiny
    path = timer_for(model).save(tmp_path / FILE_NAME)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError) as err:
        find_word_timer(tmp_path / "m.safetensors", model.encoder)
    assert "word-timer.safetensors" in str(err.value) and "\n" not in str(err.value)
    path.write_bytes(b"not a safetensors file")
    path.with_name(FILE_NAME + ".sha256").unlink()
    with pytest.raises(ModelError) as err:
        WordTimer.load(path)
    assert "word-timer.safetensors" in str(err.value) and "\n" not in str(err.value)


def test_another_encoder_or_no_file_keeps_chunk_times(tiny, tmp_path):
    model, _ = tiny
    other = tiny_model(64, seed=1)
    timer_for(other).save(tmp_path / FILE_NAME)
    assert find_word_timer(tmp_path / "m.safetensors", model.encoder) is None  # trained on other frames
    assert find_word_timer(tmp_path / "elsewhere" / "m.safetensors", model.encoder) is None  # no file


# -- the engine ----------------------------------------------------------------------------------


def on_grid(t, chunk=0.24):
    return abs(t / chunk - round(t / chunk)) < 1e-6


def transcribe(model, tok, timer, audio, blocks=None):
    rec = Recognizer(model, tok, DecodeOptions(max_tokens_per_chunk=3), word_timer=timer)
    s = rec.session()
    words, i = [], 0
    for n in blocks or [len(audio)]:
        words.extend(s.push(audio[i : i + n]).final)
        i += n
    words.extend(s.flush().final)
    return words


def test_engine_words_leave_the_chunk_grid_with_a_timer_only(tiny):
    model, tok = tiny
    audio = synthetic_audio(6.0, seed=3)
    coarse = transcribe(model, tok, None, audio)
    fine = transcribe(model, tok, timer_for(model), audio)
    assert coarse and [w.text for w in fine] == [w.text for w in coarse]
    assert [w.emit_s for w in fine] == [w.emit_s for w in coarse]
    assert all(on_grid(w.start_s) and on_grid(w.end_s) for w in coarse)
    assert sum(not on_grid(w.start_s) or not on_grid(w.end_s) for w in fine) >= len(fine) // 2
    assert all(w.start_s < w.end_s for w in fine)
    assert all(a.end_s <= b.start_s + 1e-9 for a, b in zip(fine, fine[1:]))  # words do not overlap


def test_engine_fine_times_do_not_depend_on_block_sizes(tiny):
    model, tok = tiny
    audio = synthetic_audio(5.0, seed=4)
    timer = timer_for(model)
    whole = transcribe(model, tok, timer, audio)
    rng = np.random.default_rng(0)
    blocks = list(rng.integers(100, 9000, 40))
    assert transcribe(model, tok, timer, audio, blocks) == whole


def test_recognizer_load_finds_the_timer_beside_the_model_in_every_precision(tmp_path):
    from reallm_cli.model.checkpoint import load_model, save_model

    tok = placeholder_tokenizer(64)
    path = tmp_path / "tiny.safetensors"
    save_model(path, tiny_model(tok.vocab_size, seed=4), tok)  # one that writes several words
    assert Recognizer.load(path, precision="fp32").word_timer is None  # no file: chunk times
    timer_for(load_model(path)[0]).save(tmp_path / FILE_NAME)  # fingerprinted as loaded (fp16 on disk)
    audio = synthetic_audio(4.0, seed=3)
    for precision in ("fp32", "int8"):
        rec = Recognizer.load(path, precision=precision)
        assert rec.word_timer is not None
        words = rec.transcribe_array(audio)
        assert words and not all(on_grid(w.start_s) and on_grid(w.end_s) for w in words)


# -- what users get ------------------------------------------------------------------------------


def _reallm(*args):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "reallm_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def timed_model(tmp_path_factory):
    """A tiny model file with a word timer beside it, and a copy in another folder without one."""
    from reallm_cli.model.checkpoint import load_model, save_model

    tok = placeholder_tokenizer(64)
    folder = tmp_path_factory.mktemp("timed")
    path = folder / "tiny.safetensors"
    save_model(path, tiny_model(tok.vocab_size, seed=1), tok)  # one that writes many words: several segments
    timer_for(load_model(path)[0]).save(folder / FILE_NAME)
    bare = tmp_path_factory.mktemp("bare") / "tiny.safetensors"
    bare.write_bytes(path.read_bytes())
    return path, bare


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    import wave

    audio = synthetic_audio(6.0, seed=3)
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _cue_times(text):
    import re

    return [int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000
            for h, m, s, ms in re.findall(r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d)", text)]


def test_json_srt_vtt_carry_the_finer_times(timed_model, wav):
    import json

    timed, bare = timed_model
    fine = json.loads(_reallm("transcribe", wav, "-m", timed, "-f", "json").stdout)
    coarse = json.loads(_reallm("transcribe", wav, "-m", bare, "-f", "json").stdout)
    fw = [w for s in fine["segments"] for w in s["words"]]
    cw = [w for s in coarse["segments"] for w in s["words"]]
    assert cw and [w["text"] for w in fw] == [w["text"] for w in cw]
    assert all(on_grid(w["start_s"]) and on_grid(w["end_s"]) for w in cw)
    assert any(not on_grid(w["start_s"]) or not on_grid(w["end_s"]) for w in fw)
    for fmt in ("srt", "vtt"):
        times = _cue_times(_reallm("transcribe", wav, "-m", timed, "-f", fmt).stdout)
        segs = fine["segments"]
        assert times and times[0] == pytest.approx(segs[0]["start_s"], abs=1e-3)
        assert any(not on_grid(t) for t in times)
        assert all(on_grid(t) for t in _cue_times(_reallm("transcribe", wav, "-m", bare, "-f", fmt).stdout)
                   if t not in {s["start_s"] + 0.2 for s in coarse["segments"]})


def test_a_damaged_word_timer_stops_transcribe_with_one_line(timed_model, wav, tmp_path):
    timed, _ = timed_model
    folder = tmp_path / "m"
    folder.mkdir()
    model = folder / timed.name
    model.write_bytes(timed.read_bytes())
    data = bytearray((timed.parent / FILE_NAME).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / FILE_NAME).write_bytes(bytes(data))
    (folder / (FILE_NAME + ".sha256")).write_bytes((timed.parent / (FILE_NAME + ".sha256")).read_bytes())
    r = _reallm("transcribe", wav, "-m", model)
    assert r.returncode != 0 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "word-timer.safetensors" in r.stderr, r.stderr


def test_the_recipe_trains_a_timer_that_the_engine_loads(tmp_path):
    """recipes/default/word_timer.py train on a small cache of (random) frames in the feature-cache layout."""
    import json
    import subprocess
    import sys

    from conftest import RECIPE
    from reallm_cli.model.checkpoint import load_model, save_model

    tok = placeholder_tokenizer(64)
    model_path = tmp_path / "model.safetensors"
    save_model(model_path, tiny_model(tok.vocab_size), tok)
    cache = tmp_path / "feats" / "c240_rcmix_hop480" / "train_rc720"
    cache.mkdir(parents=True)
    rng = np.random.default_rng(0)
    texts = ["we call it bear", "look at ann's pants", "three two two seven", "he hates shooting"] * 3
    lens = [int(n) for n in rng.integers(60, 120, len(texts))]
    np.save(cache / "shard_00000.npy", rng.standard_normal((sum(lens), 64)).astype(np.float16))
    offsets = np.cumsum([0] + lens[:-1])
    (cache / "shard_00000.jsonl").write_text("".join(json.dumps(
        {"id": f"u{i}", "text": t, "duration": n * 0.02, "offset": int(o), "n_frames": n}) + "\n"
        for i, (t, n, o) in enumerate(zip(texts, lens, offsets))))
    out = tmp_path / "word-timer.safetensors"
    r = subprocess.run([sys.executable, str(RECIPE / "word_timer.py"), "train", "--feats", str(cache.parent),
                        "--model", str(model_path), "--out", str(out), "--steps", "3", "--hidden", "8",
                        "--log-every", "3"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "step 3/3" in r.stdout and out.is_file() and (tmp_path / (FILE_NAME + ".sha256")).is_file()
    timer = find_word_timer(model_path, load_model(model_path)[0].encoder)
    assert timer is not None and timer.extra["train_utterances"] == len(texts) - 1  # one held out


def test_the_shipped_timer_times_jfk_within_the_goal(shared_data):
    """The embedded model finds weights/word-timer.safetensors beside it; on jfk.flac its words' starts
    and ends are off the chunk grid and near offline Whisper base's word times (the dev-real reference)."""
    import json

    from conftest import RECIPE
    from reallm_cli.evaluate import word_time_errors
    from reallm_cli.transcribe import transcribe_file

    rec = Recognizer.load(None, precision="fp32")
    assert rec.word_timer is not None
    refs = {}
    for line in (RECIPE / "ref_word_times" / "dev-real.jsonl").read_text().splitlines():
        r = json.loads(line)
        refs[r["id"]] = r["words"]
    words = transcribe_file(rec, str(shared_data / "dev-real" / "jfk.flac")).words
    err = np.abs(np.array(word_time_errors(refs["jfk"][1:], words)))  # its first word: see word_timer.py
    assert len(err) >= 15
    assert np.median(err[:, 0]) <= 0.08 and np.median(err[:, 1]) <= 0.08, np.median(err, 0)
    assert sum(not on_grid(w.start_s) for w in words) >= len(words) // 2

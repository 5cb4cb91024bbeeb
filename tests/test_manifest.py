import json

import numpy as np
import pytest
import soundfile as sf

from reallm_cli.train.manifest import ManifestEntry, ManifestError, read_manifest, write_manifest


def _wav(path, seconds=1.0, sr=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, 0.1 * np.sin(2 * np.pi * 220 * t), sr)
    return path


def _write_lines(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


@pytest.fixture
def data(tmp_path):
    _wav(tmp_path / "audio" / "a.wav")
    _wav(tmp_path / "audio" / "b.wav")
    return tmp_path


def _bad_manifest(data):
    return _write_lines(
        data / "m.jsonl",
        [
            {"audio": "audio/a.wav", "text": "hello world", "duration": 1.0},  # 1 good
            '{"audio": "audio/a.wav", "text": "oops"',  # 2 invalid JSON
            {"audio": "audio/a.wav", "duration": 1.0},  # 3 no text
            {"audio": "audio/missing.wav", "text": "hi there", "duration": 1.0},  # 4 no audio file
            {"audio": "audio/b.wav", "text": "1 2 3 ...", "duration": 1.0},  # 5 no letters
            {"audio": "audio/b.wav", "text": "a" * 80, "duration": 1.0},  # 6 too long
            {"audio": "audio/b.wav", "text": "fine text", "duration": -2},  # 7 bad duration
            {"id": "audio/a", "audio": "audio/b.wav", "text": "dup", "duration": 1.0},  # 8 duplicate id
            "",  # blank lines are ignored
            {"id": "b2", "audio": "audio/b.wav", "text": "good again", "duration": 1.0},  # 10 good
        ],
    )


def test_skip_keeps_good_lines_and_names_each_problem(data):
    m = read_manifest(_bad_manifest(data), on_error="skip")
    assert [e.id for e in m] == ["audio/a", "b2"]
    assert m[0].audio == (data / "audio" / "a.wav").resolve()
    assert m[0].duration_s == 1.0 and m.total_duration_s == 2.0
    by_line = {p.line_no: p.message for p in m.problems}
    assert sorted(by_line) == [2, 3, 4, 5, 6, 7, 8]
    assert "invalid JSON" in by_line[2]
    assert "missing field 'text'" in by_line[3]
    assert "audio file not found" in by_line[4]
    assert "no letters" in by_line[5]
    assert "too long for its audio" in by_line[6]
    assert "duration" in by_line[7]
    assert "duplicate id" in by_line[8] and "line 1" in by_line[8]
    assert str(m.problems[0]).endswith("m.jsonl:2: " + by_line[2])


def test_refuse_raises_on_the_first_problem(data):
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: invalid JSON"):
        read_manifest(_bad_manifest(data), on_error="refuse")
    good = _write_lines(data / "ok.jsonl", [{"audio": "audio/a.wav", "text": "hello", "duration": 1.0}])
    assert len(read_manifest(good, on_error="refuse")) == 1


def test_token_count_check(data):
    path = _write_lines(data / "t.jsonl", [{"audio": "audio/a.wav", "text": "ab cd ef", "duration": 0.48}])
    # 0.48 s is two 240 ms chunks; one token a character gives 8 tokens > 2 * 3 allowed
    with pytest.raises(ManifestError, match="8 tokens for 2 chunks"):
        read_manifest(path, on_error="refuse", count_tokens=len, max_tokens_per_chunk=3)
    assert len(read_manifest(path, on_error="refuse", count_tokens=len)) == 1  # default 6 a chunk
    assert len(read_manifest(path, on_error="refuse", count_tokens=lambda t: len(t.split()), max_tokens_per_chunk=3)) == 1


def test_empty_and_unusable_manifests_are_refused(data):
    empty = data / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ManifestError, match="empty"):
        read_manifest(empty)
    bad = _write_lines(data / "bad.jsonl", ["[1, 2]"])
    with pytest.raises(ManifestError, match="none of its 1 lines.*JSON object"):
        read_manifest(bad, on_error="skip")
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(data / "nope.jsonl")


def test_write_then_read_round_trip_with_relative_paths(data, tmp_path_factory, monkeypatch):
    entries = [
        ManifestEntry(audio=(data / "audio" / "a.wav").resolve(), text="hello there", duration_s=1.0, id="x"),
        ManifestEntry(audio=(data / "audio" / "b.wav").resolve(), text="general kenobi", duration_s=1.0, id="y"),
    ]
    path = data / "round.jsonl"
    assert write_manifest(path, entries) == 2
    assert json.loads(path.read_text().splitlines()[0])["audio"] == "audio/a.wav"
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # relative paths follow the manifest, not the cwd
    assert read_manifest(path, on_error="refuse").entries == tuple(entries)


def test_probe_duration_for_lines_without_one(data):
    path = _write_lines(data / "p.jsonl", [{"audio": "audio/a.wav", "text": "hello"},
                                            {"audio": "audio/gone.wav", "text": "hello"}])
    with pytest.raises(ManifestError, match=":1: missing field 'duration'"):
        read_manifest(path, on_error="refuse")
    m = read_manifest(path, probe_duration=True)
    assert [e.duration_s for e in m] == [1.0]
    assert "audio file not found" in m.problems[0].message and m.problems[0].line_no == 2


def test_dev_real_manifest_reads_with_probed_durations():
    shared = __import__("pathlib").Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dev-real"
    if not (shared / "manifest.jsonl").is_file():
        pytest.skip(f"shared dev data not found at {shared}")
    m = read_manifest(shared / "manifest.jsonl", on_error="refuse", probe_duration=True)
    assert len(m) > 100 and all(0.1 < e.duration_s < 60 for e in m)
    assert any(e.audio.suffix == ".wav" for e in m)  # the 8 kHz digits are in it too

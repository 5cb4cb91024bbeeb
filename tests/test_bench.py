"""`reallm bench`: the shipped speech sample, what it reports, and --streams. No timed assertions."""

import json
import shutil
import subprocess
import sys

import pytest

from reallm_cli.bench import _EmissionClock, known_reference, word_error_rate
from reallm_cli.results import Event, Word
from reallm_cli.samples import sample


def reallm(*args):
    return subprocess.run([sys.executable, "-m", "reallm_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def _json(*args):
    r = reallm(*args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def sample_result():
    return _json("bench", "--json", "--threads", "1")


def test_the_sample_ships_with_its_reference():
    jfk = sample()
    assert jfk.audio.is_file() and jfk.audio.suffix == ".flac"
    assert jfk.text.startswith("And so, my fellow Americans")
    assert len(jfk.words) == len(jfk.text.split())
    assert all(w["start_s"] <= w["end_s"] <= 11.0 for w in jfk.words)


def test_bench_json_on_the_sample_holds_every_figure(sample_result):
    r = sample_result
    assert r["audio"] == "sample:jfk" and r["chunk_ms"] == 240 and r["model_chunk_ms"] == 240
    assert r["audio_s"] == pytest.approx(11.0, abs=0.05)
    assert 0 <= r["wer"] < 0.5  # the default model gets jfk nearly right
    assert r["rtf"] > 0 and r["compute_s"] > 0
    assert 0 < r["chunk_p50_ms"] <= r["chunk_p95_ms"] <= r["chunk_p99_ms"] <= r["chunk_max_ms"]
    assert r["delay_words"] >= 10 and 0 < r["delay_p50_s"] <= r["delay_p95_s"] < 5
    assert 0 < r["first_word_s"] < 5  # "And so" is said in the first second
    assert r["load_s"] > 0 and r["peak_rss_mb"] > 50 and r["threads"] == 1
    assert r["reference"] == sample().text and "fellow" in r["text"]


def test_bench_wer_is_the_wer_of_eval_and_of_the_transcript(sample_result, tmp_path):
    jfk = sample()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "jfk", "audio": str(jfk.audio), "text": jfk.text}) + "\n")
    r = reallm("eval", manifest, "--json", tmp_path / "r.json", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["wer"] == sample_result["wer"]
    words = [Word(t, 0, 0, 0) for t in sample_result["text"].split()]
    assert round(word_error_rate(jfk.text, words), 4) == sample_result["wer"]


def test_a_file_with_a_known_reference_is_scored(tmp_path):
    copy = tmp_path / "speech.flac"
    shutil.copy(sample().audio, copy)
    assert known_reference(copy).text == sample().text
    (tmp_path / "manifest.jsonl").write_text(json.dumps({"audio": "other.flac", "text": "x"}) + "\n")
    other = tmp_path / "other.flac"
    shutil.copy(sample().audio, other)
    other.write_bytes(other.read_bytes() + b"\0")  # not the sample's bytes any more: the manifest names it
    assert known_reference(other).text == "x" and known_reference(other).words is None
    assert known_reference(tmp_path / "nothing.wav") is None


def test_bench_file_without_reference_has_no_wer(shared_data):
    r = _json("bench", "--json", "--threads", "1", "--file", shared_data / "dev-real" / "fsdd" / "0_george_0.wav",
              "--precision", "fp32")
    assert r["precision"] == "fp32" and r["audio_s"] < 2
    assert r["reference"] is not None and r["wer"] is not None  # listed in dev-real/manifest.jsonl: known
    r = _json("bench", "--json", "--threads", "1", "--file", sample().audio, "--duration", "3")
    assert r["wer"] is None and r["audio_s"] == pytest.approx(3.0)  # only part streamed: no reference applies


def test_streams_reports_each_stream():
    r = _json("bench", "--json", "--threads", "1", "--streams", "2", "--duration", "6")
    assert r["streams"] == 2 and [s["stream"] for s in r["per_stream"]] == [1, 2]
    assert all(s["rtf"] > 0 and s["chunk_p99_ms"] >= s["chunk_p50_ms"] > 0 and s["words"] > 0 for s in r["per_stream"])
    assert isinstance(r["kept_real_time"], bool) and r["max_lag_s"] >= 0
    assert r["round_p99_ms"] >= r["round_p50_ms"] > 0 and r["aggregate_rtf"] > 0


@pytest.mark.parametrize("args, says", [
    (["--file", "/nonexistent.wav"], "not found"),
    (["--reference", "ask not"], "--reference goes with --file"),
    (["--streams", "0"], "--streams"),
])
def test_bad_input_is_one_line(args, says):
    r = reallm("bench", *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and says in r.stderr


def test_emission_clock_stamps_when_a_word_was_whole_on_screen():
    w = lambda t: Word(t, 0.0, 0.0, 0.0)  # noqa: E731
    clock = _EmissionClock()
    clock.event(Event(partial="", audio_s=0.24))
    clock.event(Event(partial="ask", audio_s=0.48))  # first text
    clock.event(Event(partial="ask", audio_s=0.72))
    clock.event(Event(final=(w("ask"),), partial="no", audio_s=0.96))  # "ask" was whole since 0.48
    clock.event(Event(final=(w("not"),), partial="", audio_s=1.2))  # grew from "no" in this push: now
    clock.event(Event(final=(w("what"), w("your")), partial="", audio_s=1.44))
    assert clock.first_s == 0.48
    assert [(x.text, at) for x, at in clock.stamped] == [("ask", 0.48), ("not", 1.2), ("what", 1.44), ("your", 1.44)]
    delays = clock.delays([{"word": "ask", "end_s": 0.4}, {"word": "not", "end_s": 1.0}])
    assert delays == pytest.approx([0.08, 0.2])

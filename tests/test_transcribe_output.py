"""`reallm transcribe` output users can trust: nothing overwritten, every file told apart on stdout,
segments written as they become final (a killed run keeps them), damaged input transcribed as far as it decodes."""

import json
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import start_reallm, wait_for_lines


def reallm(*args, **kw):
    return subprocess.run([sys.executable, "-m", "reallm_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kw)


@pytest.fixture
def two_x(shared_data, tmp_path):
    """Two inputs that share a base name: a/x.flac and b/x.wav."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(shared_data / "dev-real" / "jfk.flac", tmp_path / "a" / "x.flac")
    shutil.copy(shared_data / "dev-real" / "fsdd" / "0_george_0.wav", tmp_path / "b" / "x.wav")
    return tmp_path / "a" / "x.flac", tmp_path / "b" / "x.wav"


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    """jfk.flac 20 times over (220 s), made with sox; never committed."""
    from conftest import DATA

    if not (DATA / "dev-real").exists() or shutil.which("sox") is None:
        pytest.skip("needs the shared speech data and sox")
    folder = tmp_path_factory.mktemp("long")
    one = folder / "one.wav"
    subprocess.run(["sox", str(DATA / "dev-real" / "jfk.flac"), "-r", "16000", str(one)], check=True)
    out = folder / "long.wav"
    subprocess.run(["sox", *[str(one)] * 20, str(out)], check=True)
    return out


def test_same_basename_in_two_folders_keeps_both(model_file, two_x, tmp_path):
    out = tmp_path / "out"
    r = reallm("transcribe", *two_x, "--model", model_file, "-o", out)
    assert r.returncode == 0, r.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.txt")) == ["a/x.txt", "b/x.txt"]
    assert not list(out.rglob("*.partial"))


def test_one_input_twice_is_refused_before_any_work(model_file, two_x, tmp_path):
    out = tmp_path / "out"
    r = reallm("transcribe", two_x[0], two_x[0], "--model", model_file, "-o", out)
    assert r.returncode == 2 and r.stderr.startswith("reallm: error:") and len(r.stderr.splitlines()) == 1
    assert not list(out.rglob("*"))


def test_existing_transcript_is_skipped_unless_overwrite(model_file, two_x, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "x.txt").write_text("keep me\n")
    r = reallm("transcribe", two_x[0], "--model", model_file, "-o", out)
    assert r.returncode == 0 and (out / "x.txt").read_text() == "keep me\n"
    assert "skipped" in r.stderr and "x.txt" in r.stderr
    r = reallm("transcribe", two_x[0], "--model", model_file, "-o", out, "--overwrite")
    assert r.returncode == 0 and (out / "x.txt").read_text() != "keep me\n"


def test_multi_file_stdout_parses_back_per_file(model_file, two_x):
    names = [str(p) for p in two_x]
    r = reallm("transcribe", *two_x, "--model", model_file, "-f", "jsonl")
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and records
    assert all("file" in rec for rec in records)
    ends = [rec for rec in records if rec["type"] == "end"]
    assert [e["file"] for e in ends] == names
    assert ends[0]["duration_s"] == pytest.approx(11.0, abs=0.1)
    r = reallm("transcribe", *two_x, "--model", model_file, "-f", "json")
    docs = json.loads(r.stdout)  # one document: an array of one object per file
    assert [d["file"] for d in docs] == names and docs[0]["duration_s"] == pytest.approx(11.0, abs=0.1)
    one = json.loads(reallm("transcribe", two_x[0], "--model", model_file, "-f", "json").stdout)
    assert one["file"] == names[0] and isinstance(one["segments"], list)
    for fmt in ("txt", "srt", "vtt"):
        many = reallm("transcribe", *two_x, "--model", model_file, "-f", fmt).stdout
        assert [line for line in many.splitlines() if line.startswith("==> ")] == [f"==> {n} <==" for n in names]
    single = reallm("transcribe", two_x[0], "--model", model_file, "-f", "srt").stdout
    assert "==> " not in single and single.startswith("1\n")  # one file: a plain srt


# The kill tests run the embedded model on real speech: a random tiny model emits too few words to close
# segments along the way.
def test_sigkill_part_way_keeps_what_was_final(long_file, tmp_path):
    out = tmp_path / "out"
    piped = tmp_path / "stdout.jsonl"
    with open(piped, "w") as f:
        to_pipe = start_reallm(["transcribe", long_file, "-f", "jsonl"], f)
        to_dir = start_reallm(["transcribe", long_file, "-f", "jsonl", "-o", out], subprocess.DEVNULL)
        partial = out / "long.jsonl.partial"
        try:
            # Segments must arrive while the file is still being read, not all at its end.
            assert wait_for_lines(piped, 4, to_pipe), "no output before the run ended"
            assert wait_for_lines(partial, 4, to_dir), "no partial file before the run ended"
        finally:
            for p in (to_pipe, to_dir):
                p.send_signal(signal.SIGKILL)
                p.wait()
    for text in (piped.read_text(), partial.read_text()):
        lines = text.splitlines()
        assert len(lines) >= 4 and text.endswith("\n"), "a killed run keeps every line it wrote, whole"
        records = [json.loads(line) for line in lines]
        assert {r["type"] for r in records} == {"final", "segment"}  # no "end": it stopped part-way
        assert max(r["end_s"] for r in records if r["type"] == "segment") < 200  # killed part-way through 220 s
    assert not (out / "long.jsonl").exists()  # only a finished transcript gets the final name


def test_ctrl_c_exits_130_and_keeps_what_was_done(long_file, tmp_path):
    out = tmp_path / "out"
    stdout = tmp_path / "stdout.json"
    with open(stdout, "w") as f:
        to_stdout = start_reallm(["transcribe", long_file, "-f", "json"], f)
        to_dir = start_reallm(["transcribe", long_file, "-o", out], subprocess.DEVNULL)
        assert wait_for_lines(stdout, 4, to_stdout) and wait_for_lines(out / "long.txt.partial", 4, to_dir)
        for p in (to_stdout, to_dir):
            p.send_signal(signal.SIGINT)
        rcs = [p.wait(timeout=60) for p in (to_stdout, to_dir)]
        errs = [p.stderr.read() for p in (to_stdout, to_dir)]
    assert rcs == [130, 130], errs
    assert all(len(e.splitlines()) == 1 and "interrupted" in e and "Traceback" not in e for e in errs), errs
    doc = json.loads(stdout.read_text())  # still one valid document, closed where it stopped
    assert doc["segments"] and 0 < doc["duration_s"] < 200
    assert (out / "long.txt.partial").read_text().count("\n") >= 4 and str(out / "long.txt.partial") in errs[1]


def test_truncated_file_is_transcribed_as_far_as_it_decodes(model_file, shared_data, tmp_path):
    jfk = (shared_data / "dev-real" / "jfk.flac").read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(jfk[: len(jfk) * 6 // 10])
    r = reallm("transcribe", cut, "--model", model_file, "-f", "jsonl")
    assert r.returncode == 1
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("reallm: warning:") and "cut.flac" in r.stderr
    end = json.loads(r.stdout.splitlines()[-1])
    assert end["type"] == "end" and 5.0 < end["duration_s"] < 8.0  # ~60% of the 11 s decoded and transcribed
    r = reallm("transcribe", cut, "--model", model_file, "-o", tmp_path / "out")
    assert r.returncode == 1 and (tmp_path / "out" / "cut.txt").exists()

"""`reallm transcribe --jobs N`: the inputs spread over worker processes, with the output of one process
(byte for byte, input order) and every guarantee of a single run (no overwrite, per-file marks, damaged
and missing inputs, Ctrl-C)."""

import json
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import DATA, start_reallm, wait_for_lines


def reallm(*args, **kw):
    return subprocess.run([sys.executable, "-m", "reallm_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, **kw)


@pytest.fixture
def inputs(shared_data, tmp_path):
    """Five inputs of different lengths (a short one after a long one, so a later input ends first)."""
    real = shared_data / "dev-real"
    librivox = sorted((real / "librivox").glob("*.flac"))[:2]
    return [real / "jfk.flac", real / "fsdd" / "0_george_0.wav", *librivox, real / "fsdd" / "0_george_1.wav"]


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "json", "srt"])
def test_jobs_2_writes_what_jobs_1_writes(model_file, inputs, fmt):
    runs = [reallm("transcribe", *inputs, "--model", model_file, "--threads", "1", "-f", fmt, "--jobs", j)
            for j in ("1", "2")]
    assert [r.returncode for r in runs] == [0, 0], runs[1].stderr
    assert runs[0].stdout and runs[1].stdout == runs[0].stdout
    if fmt == "json":
        assert [d["file"] for d in json.loads(runs[1].stdout)] == [str(p) for p in inputs]


def test_jobs_output_dir_and_no_overwrite(model_file, inputs, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert reallm("transcribe", *inputs, "--model", model_file, "--threads", "1", "-o", one).returncode == 0
    r = reallm("transcribe", *inputs, "--model", model_file, "--threads", "1", "-o", two, "--jobs", "3")
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir()) and len(names) == len(inputs)
    assert all((one / n).read_bytes() == (two / n).read_bytes() for n in names)
    (two / "jfk.txt").write_text("keep me\n")
    r = reallm("transcribe", *inputs, "--model", model_file, "-o", two, "--jobs", "2")
    assert r.returncode == 0 and (two / "jfk.txt").read_text() == "keep me\n"
    assert r.stderr.count("skipped") == len(inputs)


def test_jobs_missing_and_damaged_inputs(model_file, shared_data, tmp_path):
    jfk = shared_data / "dev-real" / "jfk.flac"
    cut = tmp_path / "cut.flac"
    cut.write_bytes(jfk.read_bytes()[: jfk.stat().st_size * 6 // 10])
    files = [jfk, tmp_path / "missing.wav", cut, shared_data / "dev-real" / "fsdd" / "0_george_1.wav"]
    runs = [reallm("transcribe", *files, "--model", model_file, "--threads", "1", "-f", "jsonl", "--jobs", j)
            for j in ("1", "2")]
    assert [r.returncode for r in runs] == [1, 1]
    assert runs[1].stdout == runs[0].stdout and runs[1].stderr == runs[0].stderr  # the messages in input order too
    err = runs[1].stderr.splitlines()
    assert len(err) == 2 and "missing.wav" in err[0] and err[1].startswith("reallm: warning:") and "cut.flac" in err[1]
    ends = [json.loads(line) for line in runs[1].stdout.splitlines() if '"end"' in line]
    assert [e["file"] for e in ends] == [str(jfk), str(cut), str(files[3])]


def test_jobs_read_stdin(model_file, shared_data):
    jfk = shared_data / "dev-real" / "jfk.flac"
    zero = shared_data / "dev-real" / "fsdd" / "0_george_0.wav"
    runs = [subprocess.run([sys.executable, "-m", "reallm_cli", "transcribe", "-", str(zero), "--model", str(model_file),
                            "--threads", "1", "--jobs", j], input=jfk.read_bytes(), capture_output=True, timeout=600)
            for j in ("1", "2")]
    assert [r.returncode for r in runs] == [0, 0], runs[1].stderr
    assert runs[1].stdout == runs[0].stdout and runs[1].stdout.startswith(b"==> - <==\n")


def test_jobs_bad_model_is_one_line(shared_data, tmp_path):
    bad = tmp_path / "m.safetensors"
    bad.write_text("hello")
    zero = shared_data / "dev-real" / "fsdd" / "0_george_0.wav"
    r = reallm("transcribe", zero, zero.with_name("0_george_1.wav"), "--model", bad, "--jobs", "2")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "model" in r.stderr


@pytest.fixture(scope="module")
def long_files(tmp_path_factory):
    """Two copies of jfk.flac 20 times over (220 s), made with sox; never committed."""
    if not (DATA / "dev-real").exists() or shutil.which("sox") is None:
        pytest.skip("needs the shared speech data and sox")
    folder = tmp_path_factory.mktemp("long")
    one = folder / "one.wav"
    subprocess.run(["sox", str(DATA / "dev-real" / "jfk.flac"), "-r", "16000", str(one)], check=True)
    subprocess.run(["sox", *[str(one)] * 20, str(folder / "a.wav")], check=True)
    shutil.copy(folder / "a.wav", folder / "b.wav")
    return [folder / "a.wav", folder / "b.wav"]


# the embedded model on real speech: a random tiny model closes too few segments along the way
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_jobs_ctrl_c_exits_130_and_keeps_what_was_done(long_files, tmp_path, signum):
    stdout = tmp_path / "stdout.json"
    with open(stdout, "w") as f:
        p = start_reallm(["transcribe", *long_files, "-f", "json", "--jobs", "2"], f)
        assert wait_for_lines(stdout, 4, p, timeout_s=240)
        p.send_signal(signum)
        rc = p.wait(timeout=60)
        err = p.stderr.read()
    assert rc == 130 and len(err.splitlines()) == 1 and "interrupted" in err and "Traceback" not in err, err
    docs = json.loads(stdout.read_text())  # one valid array of documents, each closed where it stopped
    assert [d["file"] for d in docs] == [str(f) for f in long_files][: len(docs)]
    assert docs[0]["segments"] and 0 < docs[0]["duration_s"] < 200

"""`reallm data / train / align` on bad input: named lines, skipped or refused, one-line errors, no crash."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from reallm_cli.cli.app import app
from reallm_cli.errors import ReallmError
from reallm_cli.tokenizer import train_tokenizer

WORDS = "red green blue cat dog house runs sleeps jumps".split()


def run(*args):
    """Invoke the CLI in-process; ``main`` prints a ReallmError as one line, so that is what must come out."""
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0
    assert isinstance(result.exception, ReallmError), repr(result.exception)
    message = str(result.exception)
    assert "\n" not in message
    for f in fragments:
        assert f in message, message


@pytest.fixture
def data(tmp_path):
    """Two good utterances (noise is enough for a few steps), a tokenizer, and a helper to write manifests."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        sf.write(tmp_path / f"{name}.wav", (0.1 * rng.standard_normal(24000)).astype("float32"), 16000)
    (tmp_path / "junk.wav").write_bytes(b"RIFF but not really a wave file")
    good = [{"audio": "a.wav", "text": "red cat runs", "duration": 1.5},
            {"audio": "b.wav", "text": "Blue dog sleeps!", "duration": 1.5}]
    tok = tmp_path / "tok.model"
    tok.write_bytes(train_tokenizer([" ".join(WORDS)] * 10, 24).model_proto)

    def manifest(*extra: dict | str, name="m.jsonl"):
        lines = [json.dumps(d) if isinstance(d, dict) else d for d in [*good, *extra]]
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        return path

    return tmp_path, tok, manifest


BAD_LINES = (
    {"audio": "gone.wav", "text": "red cat", "duration": 1.0},  # line 3: missing audio
    {"audio": "a.wav", "text": "123 ... !!", "duration": 1.5},  # line 4: no letters
    {"audio": "b.wav", "text": "red cat runs " * 20, "duration": 1.5},  # line 5: far too long for 1.5 s
    "{not json",  # line 6
    {"audio": "junk.wav", "text": "red cat", "duration": 1.0},  # line 7: not audio
    {"id": "long", "audio": "a.wav", "text": "red cat", "duration": 9.0},  # line 8: a.wav lasts 1.5 s
)


def test_empty_manifest_is_refused(data):
    tmp, tok, _ = data
    (tmp / "empty.jsonl").write_text("")
    assert_one_line_error(run("train", "tokenizer", "--manifest", tmp / "empty.jsonl", "--vocab", "16", "-o", tmp / "t.model"), "empty")
    assert_one_line_error(run("train", "teacher", "--manifest", tmp / "empty.jsonl", "--tokenizer", tok, "-o", tmp / "t.pt"), "empty")
    assert not (tmp / "t.model").exists()


def test_bad_lines_are_skipped_with_line_numbers(data):
    tmp, tok, manifest = data
    m = manifest(*BAD_LINES)
    r = run("train", "teacher", "--manifest", m, "--tokenizer", tok, "-o", tmp / "t.pt", "--preset", "tiny",
            "--steps", "2", "--max-batch-s", "4", "--threads", "1", "--no-progress")
    assert r.exit_code == 0, r.output
    for line_no, what in ((3, "not found"), (4, "no letters"), (5, "too long"), (6, "invalid JSON"), (7, "unreadable"),
                          (8, "lasts 1.50 s")):
        assert f"m.jsonl:{line_no}: " in r.output and what in r.output, (line_no, r.output)
    assert "skipped 6 lines" in r.output
    assert (tmp / "t.pt").is_file()


@pytest.mark.parametrize("bad_index,line_no,fragment", [(0, 3, "not found"), (1, 3, "no letters"), (2, 3, "too long"),
                                                        (4, 3, "unreadable")])
def test_refuse_stops_at_the_first_bad_line(data, bad_index, line_no, fragment):
    tmp, tok, manifest = data
    m = manifest(BAD_LINES[bad_index])
    r = run("train", "teacher", "--manifest", m, "--tokenizer", tok, "-o", tmp / "t.pt", "--preset", "tiny",
            "--steps", "2", "--on-error", "refuse")
    assert_one_line_error(r, f"m.jsonl:{line_no}:", fragment)
    assert not (tmp / "t.pt").exists()


def test_wrong_files_and_options_give_one_line(data):
    tmp, tok, manifest = data
    m = manifest()
    assert_one_line_error(run("train", "teacher", "--manifest", m, "--tokenizer", tmp / "nope.model", "-o", tmp / "t.pt"), "no such tokenizer")
    assert_one_line_error(run("train", "teacher", "--manifest", m, "--tokenizer", m, "-o", tmp / "t.pt"), "not a reallm tokenizer")
    assert_one_line_error(run("train", "teacher", "--manifest", m, "--tokenizer", tok, "-o", tmp / "t.pt", "--preset", "huge"), "unknown preset")
    # A value outside the choices is the option parser's error, in the same one-line voice.
    bad = subprocess.run([sys.executable, "-m", "reallm_cli", "train", "teacher", "--manifest", str(m), "--tokenizer", str(tok),
                          "-o", str(tmp / "t.pt"), "--on-error", "maybe"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("reallm: error:") and "--on-error" in bad.stderr
    assert len(bad.stderr.splitlines()) == 1
    assert_one_line_error(run("align", "--manifest", m, "--teacher", tok, "-o", tmp / "a.jsonl"), "not a reallm CTC teacher")
    assert_one_line_error(run("align", "--manifest", m, "--teacher", tmp / "none.pt", "-o", tmp / "a.jsonl"), "not found")
    assert_one_line_error(run("data", "folder", tmp / "nowhere", "-o", tmp / "x.jsonl"), "not a folder")
    assert_one_line_error(run("data", "librispeech", tmp, "-o", tmp / "x.jsonl"), "trans.txt")


def test_alignments_and_checkpoints_from_other_runs_are_refused(data):
    tmp, tok, manifest = data
    m = manifest()
    common = ["--preset", "tiny", "--steps", "2", "--max-batch-s", "4", "--threads", "1", "--no-progress"]
    assert run("train", "teacher", "--manifest", m, "--tokenizer", tok, "-o", tmp / "t.pt", *common).exit_code == 0
    r = run("align", "--manifest", m, "--teacher", tmp / "t.pt", "-o", tmp / "a.jsonl")
    assert r.exit_code == 0, r.output
    assert "2 utterances" in r.output
    # Alignments made with another tokenizer do not match the transcripts' pieces.
    other = tmp / "other.model"
    other.write_bytes(train_tokenizer(["a b c d e f g h i j k l m n o p q r s t u v w x y z"] * 10, 30).model_proto)
    r = run("train", "reallm", "--manifest", m, "--alignments", tmp / "a.jsonl", "--tokenizer", other, "-o", tmp / "m.st", *common)
    assert_one_line_error(r, "another tokenizer")
    # An alignment file that is not one.
    r = run("train", "reallm", "--manifest", m, "--alignments", m, "--tokenizer", tok, "-o", tmp / "m.st", *common)
    assert_one_line_error(r, "m.jsonl:1")
    # A teacher of another size cannot start this preset's encoder.
    r = run("train", "reallm", "--manifest", m, "--alignments", tmp / "a.jsonl", "--tokenizer", tok, "-o", tmp / "m.st",
            "--init-encoder", tmp / "t.pt", "--preset", "small", "--steps", "1", "--threads", "1")
    assert_one_line_error(r, "preset")
    # The teacher's checkpoint belongs to another run than a teacher with another tokenizer.
    r = run("train", "teacher", "--manifest", m, "--tokenizer", other, "-o", tmp / "t.pt", *common)
    assert_one_line_error(r, "different run", "--no-resume")
    r = run("train", "teacher", "--manifest", m, "--tokenizer", other, "-o", tmp / "t.pt", *common, "--no-resume")
    assert r.exit_code == 0, r.output
    # The ReaLLM stage runs, and its file is a model.
    r = run("train", "reallm", "--manifest", m, "--alignments", tmp / "a.jsonl", "--tokenizer", tok, "-o", tmp / "m.st",
            "--init-encoder", tmp / "t.pt", *common)
    assert r.exit_code == 0, r.output


def test_data_folder_import_reports_skips(data):
    tmp, _, _ = data
    (tmp / "a.txt").write_text("red cat runs\n")  # b.wav has no transcript
    r = run("data", "folder", tmp, "-o", tmp / "out" / "folder.jsonl")
    assert r.exit_code == 0, r.output
    assert "skipped" in r.output and "b.wav" in r.output
    rows = [json.loads(x) for x in (tmp / "out" / "folder.jsonl").read_text().splitlines()]
    assert [row["text"] for row in rows] == ["red cat runs"]


def test_real_process_prints_one_line_and_exits_non_zero(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    r = subprocess.run([sys.executable, "-m", "reallm_cli", "train", "tokenizer", "--manifest", str(tmp_path / "empty.jsonl"),
                        "-o", str(tmp_path / "t.model")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("reallm: error:"), r.stderr
    assert "Traceback" not in r.stderr

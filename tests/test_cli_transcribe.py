"""`reallm transcribe` and `reallm eval` on real audio files, and their answers to bad input."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import tiny_model
from reallm_cli.model.checkpoint import load_model


def reallm(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "reallm_cli", *map(str, args)], capture_output=True, text=True,
                          input=stdin, timeout=300)


def test_model_file_round_trip(model_file):
    model, tok = load_model(model_file)
    again = tiny_model(tok.vocab_size)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.allclose(a, b.half().float()), k  # saved as fp16


def test_transcribe_real_file_formats(model_file, shared_data, tmp_path):
    jfk = shared_data / "dev-real" / "jfk.flac"
    txt = reallm("transcribe", jfk, "--model", model_file)
    assert txt.returncode == 0, txt.stderr
    assert txt.stdout.strip(), "a random model still emits pieces; empty output means nothing was decoded"
    js = reallm("transcribe", jfk, "--model", model_file, "--format", "json")
    doc = json.loads(js.stdout)  # stdout holds the transcript only
    assert doc["duration_s"] == pytest.approx(11.0, abs=0.1)
    assert all(w["start_s"] <= w["end_s"] for s in doc["segments"] for w in s["words"])
    out = reallm("transcribe", jfk, shared_data / "dev-real" / "fsdd" / "0_george_0.wav", "--model", model_file,
                 "--format", "srt", "--output-dir", tmp_path / "out")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0_george_0.srt", "jfk.srt"]


@pytest.mark.parametrize("kind", ["missing", "directory", "not_audio", "empty"])
def test_bad_audio_gives_one_line(model_file, tmp_path, kind):
    path = {"missing": tmp_path / "nope.wav", "directory": tmp_path, "not_audio": tmp_path / "a.wav",
            "empty": tmp_path / "e.wav"}[kind]
    if kind == "not_audio":
        path.write_text("this is not audio")
    if kind == "empty":
        path.write_bytes(b"")
    r = reallm("transcribe", path, "--model", model_file)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and str(path.name) in r.stderr


def test_one_bad_file_does_not_stop_the_others(model_file, shared_data, tmp_path):
    r = reallm("transcribe", tmp_path / "missing.wav", shared_data / "dev-real" / "jfk.flac", "--model", model_file)
    assert r.returncode == 1
    assert r.stdout.strip()
    assert "missing.wav" in r.stderr


@pytest.mark.parametrize("kind", ["text", "foreign_safetensors", "missing"])
def test_wrong_model_file(tmp_path, shared_data, kind):
    path = tmp_path / "m.safetensors"
    if kind == "text":
        path.write_text("hello")
    if kind == "foreign_safetensors":
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(path))
    r = reallm("transcribe", shared_data / "dev-real" / "jfk.flac", "--model", path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "model" in r.stderr.lower()


def test_a_model_file_whose_config_does_not_fit_is_one_line(model_file, tmp_path):
    from test_reallm import with_config

    bad = tmp_path / "bad.safetensors"
    with_config(model_file, bad, lambda c: c["encoder"].pop("left_chunks"))
    r = reallm("transcribe", tmp_path / "x.wav", "--model", bad)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == [f"reallm: error: model file {bad} is refused: conformer encoder config: "
                                            "missing key(s) left_chunks"]


def test_eval_writes_report(model_file, shared_data, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "jfk", "audio": str(shared_data / "dev-real" / "jfk.flac"),
                                    "text": "And so, my fellow Americans"}) + "\n")
    r = reallm("eval", manifest, "--model", model_file, "--json", tmp_path / "r.json", "--precision", "bf16")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["utterances"] == 1 and rep["wer"] > 0.5  # random weights cannot be right
    assert rep["rtf"] > 0
    assert rep["precision"] == "bf16" and "(bf16)" in r.stdout  # the report says what ran


@pytest.mark.parametrize("group_by, rows", [("none", ["all"]), ("id", ["a", "b", "all"])])
def test_eval_table_has_one_total_row(model_file, shared_data, tmp_path, group_by, rows):
    manifest = tmp_path / "m.jsonl"
    audio = str(shared_data / "dev-real" / "jfk.flac")
    manifest.write_text("".join(json.dumps({"id": i, "audio": audio, "text": "ask not"}) + "\n" for i in "ab"))
    r = reallm("eval", manifest, "--model", model_file, "--group-by", group_by)
    assert r.returncode == 0, r.stderr
    first_cells = [line.split("│")[1].strip() for line in r.stdout.splitlines() if line.startswith("│")]
    assert first_cells == rows, r.stdout

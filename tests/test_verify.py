"""Weights are checked at load: one flipped byte in a model file with a known SHA-256 stops the load with one line."""

import hashlib
import json
import subprocess
import sys

import pytest

from conftest import tiny_model
from reallm_cli import weights
from reallm_cli.errors import ModelError
from reallm_cli.model.checkpoint import load_model, save_model
from reallm_cli.model.presets import placeholder_tokenizer


@pytest.fixture
def model_file(tmp_path):
    tok = placeholder_tokenizer(64)
    path = tmp_path / "tiny.safetensors"
    save_model(path, tiny_model(tok.vocab_size), tok)
    return path


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor data, past the header: the file still parses
    path.write_bytes(bytes(data))


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sha256_beside_a_file_is_checked(model_file):
    model_file.with_name(model_file.name + ".sha256").write_text(f"{_sha(model_file)}  {model_file.name}\n")
    load_model(model_file)  # the right checksum loads
    _flip_middle_byte(model_file)
    with pytest.raises(ModelError, match=r"tiny\.safetensors is damaged.*nothing was loaded"):
        load_model(model_file)


def test_a_file_with_no_checksum_still_loads(model_file):
    _flip_middle_byte(model_file)  # nothing says what it should be: the user's own file is trusted
    load_model(model_file)


def test_cached_registry_model_is_checked(model_file, tmp_path, monkeypatch):
    monkeypatch.setenv("REALLM_HOME", str(tmp_path / "home"))
    cached = tmp_path / "home" / "models" / "tiny.safetensors"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(model_file.read_bytes())
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"tiny": {"urls": ["http://127.0.0.1:9/x"], "sha256": _sha(cached), "license": "MIT"}}))
    monkeypatch.setenv("REALLM_REGISTRY", str(reg))
    load_model(weights.resolve_model("tiny"))
    _flip_middle_byte(cached)
    with pytest.raises(ModelError, match="registry entry 'tiny'"):
        load_model(weights.resolve_model("tiny"))


def test_embedded_model_has_its_checksum():
    path = weights.resolve_model(None)
    expected = weights.expected_sha256(path)
    assert expected is not None and expected[1].endswith("reallm-default.safetensors.sha256")
    weights.verify_model_file(path)  # the committed model matches its committed checksum


def test_cli_flipped_byte_is_one_line_and_nothing_runs(model_file, shared_data):
    model_file.with_name(model_file.name + ".sha256").write_text(_sha(model_file) + "\n")
    _flip_middle_byte(model_file)
    r = subprocess.run([sys.executable, "-m", "reallm_cli", "transcribe", str(shared_data / "dev-real" / "jfk.flac"),
                        "-m", str(model_file)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("reallm: error: model file") and len(r.stderr.splitlines()) == 1
    assert str(model_file) in r.stderr

"""Model resolution and downloads against a local HTTP server that supports Range, breaks, and lies."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
import time
from pathlib import Path

import pytest

from reallm_cli import weights
from reallm_cli.errors import ModelError, ReallmError
from reallm_cli.weights import download, resolve_model

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log: list[tuple[str, str | None]] = []
    break_budget = {"n": 0}  # how many more /broken responses are cut short

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        rng = self.headers.get("Range")
        type(self).log.append((self.path, rng))
        if self.path.startswith("/missing"):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"x" * len(PAYLOAD) if self.path.startswith("/wrong") else PAYLOAD
        start = 0
        if rng and not self.path.startswith("/norange"):
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        if self.path.startswith("/broken") and type(self).break_budget["n"] > 0:
            type(self).break_budget["n"] -= 1
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(chunk)


@pytest.fixture()
def server():
    _Handler.log = []
    _Handler.break_budget = {"n": 0}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("REALLM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REALLM_REGISTRY", raising=False)
    return tmp_path / "home"


def test_download_verifies_and_moves_atomically(server, tmp_path):
    base, handler = server
    dest = tmp_path / "m.safetensors"
    got = download(f"{base}/model.bin", SHA, dest, quiet=True)
    assert got == dest and dest.read_bytes() == PAYLOAD
    assert not dest.with_name(dest.name + ".part").exists()
    assert weights.expected_sha256(dest) == (SHA, str(dest) + ".sha256")  # so every later load is checked too
    n = len(handler.log)
    download(f"{base}/model.bin", SHA, dest, quiet=True)  # already there and verified: no request
    assert len(handler.log) == n


def test_broken_transfer_resumes_with_range(server, tmp_path):
    base, handler = server
    handler.break_budget["n"] = 1
    dest = tmp_path / "m.bin"
    download(f"{base}/broken/model.bin", SHA, dest, quiet=True)
    assert dest.read_bytes() == PAYLOAD
    ranges = [r for _, r in handler.log]
    assert ranges[0] is None
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= len(PAYLOAD) // 2  # what arrived before the break is not fetched again


def test_resume_across_runs_after_giving_up(server, tmp_path):
    base, handler = server
    handler.break_budget["n"] = 100
    dest = tmp_path / "m.bin"
    with pytest.raises(ReallmError, match="run the same command again to resume"):
        download(f"{base}/broken/model.bin", SHA, dest, quiet=True, retries=1)
    part = dest.with_name("m.bin.part")
    kept = part.stat().st_size
    assert 0 < kept < len(PAYLOAD) and not dest.exists()
    handler.break_budget["n"] = 0
    download(f"{base}/broken/model.bin", SHA, dest, quiet=True)
    assert dest.read_bytes() == PAYLOAD and handler.log[-1][1] == f"bytes={kept}-"


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    base, _ = server
    dest = tmp_path / "m.bin"
    dest.with_name("m.bin.part").write_bytes(b"garbage" * 100)
    download(f"{base}/norange/model.bin", SHA, dest, quiet=True)
    assert dest.read_bytes() == PAYLOAD


def test_sha_mismatch_refused_and_partial_deleted(server, tmp_path):
    base, _ = server
    dest = tmp_path / "m.bin"
    with pytest.raises(ReallmError, match="SHA-256 mismatch"):
        download(f"{base}/wrong/model.bin", SHA, dest, quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_http_error_and_offline_are_quick_one_line_errors(server, tmp_path):
    base, _ = server
    with pytest.raises(ReallmError, match="HTTP 404"):
        download(f"{base}/missing/model.bin", SHA, tmp_path / "a", quiet=True)
    # A port nobody listens on: refused at once.
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    t0 = time.perf_counter()
    with pytest.raises(ReallmError, match="cannot reach .*offline"):
        download(f"http://127.0.0.1:{port}/m.bin", SHA, tmp_path / "b", quiet=True)
    # A blackholed address: the connect timeout bounds the wait.
    with pytest.raises(ReallmError):
        download("http://10.255.255.1/m.bin", SHA, tmp_path / "c", quiet=True, connect_timeout_s=0.5)
    assert time.perf_counter() - t0 < 5


def test_url_download_needs_valid_sha(tmp_path):
    with pytest.raises(ReallmError, match="--sha256"):
        download("http://127.0.0.1/m.bin", None, tmp_path / "a", quiet=True)
    with pytest.raises(ReallmError, match="64 hex"):
        download("http://127.0.0.1/m.bin", "abc", tmp_path / "a", quiet=True)


def _write_registry(tmp_path, base):
    reg = tmp_path / "registry.json"
    reg.write_text(json.dumps({"tiny": {"urls": [f"{base}/missing/x", f"{base}/model.bin"], "sha256": SHA, "size_bytes": len(PAYLOAD), "license": "MIT", "description": "test"}}))
    return reg


def test_registry_name_download_then_resolve(server, tmp_path, monkeypatch, home):
    base, _ = server
    monkeypatch.setenv("REALLM_REGISTRY", str(_write_registry(tmp_path, base)))
    with pytest.raises(ModelError, match="run: reallm download tiny"):
        resolve_model("tiny")
    path = download("tiny", quiet=True)  # first mirror 404s, the second one serves
    assert path == home / "models" / "tiny.safetensors"
    assert resolve_model("tiny") == path
    statuses = {s.info.name: s.where for s in weights.model_statuses()}
    assert statuses["tiny"] == "cache"


def test_resolve_paths_and_names(tmp_path, monkeypatch, home):
    f = tmp_path / "my.safetensors"
    f.write_bytes(b"x")
    assert resolve_model(str(f)) == f
    with pytest.raises(ModelError, match="not found"):
        resolve_model(str(tmp_path / "nope.safetensors"))
    with pytest.raises(ModelError, match="folder"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelError, match="unknown model 'nosuch'.*reallm models"):
        resolve_model("nosuch")
    # A file downloaded by URL is found by its name.
    (home / "models").mkdir(parents=True)
    (home / "models" / "byurl.safetensors").write_bytes(b"y")
    assert resolve_model("byurl") == home / "models" / "byurl.safetensors"
    assert any(s.info.name == "byurl" for s in weights.model_statuses())


def test_embedded_default_found_in_package_data_or_checkout(tmp_path, monkeypatch):
    pkg, checkout = tmp_path / "pkg", tmp_path / "checkout"
    monkeypatch.setattr(weights, "embedded_dirs", lambda: [pkg, checkout])
    with pytest.raises(ModelError, match="embedded model 'reallm-default' is missing"):
        resolve_model(None)
    checkout.mkdir()
    (checkout / "reallm-default.safetensors").write_bytes(b"c")
    assert resolve_model(None) == checkout / "reallm-default.safetensors"
    pkg.mkdir()
    (pkg / "reallm-default.safetensors").write_bytes(b"p")
    assert resolve_model("reallm-default") == pkg / "reallm-default.safetensors"


def test_embedded_dirs_point_at_repo_weights():
    repo = Path(__file__).resolve().parents[1]
    assert repo / "weights" in weights.embedded_dirs()


def test_cli_download_and_models(server, tmp_path, monkeypatch, home):
    from typer.testing import CliRunner

    from reallm_cli.cli.app import app

    base, _ = server
    monkeypatch.setenv("REALLM_REGISTRY", str(_write_registry(tmp_path, base)))
    runner = CliRunner()
    res = runner.invoke(app, ["models", "--json"])
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert rows["tiny"]["status"] == "missing"
    res = runner.invoke(app, ["download", "tiny", "--quiet"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(home / "models" / "tiny.safetensors")  # stdout: just the path
    rows = {r["name"]: r for r in json.loads(runner.invoke(app, ["models", "--json"]).stdout)}
    assert rows["tiny"]["status"] == "cache" and rows["tiny"]["size_bytes"] == len(PAYLOAD)
    assert "tiny" in runner.invoke(app, ["models"]).stdout
    res = runner.invoke(app, ["download"])
    assert isinstance(res.exception, ReallmError) and "--url" in str(res.exception)


def test_concurrent_download_refused(server, tmp_path):
    import fcntl

    base, _ = server
    dest = tmp_path / "m.bin"
    with open(tmp_path / "m.bin.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(ReallmError, match="another download"):
            download(f"{base}/model.bin", SHA, dest, quiet=True)
    download(f"{base}/model.bin", SHA, dest, quiet=True)
    assert dest.read_bytes() == PAYLOAD and sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.bin.sha256"]

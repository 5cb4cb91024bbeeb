import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DATA = SHARED / "data"
RECIPE = REPO / "recipes" / "default"
# Recipe scripts import their neighbours (common, synth, ...) by name, as they do when run from anywhere.
if str(RECIPE) not in sys.path:
    sys.path.insert(0, str(RECIPE))

# Tests run on 2 shared cores; one intra-op thread avoids oversubscription when several run at once.
torch.set_num_threads(int(os.environ.get("REALLM_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """A test that runs a command in-process may change how this process handles SIGINT/SIGTERM; restore
    them, or every later subprocess inherits an ignored SIGINT and the Ctrl-C tests see it run on."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        if signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


@pytest.fixture
def shared_data() -> Path:
    if not (DATA / "dev-real").exists():
        pytest.skip(f"shared speech data not found at {DATA}")
    return DATA


def tiny_model(vocab_size: int, chunk_ms: int = 240, seed: int = 0, d: int = 64, slots_per_chunk: int = 1):
    """A small randomly initialised Conformer ReaLLM for fast tests."""
    from reallm_cli.model.checkpoint import build_model
    from reallm_cli.model.conformer import ConformerConfig
    from reallm_cli.model.decoder import DecoderConfig
    from reallm_cli.model.reallm import ReaLLMConfig

    torch.manual_seed(seed)
    enc = ConformerConfig(d_model=d, n_heads=2, n_layers=2, subsampling_channels=32, chunk_ms=chunk_ms, dropout=0.0)
    dec = DecoderConfig(vocab_size=vocab_size, d_model=d, n_layers=1, n_heads=2, n_kv_heads=2, ffn_hidden=2 * d, window=64)
    return build_model(ReaLLMConfig(encoder=enc, decoder=dec,
                                    slots_per_chunk=slots_per_chunk))


def tiny_right_context_model(vocab_size: int, d: int, enc_heads: int, enc_layers: int, dec_window: int,
                             seed: int = 0):
    """A small random ReaLLM on the shipped encoder schedule (right context 720 ms, hop 480 ms) with 4.8 s
    encoder windows, so that a few seconds of audio cross window restarts."""
    from reallm_cli.model.checkpoint import build_model
    from reallm_cli.model.decoder import DecoderConfig
    from reallm_cli.model.reallm import ReaLLMConfig
    from reallm_cli.model.whisper_config import WhisperEncoderConfig

    torch.manual_seed(seed)
    enc = WhisperEncoderConfig(d_model=d, n_heads=enc_heads, n_layers=enc_layers, ffn_dim=2 * d, right_context_ms=720,
                               hop_ms=480, window_ms=4800, overlap_ms=960)
    dec = DecoderConfig(vocab_size=vocab_size, d_model=d, n_layers=1, n_heads=2, n_kv_heads=2, ffn_hidden=2 * d,
                        window=dec_window)
    return build_model(ReaLLMConfig(encoder=enc, decoder=dec))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A tiny random model saved to a file, for CLI tests that need a model but not its words."""
    from reallm_cli.model.checkpoint import save_model
    from reallm_cli.model.presets import placeholder_tokenizer

    tok = placeholder_tokenizer(64)
    path = tmp_path_factory.mktemp("m") / "tiny.safetensors"
    save_model(path, tiny_model(tok.vocab_size), tok)
    return path


# The last decoder-only default model (shipped 2026-12-06), which the decoder-only recipe (recipes/default/train.py,
# run.sh stages 3-7) fine-tunes; the shipped model since has a cross-attention decoder.
DECODER_ONLY_COMMIT = "eea781a"


DECODER_ONLY_BLOB = f"{DECODER_ONLY_COMMIT}:weights/reallm-default.safetensors"


def require_decoder_only_model() -> None:
    """Skip the test when git history lacks that model (a shallow clone, say)."""
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", DECODER_ONLY_BLOB], capture_output=True).returncode:
        pytest.skip(f"git history without {DECODER_ONLY_COMMIT} (a shallow clone?)")


def decoder_only_model(out: Path) -> Path:
    """That model's file, from git history, written to ``out``; skips the test without that history."""
    require_decoder_only_model()
    out.write_bytes(subprocess.run(["git", "-C", str(REPO), "show", DECODER_ONLY_BLOB], capture_output=True,
                                   check=True).stdout)
    return out


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C as a shell gives it, whatever this test process inherited."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_reallm(args, stdout, **kw) -> subprocess.Popen:
    """``python -m reallm_cli ARGS`` in the background, stderr piped, SIGINT at its default."""
    return subprocess.Popen([sys.executable, "-m", "reallm_cli", *map(str, args)], stdout=stdout,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint, **kw)


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout_s: float = 120) -> bool:
    """Whether ``path`` holds ``n`` lines before ``proc`` ends (or the timeout)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if path.exists() and path.read_text().count("\n") >= n:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False

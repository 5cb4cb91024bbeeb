import os
import signal
import sys
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
    return build_model(ReaLLMConfig(encoder_kind="conformer", encoder=enc.to_dict(), decoder=dec,
                                    slots_per_chunk=slots_per_chunk))

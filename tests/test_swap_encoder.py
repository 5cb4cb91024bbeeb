"""recipes/default/swap_encoder.py: another Whisper encoder under a model's projector and decoder."""

from __future__ import annotations

import subprocess
import sys

import torch

from conftest import REPO
from test_reallm import whisper_model
from reallm_cli.model.checkpoint import load_model, save_model
from reallm_cli.model.presets import placeholder_tokenizer
from reallm_cli.model.whisper_file import save_whisper_encoder

SCRIPT = REPO / "recipes" / "default" / "swap_encoder.py"


def test_a_right_context_encoder_goes_under_the_same_projector_and_decoder(tmp_path):
    tok = placeholder_tokenizer(16)
    model = whisper_model(tok.vocab_size)
    save_model(tmp_path / "m.safetensors", model, tok, dtype=torch.float32)
    other = whisper_model(tok.vocab_size)
    for p in other.encoder.parameters():
        torch.nn.init.normal_(p, std=0.02)
    save_whisper_encoder(tmp_path / "enc.safetensors", other.encoder.config, other.encoder.state_dict())
    out = tmp_path / "rc.safetensors"
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "m.safetensors"), str(tmp_path / "enc.safetensors"),
                        "--right-context-ms", "720", "--hop-ms", "480", "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got, _ = load_model(out)
    cfg = got.encoder.config
    assert (cfg.right_context_ms, cfg.hop_ms, cfg.window_ms) == (720, 480, 28_800)
    sd, before, enc = got.state_dict(), model.state_dict(), other.encoder.state_dict()
    for k, v in sd.items():
        want = enc[k[len("encoder."):]] if k.startswith("encoder.") else before[k]
        torch.testing.assert_close(v, want.to(v.dtype), atol=1e-3, rtol=1e-3)  # (fp16 in the file)
    # an encoder of another size is refused in one line
    small = whisper_model(tok.vocab_size, n_layers=1)
    save_whisper_encoder(tmp_path / "small.safetensors", small.encoder.config, small.encoder.state_dict())
    r = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "m.safetensors"), str(tmp_path / "small.safetensors"),
                        "--right-context-ms", "720", "--out", str(tmp_path / "x.safetensors")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "another architecture" in r.stderr and "Traceback" not in r.stderr

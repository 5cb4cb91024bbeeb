"""Encoder files: weights and config round-trip, the schedule is chosen at load, foreign files are refused."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from reallm_cli.errors import ModelError
from reallm_cli.model.whisper_config import WhisperEncoderConfig
from reallm_cli.model.whisper_encoder import WhisperStreamingEncoder
from reallm_cli.model.whisper_file import load_whisper_encoder, save_whisper_encoder


def test_save_and_load_roundtrip(tmp_path):
    torch.manual_seed(3)
    model = WhisperStreamingEncoder(WhisperEncoderConfig(d_model=32, n_heads=4, n_layers=3, ffn_dim=64)).eval()
    path = tmp_path / "enc.safetensors"
    save_whisper_encoder(path, model.config, model.state_dict())
    loaded = load_whisper_encoder(path, chunk_ms=480, right_context_ms=480)
    assert loaded.config == dataclasses.replace(model.config, chunk_ms=480, right_context_ms=480, hop_ms=480)
    assert not any(p.requires_grad for p in loaded.parameters())
    mel = torch.randn(1, 90, 80)
    with torch.no_grad():
        a, _ = model(mel, torch.tensor([90]), full_attention=True)
        b, _ = loaded(mel, torch.tensor([90]), full_attention=True)
    assert torch.equal(a, b)
    half = tmp_path / "half.safetensors"
    save_whisper_encoder(half, model.config, model.state_dict(), dtype=torch.float16)
    assert half.stat().st_size < 0.6 * path.stat().st_size
    with torch.no_grad():
        c, _ = load_whisper_encoder(half)(mel, torch.tensor([90]), full_attention=True)
    assert (a - c).abs().max().item() < 2e-2


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_whisper_encoder(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"hello world, not safetensors")
    with pytest.raises(ModelError, match="safetensors"):
        load_whisper_encoder(junk)

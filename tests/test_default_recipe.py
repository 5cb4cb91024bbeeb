"""recipes/default/train.py --init-model: fine-tuning the shipped model on a user's own data.

A handful of espeak-ng sentences go through every stage (features by the model's own encoder, a
SentencePiece teacher, alignment, the move onto the model's BPE tokens, a few ReaLLM steps, export).
The result must be the same kind of model, with its vocabulary and encoder untouched and its decoder
moved by the training.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
    pytest.mark.skipif(not (REPO.parent / "shared" / "text" / "ljspeech-sentences.tsv").exists(),
                       reason="../shared/text (the recipe's text corpus) is absent"),
]

SENTENCES = ["the cat sat on the mat", "ask what you can do", "seven green trees by the house",
             "she reads a book every night", "we walked to the station in the rain", "open the window please"]


def test_init_model_fine_tunes_the_shipped_model(tmp_path):
    from reallm_cli.model.checkpoint import load_model
    from reallm_cli.train.synth import get_voice
    from reallm_cli.weights import resolve_model

    data = tmp_path / "data"
    data.mkdir()
    with open(data / "train.jsonl", "w") as f:
        for i, text in enumerate(SENTENCES * 2):
            audio = data / f"u{i}.flac"
            x = get_voice(["espeak-us", "espeak-gb"][i % 2]).synthesize(text, out_path=audio)
            f.write(json.dumps({"id": f"u{i}", "audio": str(audio), "text": text, "duration": len(x) / 16000}) + "\n")
    base = resolve_model(None)
    out = tmp_path / "tuned.safetensors"
    r = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "default" / "train.py"), "--data", str(data), "--work",
         str(tmp_path / "work"), "--init-model", str(base), "--out", str(out), "--vocab", "300",
         "--stages", "features,tokenizer,teacher,align,retokenize,reallm,export", "--teacher-steps", "4",
         "--reallm-steps", "3", "--reallm-warmup", "1", "--max-frames", "600", "--reallm-lr", "1e-3", "--dropout", "0.1"],
        capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "fine-tuning" in r.stdout

    before, tok_before = load_model(base)
    after, tok_after = load_model(out)
    assert tok_after.model_proto == tok_before.model_proto  # the vocabulary is kept
    assert after.config.slots_per_chunk == before.config.slots_per_chunk
    assert after.config.emit_delay_chunks == before.config.emit_delay_chunks
    assert after.config.decoder.dropout == 0.1
    sa, sb = after.state_dict(), before.state_dict()
    encoder_keys = [k for k in sa if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(sa[k], sb[k]) for k in encoder_keys)  # the encoder is frozen
    moved = [k for k in sa if k.startswith("decoder.") and not torch.equal(sa[k], sb[k])]
    assert moved  # three steps of training changed the decoder
    # ... by a fine-tune's amount: the model was started from its weights, not from Whisper tiny.en's
    emb = "decoder.tok_embeddings.weight"
    assert (sa[emb] - sb[emb]).abs().max() < 0.05

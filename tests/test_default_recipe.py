"""recipes/default/train.py --init-model: fine-tuning the shipped model on a user's own data.

A handful of espeak-ng sentences go through every stage (features by the model's own encoder, a
SentencePiece teacher, alignment, the move onto the model's BPE tokens, a few ReaLLM steps, export).
The result must be the same kind of model, with its vocabulary and encoder untouched and its decoder
moved by the training.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO, decoder_only_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
    pytest.mark.skipif(not (REPO.parent / "shared" / "text" / "ljspeech-sentences.tsv").exists(),
                       reason="../shared/text (the recipe's text corpus) is absent"),
]

SENTENCES = ["the cat sat on the mat", "ask what you can do", "seven green trees by the house",
             "she reads a book every night", "we walked to the station in the rain", "open the window please"]


def make_data(folder, texts, voices=("espeak-us",)):
    """A train.jsonl of ``texts`` spoken by ``voices`` in turn, in ``folder``."""
    from synth import get_voice

    folder.mkdir()
    with open(folder / "train.jsonl", "w") as f:
        for i, text in enumerate(texts):
            audio = folder / f"u{i}.flac"
            x = get_voice(voices[i % len(voices)]).synthesize(text, out_path=audio)
            f.write(json.dumps({"id": f"u{i}", "audio": str(audio), "text": text, "duration": len(x) / 16000}) + "\n")
    return folder


def test_init_model_fine_tunes_a_shipped_decoder_only_model(tmp_path):
    from reallm_cli.model.checkpoint import load_model

    data = make_data(tmp_path / "data", SENTENCES * 2, ("espeak-us", "espeak-gb"))
    base = decoder_only_model(tmp_path / "base.safetensors")
    work, out = tmp_path / "work", tmp_path / "tuned.safetensors"
    cmd = [sys.executable, str(REPO / "recipes" / "default" / "train.py"), "--data", str(data), "--work",
           str(work), "--init-model", str(base), "--out", str(out), "--vocab", "300", "--teacher-steps", "4",
           "--reallm-steps", "3", "--reallm-warmup", "1", "--max-frames", "600", "--reallm-lr", "1e-3", "--dropout", "0.1"]
    r = subprocess.run(cmd + ["--stages", "features,tokenizer,teacher,align,retokenize,reallm,export"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "fine-tuning" in r.stdout

    # the same command again (as after a kill): the finished text stages are skipped, not redone ...
    outputs = (work / "tokenizer.model", work / "alignments.jsonl", work / "alignments_bpe.jsonl")
    made = {p: p.stat().st_mtime_ns for p in outputs}
    again = cmd + ["--stages", "tokenizer,teacher,align,retokenize"]
    r = subprocess.run(again, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for stage in ("tokenizer", "align", "retokenize"):
        assert f"== {stage}: up to date" in r.stdout
    assert all(p.stat().st_mtime_ns == t for p, t in made.items())
    # ... until what they were made from changes: a newer teacher means new alignments
    os.utime(work / "teacher.pt")
    r = subprocess.run(again, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "== tokenizer: up to date" in r.stdout and "alignment report" in r.stdout
    assert "retokenized alignments" in r.stdout
    assert not list(work.glob(".*.tmp"))  # the alignments were written whole (writers.atomic_write_text)

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

    # --train-only: the named parts move, every other parameter stays the shipped model's, bit for bit
    # (from a copy of the text stages' outputs, so only the ReaLLM stage runs again)
    work2, out2 = tmp_path / "work2", tmp_path / "tuned2.safetensors"
    shutil.copytree(work, work2, ignore=shutil.ignore_patterns("reallm.pt"))
    cmd2 = [str(out2) if a == str(out) else str(work2) if a == str(work) else a for a in cmd]
    assert str(work2) in cmd2 and str(out2) in cmd2
    r = subprocess.run(cmd2 + ["--stages", "reallm,export", "--train-only", "projector,decoder.layers.0"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "the rest frozen" in r.stdout
    s2 = load_model(out2)[0].state_dict()
    trained = {k for k in s2 if k.startswith(("projector.", "decoder.layers.0."))}
    assert any(not torch.equal(s2[k], sb[k]) for k in trained)
    assert all(torch.equal(s2[k], sb[k]) for k in s2 if k not in trained)


def test_a_new_decoder_on_the_encoder_of_a_trained_model(tmp_path):
    """--encoder MODEL_FILE: the model's encoder makes the features and goes into the new model as
    it is, while the tokenizer and the decoder are new (here a small one trained from nothing)."""
    from reallm_cli.model.checkpoint import load_model
    from reallm_cli.weights import resolve_model

    data = make_data(tmp_path / "data", SENTENCES * 2, ("espeak-us", "espeak-gb"))
    base, out = resolve_model(None), tmp_path / "new.safetensors"
    r = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "default" / "train.py"), "--data", str(data), "--work",
         str(tmp_path / "work"), "--encoder", str(base), "--out", str(out), "--vocab", "300", "--d-model", "64",
         "--layers", "1", "--stages", "features,tokenizer,teacher,align,reallm,export", "--teacher-steps", "4",
         "--reallm-steps", "2", "--reallm-warmup", "1", "--max-frames", "600"],
        capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    before, tok_before = load_model(base)
    c = before.encoder.config
    assert f"the encoder of {base}: chunk {c.chunk_ms} ms, right context {c.right_context_ms} ms, hop {c.hop_ms} ms" in r.stdout

    after, tok_after = load_model(out)
    assert after.encoder.config == before.encoder.config  # (an older file's config lacks the newer defaults)
    sa, sb = after.state_dict(), before.state_dict()
    encoder_keys = [k for k in sb if k.startswith("encoder.")]
    assert encoder_keys and all(torch.equal(sa[k], sb[k]) for k in encoder_keys)
    assert tok_after.vocab_size == 300 != tok_before.vocab_size
    assert after.config.decoder.d_model == 64



def test_a_new_model_over_an_imported_encoder_in_right_context_mode(tmp_path):
    """base_synthetic.sh's path: an imported Whisper encoder (here tiny.en's, for speed) streams in
    right-context mode at train.py's defaults (720 ms ahead, 480 ms hops, as the model ships), and the
    decoder starts from Whisper tiny.en's, on its BPE vocabulary cut to the text corpus."""
    from reallm_cli.model.checkpoint import load_model
    from reallm_cli.model.whisper_import import convert_installed_whisper

    data = make_data(tmp_path / "data", SENTENCES)
    encoder, out = tmp_path / "encoder.safetensors", tmp_path / "work" / "model.safetensors"
    convert_installed_whisper("tiny.en", encoder, dtype=torch.float32)
    r = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "default" / "train.py"), "--data", str(data), "--work",
         str(tmp_path / "work"), "--encoder", str(encoder), "--decoder-init", "whisper-tiny.en", "--vocab", "300",
         "--slots-per-chunk", "3", "--emit-delay-chunks", "1", "--teacher-steps", "4", "--reallm-steps", "2",
         "--reallm-warmup", "1", "--max-frames", "600"],
        capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "decoder initialised from Whisper tiny.en" in r.stdout and "retokenized alignments" in r.stdout
    model, tok = load_model(out)  # --out defaults to WORK/model.safetensors
    c = model.encoder.config
    assert (c.chunk_ms, c.right_context_ms, c.hop_ms) == (240, 720, 480)
    assert (tmp_path / "work" / "feats" / "c240_rc720_hop480" / "train").is_dir()
    assert model.config.slots_per_chunk == 3 and model.config.emit_delay_chunks == 1
    assert tok.vocab_size > 300  # Whisper's BPE cut to the corpus, not the teacher's SentencePiece


def test_options_are_checked_before_any_work(tmp_path):
    train = [sys.executable, str(REPO / "recipes" / "default" / "train.py"), "--data", str(tmp_path), "--work",
             str(tmp_path / "work")]
    for extra, message in ((["--stages", "features"], "give --encoder"),
                           (["--encoder", "x", "--stages", "features,lm"], "unknown stage lm"),
                           (["--encoder", "x", "--mixed-right-context"], "--mixed-right-context needs --init-model"),
                           (["--encoder", "x", "--train-only", "encoder.blocks"], "only projector and decoder")):
        r = subprocess.run(train + extra, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and message in r.stderr
    assert not (tmp_path / "work").exists()

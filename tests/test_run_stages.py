"""recipes/default/run.sh: the default model's numbered stages, run on a tiny corpus.

A fake ../shared/data (a few espeak-ng sentences as train-real, one clip as unlabeled-real with a label
file) goes through stages 2-7 and 10: augmented data with a right context drawn per copy, a few synthetic
utterances beside it, the base model from git history, features at each of those right contexts, teacher
and alignment, a few ReaLLM steps and the export with the merge; then the default model's kind, Whisper
base's decoder, fine-tuned on the same frames and alignments and exported. The stages run in separate
calls, as on separate machines, and a stage run again redoes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import soundfile as sf

from conftest import DECODER_ONLY_COMMIT, REPO, require_decoder_only_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
    pytest.mark.skipif(not (REPO.parent / "shared" / "text" / "ljspeech-sentences.tsv").exists(),
                       reason="../shared/text (the recipe's text corpus) is absent"),
]

RUN = REPO / "recipes" / "default" / "run.sh"
SENTENCES = ["the cat sat on the mat", "ask what you can do", "seven green trees by the house",
             "she reads a book every night"]


def fake_shared(root):
    """train-real with a manifest, unlabeled-real with one clip, and a label file for that clip."""
    from synth import get_voice

    (root / "train-real" / "spk").mkdir(parents=True)
    (root / "unlabeled-real").mkdir()
    with open(root / "train-real" / "manifest.jsonl", "w") as f:
        for i, text in enumerate(SENTENCES):
            get_voice("espeak-us").synthesize(text.upper(), out_path=root / "train-real" / "spk" / f"u{i}.flac")
            f.write(json.dumps({"id": f"u{i}", "audio": f"spk/u{i}.flac", "text": text.upper()}) + "\n")
    get_voice("espeak-gb").synthesize("open the window please", out_path=root / "unlabeled-real" / "x-1.flac")
    labels = root / "labels.jsonl"
    labels.write_text(json.dumps({"file": "x-1.flac", "raw_text": "Open the window, please.", "duration": 1.5,
                                  "avg_logprob": -0.2, "no_speech_prob": 0.01}) + "\n")
    return labels


def run(args, env):
    r = subprocess.run(["bash", str(RUN), *args], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def test_stages_two_to_seven_and_ten_on_a_tiny_corpus(tmp_path):
    from reallm_cli.audio.source import load_audio
    from reallm_cli.engine import Recognizer
    from reallm_cli.model.checkpoint import load_model

    require_decoder_only_model()  # stage 3 takes it from git history
    shared, work = tmp_path / "shared", tmp_path / "work"
    labels = fake_shared(shared)
    work.mkdir()
    ids = tmp_path / "ids.tsv"  # arm a: a listed subset, each utterance at its listed right context
    ids.write_text("# id\tright_context_ms\nu0_sp1.0\t480\nu1_sp0.9\t720\nu2_sp1.1\t720\n")
    env = dict(os.environ, LABELS=str(labels), TEACHER_STEPS="4", REALLM_WARMUP="1",
               MAX_FRAMES="600", VOCAB="300", THREADS="1", ARMS=f"a:{ids}:2 b::3",  # b: all of stage 2
               SYNTH_HOURS="0.004", SYNTH_VOICES="espeak-us,espeak-rp", BASE="git", BASE_COMMIT=DECODER_ONLY_COMMIT)
    common = ["--work", str(work), "--shared", str(shared)]
    out = run(["--stage", "2", "--stop-stage", "4", *common], env)
    assert "stage 2: data" in out and "stage 4: features" in out and "stage 5" not in out
    assert not load_model(work / "base.safetensors")[0].config.cross_attention  # stage 3, from git

    lines = [json.loads(x) for x in (work / "data" / "train.jsonl").read_text().splitlines()]
    assert len(lines) == 3 * (len(SENTENCES) + 1)  # three speeds of every utterance
    assert {x["aug"]["speed"] for x in lines} == {0.9, 1.0, 1.1}
    assert {x["label_source"] for x in lines} == {"true:speechocean762", "pseudo:whisper-base-beam5"}
    by_id = {x["id"]: x for x in lines}
    slow, fast = by_id["u0_sp0.9"], by_id["u0_sp1.1"]
    assert slow["text"] == "the cat sat on the mat" and slow["duration"] > fast["duration"]
    assert sf.info(slow["audio"]).samplerate == 16000
    cached = {p.name for p in (work / "train-b" / "feats").glob("*/train_rc*")}
    assert cached == {f"train_rc{x['right_context_ms']}" for x in lines}  # one cache per drawn right context
    subset = [json.loads(x) for x in (work / "data-a" / "train.jsonl").read_text().splitlines()]
    assert {(x["id"], x["right_context_ms"]) for x in subset} == {("u0_sp1.0", 480), ("u1_sp0.9", 720),
                                                                  ("u2_sp1.1", 720)}
    assert {p.name for p in (work / "train-a" / "feats").glob("*/train_rc*")} == {"train_rc480", "train_rc720"}
    synthetic = [json.loads(x) for x in (work / "data" / "train_synthetic.jsonl").read_text().splitlines()]
    assert synthetic and {x["label_source"] for x in synthetic} <= {"synthetic:espeak-us", "synthetic:espeak-rp"}
    cached = {p.name for p in (work / "train-b" / "feats").glob("*/train_synthetic_rc*")}
    assert cached == {f"train_synthetic_rc{x['right_context_ms']}" for x in synthetic}

    made = {p: p.stat().st_mtime_ns for p in (work / "data" / "audio").glob("*.flac")}
    out = run(["--stage", "2", "--stop-stage", "2", *common], env)  # a rerun (after a kill) redoes no audio
    assert all(p.stat().st_mtime_ns == t for p, t in made.items())

    out = run(["--stage", "5", "--stop-stage", "7", *common], env)
    assert "stage 7: export" in out and "mean of 3 models" in out
    base, tok_base = load_model(work / "base.safetensors")
    model, tok = load_model(work / "model.safetensors")
    assert tok.model_proto == tok_base.model_proto and model.config == base.config
    moved = [k for k, v in model.state_dict().items() if k.startswith("decoder.")
             and not (v == base.state_dict()[k]).all()]
    assert moved  # the merged decoder lies between the base and the fine-tuned ones

    # stage 10: Whisper base's own decoder fine-tuned on arm b's frames and alignments, exported over the encoder
    env = dict(env, WD_INIT="none", WD_PLAN="2:1e-5:1:0.5", WD_ARM="b")
    out = run(["--stage", "10", "--stop-stage", "10", *common], env)
    assert "stage 10" in out and "stage 11" not in out
    trained = work / "wd-1" / "trained.safetensors"
    made = trained.stat().st_mtime_ns
    rec = Recognizer.load(str(work / "whisper-stream.safetensors"), precision="fp32")
    assert rec.model.config.cross_attention
    words = rec.transcribe_array(load_audio(by_id["u1_sp1.0"]["audio"]))  # it streams (two steps write anything)
    assert all(0 <= w.start_s <= w.end_s <= w.emit_s for w in words)
    run(["--stage", "10", "--stop-stage", "10", *common], env)  # a rerun trains nothing again
    assert trained.stat().st_mtime_ns == made


def test_unknown_option_is_refused_in_one_line(tmp_path):
    r = subprocess.run(["bash", str(RUN), "--stages", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown option --stages" in r.stderr

"""Adapt the top blocks of the chunk-causal Whisper encoder to its mask (distillation, no transcripts).

Stages (each resumable; finished shards and checkpoints are kept):
  cache     per utterance: the causal input of block --start, and (for the distillation subset: every real
            recording plus a share of the synthetic ones) the full-attention encoder's output
  train     blocks --start .. 5 + ln_post, chunk-causal, trained to reproduce the full-attention output
  features  final features of every utterance through the adapted blocks (for train.py's later stages)
  export    the adapted encoder as a safetensors file (load_whisper_encoder reads it)

    python recipes/default/adapt_encoder.py --stages cache --worker 0 --workers 2 &
    python recipes/default/adapt_encoder.py --stages cache --worker 1 --workers 2 &
    python recipes/default/adapt_encoder.py --stages train,features,export
then train.py --work WORK --encoder WORK/encoder.safetensors --stages tokenizer,teacher,align,reallm,export

--encoder may also be a reallm model file: its (adapted) encoder goes on adapting, towards the targets
of --target-encoder (default: that same encoder with its chunk mask lifted; the original Whisper encoder
file gives the original's full-attention output); swap_encoder.py then puts the result under the model's
decoder.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

from reallm_cli.audio.source import load_audio
from reallm_cli.model.checkpoint import is_model_file, load_model
from reallm_cli.model.whisper_encoder import WhisperStreamingEncoder, load_whisper_encoder, save_whisper_encoder
from reallm_cli.train.batching import DurationBatchSampler
from reallm_cli.train.feature_cache import FeatureStore, build_cache
from reallm_cli.train.loop import LoopConfig, run_loop

from common import log, read_jsonl, start_run  # recipes/default/common.py
from encoder_adapt import (distill_loss, encode_full_attention, encode_hidden, make_distill_batch,
                           relative_error, rerun_top)  # recipes/default/encoder_adapt.py


def distill_subset(entries: list[dict], hours: float) -> list[dict]:
    """Every real recording, then every n-th synthetic one until ``hours`` (deterministic)."""
    real = [e for e in entries if e["id"].startswith("real_")]
    synth = [e for e in entries if not e["id"].startswith("real_")]
    left = hours * 3600 - sum(e["duration"] for e in real)
    total = sum(e["duration"] for e in synth)
    step = max(1, round(total / left)) if left > 0 else len(synth) + 1
    return real + synth[::step]


def load_encoder(path: Path, chunk_ms: int, lookahead_ms: int) -> WhisperStreamingEncoder:
    """A Whisper encoder file, or the encoder of a reallm model file, on this streaming schedule."""
    if not is_model_file(path):
        return load_whisper_encoder(path, chunk_ms=chunk_ms, lookahead_ms=lookahead_ms)
    model = load_model(path)[0]
    if model.config.encoder_kind != "whisper":
        sys.exit(f"--encoder {path}: not a Whisper-encoder model")
    # (a model streaming in right-context mode is adapted on the layer-wise schedule asked for here)
    enc = WhisperStreamingEncoder(dataclasses.replace(model.encoder.config, chunk_ms=chunk_ms,
                                                      lookahead_ms=lookahead_ms, right_context_ms=0, hop_ms=0))
    enc.load_state_dict(model.encoder.state_dict())
    return enc.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=Path("/work/data/train.jsonl"))
    ap.add_argument("--work", type=Path, default=Path("/work/runs/adapt"))
    ap.add_argument("--encoder", type=Path, default=Path("/work/cache/whisper-base-encoder.safetensors"),
                    help="a Whisper encoder file (scripts/import_whisper.py), or a reallm model file")
    ap.add_argument("--target-encoder", type=Path, default=None,
                    help="whose full-attention output is the target (default: --encoder)")
    ap.add_argument("--chunk-ms", type=int, default=240)
    ap.add_argument("--lookahead-ms", type=int, default=240)
    ap.add_argument("--start", type=int, default=2, help="first adapted block (0-based)")
    ap.add_argument("--train-start", type=int, default=None, help="first block to train (default --start)")
    ap.add_argument("--distill-hours", type=float, default=3.5)
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--max-frames", type=int, default=3000)
    ap.add_argument("--dev", type=Path, default=Path("/work/shared/data/dev-real/manifest.jsonl"))
    ap.add_argument("--stages", default="train,features,export")
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    stages, work = start_run(args)
    enc = load_encoder(args.encoder, args.chunk_ms, args.lookahead_ms)
    entries = read_jsonl(args.manifest)
    subset = distill_subset(entries, args.distill_hours)
    hid_dir, tgt_dir = work / f"hidden{args.start}", work / "full_attention"
    feat_dir = work / "feats" / f"c{args.chunk_ms}_la{args.lookahead_ms}" / "train"

    if "cache" in stages:
        log(f"distillation subset: {len(subset)} utterances, {sum(e['duration'] for e in subset) / 3600:.2f} h")
        build_cache(entries, enc, hid_dir, log=log, worker=args.worker, n_workers=args.workers,
                    encode=lambda a: encode_hidden(enc, a, args.start))
        teacher = enc if args.target_encoder is None else load_encoder(args.target_encoder, args.chunk_ms,
                                                                         args.lookahead_ms)
        build_cache(subset, teacher, tgt_dir, log=log, worker=args.worker, n_workers=args.workers,
                    encode=lambda a: encode_full_attention(teacher, a))

    train_start = args.start if args.train_start is None else args.train_start
    trainable = [enc.blocks[i] for i in range(train_start, enc.config.n_layers)] + [enc.ln_post]
    ckpt = work / "adapt.pt"
    dev = [e for e in read_jsonl(args.dev) if not e["id"].startswith("fsdd")] if args.dev.exists() else []

    def dev_error() -> float:
        enc.eval()
        errs = [relative_error(enc, load_audio(args.dev.parent / e["audio"])) for e in dev]
        return sum(errs) / max(1, len(errs))

    if "train" in stages:
        hid, tgt = FeatureStore([hid_dir]), FeatureStore([tgt_dir])
        by_id = {u.id: i for i, u in enumerate(hid.items)}
        pairs = [(by_id[u.id], j) for j, u in enumerate(tgt.items) if u.id in by_id]
        log(f"{len(pairs)} distillation pairs, {sum(tgt.items[j].duration for _, j in pairs) / 3600:.2f} h")
        log(f"dev-real (not fsdd) relative error before: {dev_error():.4f}")
        enc.requires_grad_(False)
        for m in trainable:
            m.requires_grad_(True)
        enc.train()
        sampler = DurationBatchSampler([tgt.items[j].duration for _, j in pairs], args.max_frames * 0.02, seed=3)
        run_loop(enc, lambda batch, gen: distill_loss(enc, args.start, batch),
                 lambda epoch: [[pairs[k] for k in b] for b in sampler.batches(epoch)],
                 lambda p: make_distill_batch(hid, tgt, p),
                 LoopConfig(total_steps=args.steps, lr=args.lr, warmup_steps=min(100, args.steps // 5),
                            weight_decay=0.0, log_every=20, checkpoint_minutes=3.0), ckpt, log,
                 description="encoder adaptation")

    if stages & {"features", "export"}:
        if ckpt.exists():
            enc.load_state_dict(torch.load(ckpt, weights_only=False)["model"])
        enc.eval().requires_grad_(False)
        log(f"dev-real (not fsdd) relative error after: {dev_error():.4f}")
    if "features" in stages:
        n = rerun_top(enc, args.start, hid_dir, feat_dir)
        log(f"features of {n} utterances in {feat_dir}")
    if "export" in stages:
        out = work / "encoder.safetensors"
        save_whisper_encoder(out, enc.config, enc.state_dict(),
                             extra={"adapted_blocks": f"{train_start}..{enc.config.n_layers - 1}",
                                    "distill_hours": args.distill_hours, "steps": args.steps,
                                    "lookahead_ms": args.lookahead_ms})
        log(f"wrote {out}")


if __name__ == "__main__":
    main()

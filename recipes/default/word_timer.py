"""The word timer: a character CTC head over the frozen encoder's 20 ms frames, for word times finer than
the 240 ms chunk (``reallm_cli.word_times``). Trained on the recipe's cached encoder frames (stage 4),
written beside the model as ``word-timer.safetensors`` (fp16, with its ``.sha256``).

    python recipes/default/word_timer.py train --feats runs/default/train/feats/c240_rcmix_hop480 \\
        --model runs/default/model.safetensors --out runs/default/word-timer.safetensors
    python recipes/default/word_timer.py measure --model weights/reallm-default.safetensors   # dev sets

``train`` reads every ``train*`` cache folder under each ``--feats`` (shards of (sum T, 512) fp16 frames
and their jsonl index, see ``reallm_cli.train.feature_cache``); ``--model`` is the model whose encoder
made those frames (its fingerprint goes into the file: another encoder's frames keep chunk times).
With ``--calibrate SET`` the median start and end bias on that dev set (through the engine, against
``ref_word_times/SET.jsonl``) is stored in the file as offsets. ``measure`` streams each dev set
through the engine, as ``reallm transcribe`` does, and prints the median absolute start and end error
of the words that match the reference word times (offline Whisper base's, see compare.py).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import DEV_SETS as SETS, SHARED_DATA, log, ref_times  # recipes/default/common.py


def load_items(feats: list[Path], max_hours: float, seed: int):
    """The FeatureStore of every train* folder under ``feats`` and a random selection of its usable
    utterances (characters fit in the frames), at most ``max_hours`` of audio."""
    from reallm_cli.align.ctc import min_frames_for
    from reallm_cli.train.feature_cache import FeatureStore
    from reallm_cli.word_times import text_ids

    dirs = sorted(d for f in feats for d in ([f] if f.name.startswith("train") else f.glob("train*")) if d.is_dir())
    if not dirs:
        sys.exit(f"no train* cache folders under {', '.join(map(str, feats))}")
    store = FeatureStore(dirs)
    order = list(range(len(store)))
    random.Random(seed).shuffle(order)
    items, hours = [], 0.0
    for i in order:
        u = store.items[i]
        ids = text_ids(u.text)
        if ids and u.n_frames >= min_frames_for(ids):
            items.append((i, ids))
            hours += u.n_frames * 0.02 / 3600
            if hours >= max_hours:
                break
    log(f"{len(dirs)} cache folders, {len(store)} utterances; using {len(items)} ({hours:.2f} h)")
    return store, items


def batches(items: list, store, max_frames: int, rng: random.Random):
    """Lists of items of similar length, each at most ``max_frames`` padded frames, in random order."""
    by_len = sorted(items, key=lambda it: store.items[it[0]].n_frames)
    out, cur = [], []
    for it in by_len:
        n = store.items[it[0]].n_frames
        if cur and (len(cur) + 1) * max(n, store.items[cur[-1][0]].n_frames) > max_frames:
            out.append(cur)
            cur = []
        cur.append(it)
    if cur:
        out.append(cur)
    rng.shuffle(out)
    return out


def collate(batch: list, store) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    lens = [store.items[i].n_frames for i, _ in batch]
    x = torch.zeros(len(batch), max(lens), store.dim)
    for b, (i, _) in enumerate(batch):
        x[b, : lens[b]] = torch.from_numpy(np.asarray(store.frames(i), dtype=np.float32))
    return x, torch.tensor(lens), [ids for _, ids in batch]


def evaluate_head(head, store, items: list, max_frames: int) -> tuple[float, float]:
    """Mean CTC loss per character and greedy character error rate on held-out items."""
    import jiwer

    from reallm_cli.align.ctc import ctc_greedy_decode
    from reallm_cli.train.ctc_head import ctc_loss
    from reallm_cli.word_times import BLANK, CHARS

    head.eval()
    losses, refs, hyps = [], [], []
    with torch.inference_mode():
        for batch in batches(items, store, max_frames, random.Random(0)):
            x, lens, ids = collate(batch, store)
            lp = head(x)
            losses.append(float(ctc_loss(lp, lens, ids, BLANK)) * sum(map(len, ids)))
            for b in range(len(batch)):
                refs.append("".join(CHARS[t - 1] for t in ids[b]))
                hyps.append("".join(CHARS[t - 1] for t in ctc_greedy_decode(lp[b, : lens[b]], BLANK)) or "-")
    head.train()
    n = sum(len(ids) for _, ids in items)
    return sum(losses) / max(n, 1), jiwer.cer(refs, hyps)


def train(args) -> int:
    from reallm_cli.model.checkpoint import load_model
    from reallm_cli.train.ctc_head import CTCHead, ctc_loss
    from reallm_cli.weights import resolve_model
    from reallm_cli.word_times import BLANK, VOCAB_SIZE, WordTimer, encoder_fingerprint

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # the encoder as loaded, before ``apply_precision`` fuses anything: what the engine fingerprints
    fingerprint = encoder_fingerprint(load_model(resolve_model(args.model))[0].encoder)
    store, items = load_items(args.feats, args.hours, args.seed)
    n_dev = max(1, min(300, len(items) // 50))
    dev, items = items[:n_dev], items[n_dev:]
    head = CTCHead(store.dim, VOCAB_SIZE, hidden=args.hidden, dropout=args.dropout)
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.01)
    rng = random.Random(args.seed)
    epoch_batches = batches(items, store, args.max_frames, rng)
    steps = args.steps or args.epochs * len(epoch_batches)
    warmup = min(200, steps // 10)
    log(f"head {sum(p.numel() for p in head.parameters())} parameters; {len(items)} utterances train, "
        f"{len(dev)} held out; {steps} steps of <= {args.max_frames} frames ({len(epoch_batches)} a pass)")
    t0, step, run = time.perf_counter(), 0, []
    while step < steps:
        for batch in epoch_batches:
            if step >= steps:
                break
            lr = args.lr * min(1.0, (step + 1) / max(warmup, 1)) * 0.5 * (1 + math.cos(math.pi * step / steps))
            for g in opt.param_groups:
                g["lr"] = lr
            x, lens, ids = collate(batch, store)
            if args.feat_noise:
                x = x + args.feat_noise * torch.randn_like(x) * x.std(dim=-1, keepdim=True)
            loss = ctc_loss(head(x), lens, ids, BLANK)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 5.0)
            opt.step()
            run.append(loss.item())
            step += 1
            if step % args.log_every == 0 or step == steps:
                dev_loss, dev_cer = evaluate_head(head, store, dev, args.max_frames)
                log(f"step {step}/{steps} loss {np.mean(run):.3f} held-out loss {dev_loss:.3f} "
                    f"CER {100 * dev_cer:.1f} % lr {lr:.2e} ({time.perf_counter() - t0:.0f} s)")
                run = []
        epoch_batches = batches(items, store, args.max_frames, rng)
    head.eval()
    extra = {"train_utterances": len(items), "train_hours": round(sum(store.items[i].n_frames for i, _ in items)
             * 0.02 / 3600, 2), "steps": steps, "hidden": args.hidden,
             "feats": [str(f) for f in args.feats], "seconds": round(time.perf_counter() - t0)}
    timer = WordTimer(head, fingerprint, join_gap_s=args.join_gap, extra=extra)
    if args.calibrate:
        timer = calibrate(timer, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    timer.save(args.out)
    log(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} kB), offsets start {timer.start_offset_s:+.3f} s "
        f"end {timer.end_offset_s:+.3f} s")
    return 0


def run_set(model: str | None, timer_path: Path | None, shared: Path, name: str, threads: int,
            right_context_ms: int | None = None) -> dict[str, np.ndarray]:
    """The engine's words on one dev set against its reference word times: signed (start, end) errors
    of the matched words, in seconds, under "all", "not-first" (each utterance's first word left out:
    the reference starts it at 0.0 however much silence comes first) and each audio folder's name."""
    from reallm_cli.engine import Recognizer
    from reallm_cli.evaluate import word_time_errors
    from reallm_cli.transcribe import transcribe_file
    from reallm_cli.word_times import WordTimer

    torch.set_num_threads(threads)
    rec = Recognizer.load(model, precision="fp32", right_context_ms=right_context_ms)
    if timer_path is not None:
        rec.word_timer = WordTimer.load(timer_path) if timer_path.name != "none" else None
    refs = {}
    for line in ref_times(name).read_text().splitlines():
        r = json.loads(line)
        refs[r["id"]] = r["words"]
    out: dict[str, list] = {"all": [], "not-first": []}
    for line in (shared / name / "manifest.jsonl").read_text().splitlines():
        e = json.loads(line)
        if e["id"] in refs:
            words = transcribe_file(rec, str(shared / name / e["audio"])).words
            err = word_time_errors(refs[e["id"]], words)
            out["all"] += err
            out["not-first"] += word_time_errors(refs[e["id"]][1:], words)
            out.setdefault(Path(e["audio"]).parts[0], []).extend(err)
    return {k: np.array(v).reshape(-1, 2) for k, v in out.items()}


def summary(err: np.ndarray) -> dict:
    if not len(err):
        return {"words": 0}
    a = np.abs(err)
    ms = lambda x: round(1000 * float(x))  # noqa: E731
    return {"words": len(err), "start_p50_ms": ms(np.median(a[:, 0])), "end_p50_ms": ms(np.median(a[:, 1])),
            "start_bias_ms": ms(np.median(err[:, 0])), "end_bias_ms": ms(np.median(err[:, 1])),
            "start_p90_ms": ms(np.percentile(a[:, 0], 90)), "end_p90_ms": ms(np.percentile(a[:, 1], 90))}


def calibrate(timer, args):
    """Store the median start and end bias on ``args.calibrate`` (a dev set; each utterance's first word
    left out) as the timer's offsets, measured with no offsets and no joining of short gaps."""
    join, timer.join_gap_s = timer.join_gap_s, 0.0
    timer.start_offset_s = timer.end_offset_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        path = timer.save(Path(tmp) / "word-timer.safetensors")
        err = run_set(args.model, path, args.shared, args.calibrate, args.threads)["not-first"]
    s = summary(err)
    log(f"calibration on {args.calibrate}: {s}")
    timer.start_offset_s = round(-s["start_bias_ms"] / 1000, 3)
    timer.end_offset_s = round(-s["end_bias_ms"] / 1000, 3)
    timer.join_gap_s = join
    timer.extra["calibrated_on"] = args.calibrate
    return timer


def measure(args) -> int:
    out = {}
    for name in args.sets.split(","):
        t0 = time.perf_counter()
        errors = run_set(args.model, args.timer, args.shared, name, args.threads, args.right_context_ms)
        out[name] = {k: summary(v) for k, v in errors.items()}
        for k, v in out[name].items():
            log(f"{name} {k}: {json.dumps(v)}")
        log(f"{name}: {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the head on cached encoder frames")
    t.add_argument("--feats", type=Path, nargs="+", required=True, help="cache folders (or folders of train* ones)")
    t.add_argument("--model", default=None, help="the model whose encoder made the frames (default: the embedded)")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--hours", type=float, default=8.0, help="at most this much of the cache's audio")
    t.add_argument("--hidden", type=int, default=256)
    t.add_argument("--dropout", type=float, default=0.1)
    t.add_argument("--feat-noise", type=float, default=0.0, help="Gaussian noise on the frames, x their std")
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--epochs", type=int, default=4)
    t.add_argument("--steps", type=int, default=0, help="instead of --epochs")
    t.add_argument("--max-frames", type=int, default=12000, help="padded frames per batch")
    t.add_argument("--log-every", type=int, default=200)
    t.add_argument("--join-gap", type=float, default=0.2, help="a word starting less than this many seconds "
                   "after the word before starts where it ends")
    t.add_argument("--calibrate", default="", help="a dev set whose median biases become the offsets")
    t.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("measure", help="median absolute word start/end errors on the dev sets")
    m.add_argument("--model", default=None)
    m.add_argument("--timer", type=Path, default=None,
                   help="a word-timer file to use instead of the one beside the model ('none': chunk times)")
    m.add_argument("--sets", default=",".join(SETS))
    m.add_argument("--right-context-ms", "--lookahead-ms", type=int, default=None)
    m.add_argument("--json", type=Path, default=None)
    for p in (t, m):
        p.add_argument("--shared", type=Path, default=SHARED_DATA, help="the folder that holds the dev sets")
        p.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    return train(args) if args.cmd == "train" else measure(args)


if __name__ == "__main__":
    sys.exit(main())

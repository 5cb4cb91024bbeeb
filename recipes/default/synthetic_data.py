"""Stage 2 of the recipe, second half: synthetic voices beside the real speech, for breadth.

The real training speech is one accent (Mandarin L1 readers of speechocean762) and one book-reading
corpus; fine-tuned on it alone, the decoder forgets what the synthetic base taught it (isolated digits,
numbers, everyday sentences). A few hours of offline voices keep that in the mix:

  texts   LJ Speech sentences (public-domain non-fiction) from make_data.py's training split, and its
          short texts (digits, numbers, dates, times, money, phrases), a quarter of the audio
  voices  the offline voices of synth.py that run at a fraction of real time on a CPU core
  copies  one each: a random speaking rate, silence around it, then noise and a room drawn exactly as
          real_data.py draws them, and a right context for the encoder

Writes DATA/train_synthetic.jsonl beside real_data.py's train.jsonl (train.py takes every train*.jsonl).
Seeded by utterance id; a rerun skips the files that exist.

    python recipes/default/synthetic_data.py --out DATA --hours 2 [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

import synth  # recipes/default/synth.py
from make_data import SHORT_SHARE, estimate_s, read_lj, short_texts, split_lj, trim_silence, tts_input
from real_data import (RIGHT_CONTEXTS_MS, augment, draw_augmentation, manifest_line, round_suffix, seed_of,
                       write_flac)
from reallm_cli.text import normalize_text

# share of the synthetic audio per voice (neural voices most; the cheap ones add speakers and accents)
VOICES = {
    "hibari-heart": 0.22, "piper-joe": 0.16, "piper-joe-lively": 0.10, "festival-ked": 0.06,
    "flite-kal16": 0.05, "flite-awb": 0.05, "flite-rms": 0.05, "flite-slt": 0.05,
    "espeak-us": 0.03, "espeak-gb": 0.03, "espeak-rp": 0.03, "espeak-us-f3": 0.03, "espeak-us-m3": 0.03,
    "espeak-scot-f2": 0.03, "espeak-lanc-m5": 0.03, "espeak-carib-f4": 0.03, "espeak-wmid-klatt": 0.02,
}
SEED = 20261206


def plan(out: Path, hours: float, voices: dict[str, float] = VOICES, round_: int = 0,
         short_share: float = SHORT_SHARE) -> list[dict]:
    """Every utterance to make: (text, voice, rate, augmentation, right context), in a seeded order.
    Round 0 makes the first data; every other round draws its own texts and copies (ids end in _rN).
    ``short_share`` of the hours go to the short texts, the rest to LJ Speech sentences."""
    rng = random.Random(SEED + round_)
    lj = list(split_lj(read_lj())[0])
    rng.shuffle(lj)
    pools = [("lj", lj, hours * 3600 * (1 - short_share)), ("short", short_texts(20000, rng), hours * 3600 * short_share)]
    names, shares = list(voices), list(voices.values())
    jobs = []
    for kind, texts, budget in pools:
        total = 0.0
        for tid, raw in texts:
            if total >= budget:
                break
            total += estimate_s(raw)
            uid = f"syn_{tid}{round_suffix(round_)}"
            r = np.random.default_rng(seed_of(uid))
            voice = names[int(r.choice(len(names), p=np.array(shares) / sum(shares)))]
            jobs.append({"id": f"{uid}_{voice}", "raw_text": raw, "text": normalize_text(raw), "voice": voice,
                         "rate": round(float(r.uniform(0.88, 1.12)), 2), "aug": draw_augmentation(r),
                         "right_context_ms": int(r.choice(RIGHT_CONTEXTS_MS)), "label_source": f"synthetic:{voice}",
                         "audio": str(out / "audio-synthetic" / voice / f"{uid}.flac")})
    return [j for j in jobs if j["text"]]


def can_speak(voice: str) -> bool:
    try:
        return len(synth.get_voice(voice).synthesize("yes", rate=1.0, seed=0)) > 0
    except Exception:  # an engine that is not installed fails in its own way (ImportError, OSError, ...)
        return False


def produce(job: dict) -> dict | None:
    """Speak one text unless its file exists; its manifest line, or None when the voice fails."""
    path = Path(job["audio"])
    if not path.exists():
        rng = np.random.default_rng(seed_of(job["id"]) + 1)
        try:
            x = synth.get_voice(job["voice"]).synthesize(tts_input(job["raw_text"]), rate=job["rate"],
                                                         seed=seed_of(job["id"]) % 2**31)
        except synth.SynthError as e:
            print(f"synthetic_data: {job['id']}: {e}", file=sys.stderr, flush=True)
            return None
        x = synth.pad_silence(trim_silence(x), float(rng.uniform(0.1, 0.6)), float(rng.uniform(0.2, 0.8)), rng)
        write_flac(path, augment(x, job["aug"], rng))
    return manifest_line(job, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="data folder: audio-synthetic/ and train_synthetic.jsonl")
    ap.add_argument("--hours", type=float, default=2.0, help="planned hours of synthetic speech")
    ap.add_argument("--voices", default=",".join(VOICES), help="comma-separated voices of synth.py (default: all)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--round", type=int, default=0, help="0: the first data; N: other texts and draws")
    ap.add_argument("--short-share", type=float, default=SHORT_SHARE,
                    help=f"share of the hours for short texts: digits, numbers, phrases (default {SHORT_SHARE})")
    ap.add_argument("--manifest", default="train_synthetic.jsonl", help="manifest name in --out (train*.jsonl)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    voices = {v: VOICES.get(v, 0.03) for v in args.voices.split(",") if v}
    mute = [v for v in voices if not can_speak(v)]
    if mute:
        sys.exit(f"synthetic_data.py: these voices cannot speak here: {', '.join(mute)} "
                 "(pip install -e '.[data]'; see synth.py), or choose others with --voices")
    if not 0.0 <= args.short_share <= 1.0:
        sys.exit(f"synthetic_data.py: --short-share must lie in 0..1, not {args.short_share}")
    jobs = plan(args.out.resolve(), args.hours, voices, args.round, args.short_share)
    with ProcessPoolExecutor(args.jobs) as pool:
        lines = [x for x in pool.map(produce, jobs, chunksize=8) if x is not None]
    tmp = args.out / f"{args.manifest}.partial"
    tmp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    tmp.replace(args.out / args.manifest)
    hours = sum(x["duration"] for x in lines) / 3600
    print(f"{len(lines)} of {len(jobs)} synthetic utterances, {hours:.2f} h -> {args.out / args.manifest}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

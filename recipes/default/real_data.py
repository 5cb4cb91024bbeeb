"""Stage 1 of the real-speech recipe: a training manifest of real human speech, augmented.

Sources (read from ../shared/data, never copied into the repository):
  train-real/      speechocean762 train split, true transcripts (the prompts read)
  unlabeled-real/  LibriSpeech utterances, labelled by offline Whisper base, beam 5
                   (the labels are committed: recipes/default/labels/unlabeled-real.jsonl)

Each utterance is written in three speeds (Kaldi's 0.9 / 1.0 / 1.1); each copy independently gets
coloured noise at a random SNR and a synthetic room's reverberation with the probabilities below.
Each copy also draws the right context (ms) the encoder will see when its frames are cached, so one
decoder learns every ``--lookahead-ms`` it will be run with. Everything is seeded by the copy's id:
a rerun (or a resume after a kill) makes the same files and skips those that exist.

    python recipes/default/real_data.py --out DATA [--jobs 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from reallm_cli.text import normalize_text
from reallm_cli.timebase import SAMPLE_RATE
from reallm_cli.train.augment import add_noise, speed_perturb
from common import RECIPE, SHARED_DATA  # recipes/default/common.py
from synth import coloured_noise, reverberate, synthetic_rir  # recipes/default/synth.py

LABELS = RECIPE / "labels" / "unlabeled-real.jsonl"
SPEEDS = (0.9, 1.0, 1.1)
RIGHT_CONTEXTS_MS = (480, 720, 960)
P_NOISE, SNR_DB = 0.5, (5.0, 30.0)
P_REVERB, RT60_S = 0.3, (0.2, 0.7)
# pseudo-labels Whisper itself is unsure of are dropped (the same thresholds as make_data.py)
MIN_AVG_LOGPROB, MAX_NO_SPEECH_PROB = -1.0, 0.6


def seed_of(uid: str) -> int:
    return int.from_bytes(hashlib.sha256(uid.encode()).digest()[:8], "little")


def sources(shared: Path = SHARED_DATA, labels: Path = LABELS) -> list[dict]:
    """Every real training utterance: id, source audio path, text, where its label came from."""
    out = []
    for line in (shared / "train-real" / "manifest.jsonl").read_text().splitlines():
        e = json.loads(line)
        out.append({"id": e["id"], "src": str(shared / "train-real" / e["audio"]),
                    "text": normalize_text(e["text"]), "label_source": "true:speechocean762"})
    for line in labels.read_text().splitlines():
        e = json.loads(line)
        if e["avg_logprob"] < MIN_AVG_LOGPROB or e["no_speech_prob"] > MAX_NO_SPEECH_PROB:
            continue
        out.append({"id": "ls_" + Path(e["file"]).stem, "src": str(shared / "unlabeled-real" / e["file"]),
                    "text": normalize_text(e["raw_text"]), "label_source": "pseudo:whisper-base-beam5"})
    return [s for s in out if s["text"]]


def draw_augmentation(rng: np.random.Generator, speed: float = 1.0) -> dict:
    """One copy's augmentation: its speed, then coloured noise and a room, each with its probability."""
    aug = {"speed": speed}
    if rng.random() < P_NOISE:
        aug["noise_exponent"] = int(rng.integers(0, 3))  # white, pink or brown
        aug["snr_db"] = round(float(rng.uniform(*SNR_DB)), 1)
    if rng.random() < P_REVERB:
        aug["rt60_s"] = round(float(rng.uniform(*RT60_S)), 2)
    return aug


def round_suffix(round_: int) -> str:
    """What a round adds to an id: nothing for round 0 (the first data), _rN for round N."""
    return f"_r{round_}" if round_ else ""


def copies(src: dict, out: Path, round_: int = 0) -> list[dict]:
    """The augmented copies of one utterance, with every random choice already drawn. Round 0 makes the
    first data; every other round draws its own noise, rooms and right contexts (ids end in _rN)."""
    jobs = []
    for speed in SPEEDS:
        uid = f"{src['id']}_sp{speed:.1f}{round_suffix(round_)}"
        rng = np.random.default_rng(seed_of(uid))
        aug = draw_augmentation(rng, speed)
        jobs.append(dict(src, id=uid, audio=str(out / "audio" / f"{uid}.flac"), aug=aug,
                         right_context_ms=int(rng.choice(RIGHT_CONTEXTS_MS))))
    return jobs


def augment(x: np.ndarray, aug: dict, rng: np.random.Generator) -> np.ndarray:
    """Apply a drawn augmentation to 16 kHz audio; the result peaks at 0.9."""
    x = speed_perturb(x, aug["speed"])
    if "rt60_s" in aug:
        x = reverberate(x, synthetic_rir(aug["rt60_s"], rng))
    if "snr_db" in aug:
        x = add_noise(x, aug["snr_db"], rng, coloured_noise(len(x), aug["noise_exponent"], rng))
    return x * (0.9 / max(float(np.max(np.abs(x))), 1e-6))


def write_flac(path: Path, x: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.flac")
    sf.write(tmp, x, SAMPLE_RATE, subtype="PCM_16")
    os.replace(tmp, path)


def manifest_line(job: dict, path: Path) -> dict:
    return {k: job[k] for k in ("id", "audio", "text", "label_source", "aug", "right_context_ms")} | {
        "duration": round(sf.info(str(path)).duration, 3)}


def produce(job: dict) -> dict:
    """Write one copy's FLAC unless it exists; return its manifest line."""
    path = Path(job["audio"])
    if not path.exists():
        x, sr = sf.read(job["src"], dtype="float32", always_2d=True)
        x = x.mean(axis=1)
        if sr != SAMPLE_RATE:
            x = soxr.resample(x, sr, SAMPLE_RATE).astype(np.float32)
        write_flac(path, augment(x, job["aug"], np.random.default_rng(seed_of(job["id"]) + 1)))
    return manifest_line(job, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="data folder: audio/ and train.jsonl go here")
    ap.add_argument("--shared", type=Path, default=SHARED_DATA)
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--round", type=int, default=0, help="0: the first data; N: other draws of every copy")
    args = ap.parse_args()
    jobs = [j for s in sources(args.shared, args.labels) for j in copies(s, args.out, args.round)]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(args.jobs) as pool:
        lines = list(pool.map(produce, jobs, chunksize=16))
    tmp = args.out / "train.jsonl.partial"
    tmp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    tmp.replace(args.out / "train.jsonl")
    hours = sum(x["duration"] for x in lines) / 3600
    print(f"{len(lines)} utterances, {hours:.2f} h -> {args.out / 'train.jsonl'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Telephone-band copies of stage 2's data: a seeded share of each manifest's copies, band-limited to 8 kHz.

Speech recorded or sent at 8 kHz (telephones, old dictation, ../shared/data/dev-real/fsdd) has nothing above
4 kHz. Whisper's encoder saw such audio, but the decoder fine-tuned here saw only 16 kHz speech. Each chosen
copy is resampled to 8 kHz and back with soxr (its anti-aliasing filter is the band limit) and written
beside its source as a new copy: the same text, the same right context, the same timing, so the copy's
frames and alignment come from the usual stages 4 and 5. The choice is seeded by each copy's id: a rerun
(or a resume after a kill) picks the same copies and skips the files that exist.

    python recipes/default/narrowband.py --data DATA --share train=0.25,train_synthetic=0.25,train_synthetic_short=1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from common import read_jsonl  # recipes/default/common.py
from real_data import seed_of, write_flac

BAND_RATE = 8000  # Hz: the telephone band
MANIFEST = "train_narrowband.jsonl"


def parse_shares(spec: str) -> dict[str, float]:
    """'train=0.5,train_synthetic_short=1' -> {manifest stem: share of its copies}."""
    shares = {}
    for part in filter(None, spec.split(",")):
        stem, _, value = part.partition("=")
        share = float(value)
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"share of {stem} must be within 0..1, got {value}")
        shares[stem.strip()] = share
    return shares


def chosen(entries: list[dict], share: float) -> list[dict]:
    """The copies whose id's seed falls in the first ``share`` of its range (the same on every rerun)."""
    return [e for e in entries if (seed_of(e["id"] + "/narrowband") % 10_000) < share * 10_000]


def band_limit(x: np.ndarray, sample_rate: int, band_rate: int = BAND_RATE) -> np.ndarray:
    """``x`` as if it had been sampled at ``band_rate``: down with soxr's filter, then up again."""
    y = soxr.resample(soxr.resample(x, sample_rate, band_rate), band_rate, sample_rate).astype(np.float32)
    return y[: len(x)] if len(y) >= len(x) else np.pad(y, (0, len(x) - len(y)))


def job_of(entry: dict, data: Path) -> dict:
    uid = entry["id"] + "_nb8k"
    return dict(entry, id=uid, audio=str(data / "audio-narrowband" / f"{uid}.flac"), src=entry["audio"],
                aug=dict(entry.get("aug") or {}, narrowband_hz=BAND_RATE))


def produce(job: dict) -> dict:
    path = Path(job["audio"])
    if not path.exists():
        x, sr = sf.read(job["src"], dtype="float32")
        write_flac(path, band_limit(x, sr))
    return {k: v for k, v in job.items() if k != "src"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="stage 2's data folder (its train*.jsonl)")
    ap.add_argument("--share", required=True, help="MANIFEST_STEM=SHARE,...: the share of each manifest's copies")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    args.data = args.data.resolve()
    try:
        shares = parse_shares(args.share)
    except ValueError as e:
        print(f"narrowband.py: {e}", file=sys.stderr)
        return 2
    jobs = []
    for stem, share in shares.items():
        manifest = args.data / f"{stem}.jsonl"
        if not manifest.exists():
            print(f"narrowband.py: no manifest {manifest}", file=sys.stderr)
            return 2
        jobs += [job_of(e, args.data) for e in chosen(read_jsonl(manifest), share)]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(args.jobs) as pool:
        lines = list(pool.map(produce, jobs, chunksize=16))
    tmp = args.data / (MANIFEST + ".partial")
    tmp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    tmp.replace(args.data / MANIFEST)
    hours = sum(x["duration"] for x in lines) / 3600
    print(f"{len(lines)} narrowband copies, {hours:.2f} h -> {args.data / MANIFEST}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

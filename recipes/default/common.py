"""What the default-model recipe scripts share: timestamped log lines, JSONL reading, run set-up."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_run(args: argparse.Namespace) -> tuple[set[str], Path]:
    """Torch threads from ``--threads``; the stages asked for (``--stages a,b``); the work folder, created."""
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    return set(args.stages.split(",")), args.work


def up_to_date(made: tuple[Path, ...], sources: tuple[Path, ...]) -> bool:
    """True if every file in ``made`` exists and none of the ``sources`` that exist is newer than the oldest."""
    if not made or not all(p.exists() for p in made):
        return False
    oldest = min(p.stat().st_mtime_ns for p in made)
    return all(p.stat().st_mtime_ns <= oldest for p in sources if p.exists())

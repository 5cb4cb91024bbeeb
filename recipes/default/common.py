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

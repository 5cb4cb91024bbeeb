"""What the default-model recipe scripts share: where things are, timestamped log lines, JSONL reading."""

from __future__ import annotations

import json
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parent
REPO = RECIPE.parents[1]
SHARED = REPO.parent / "shared"  # the speech and text beside the repository (../shared)
SHARED_DATA = SHARED / "data"
DEV_SETS = ("dev-real", "dev-nonnative", "dev-commonvoice")
# offline Whisper base (CTranslate2) for pseudo-labels and as a peer, assembled from its PyPI packages on first use
WHISPER_BASE_CT2 = REPO / "runs" / "whisper-base-ct2"


def ref_times(name: str) -> Path:
    """Offline Whisper base's word times on dev set ``name``, kept beside the recipe (compare.py makes them)."""
    return RECIPE / "ref_word_times" / f"{name}.jsonl"


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

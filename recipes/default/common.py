"""What the default-model recipe scripts share: timestamped log lines and JSONL reading."""

from __future__ import annotations

import json
import time
from pathlib import Path


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

"""Audio shipped with the package: jfk.flac (public domain), what ``reallm bench`` streams by default.

Beside each clip a JSON file holds its reference transcript and reference word end times."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Sample:
    id: str
    audio: Path
    text: str  # reference transcript
    words: tuple[dict, ...]  # reference word times: {"word", "start_s", "end_s"}


def sample(name: str = "jfk") -> Sample:
    meta = json.loads((HERE / f"{name}.json").read_text(encoding="utf-8"))
    return Sample(id=meta["id"], audio=HERE / meta["audio"], text=meta["text"], words=tuple(meta["words"]))

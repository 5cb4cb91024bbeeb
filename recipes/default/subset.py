"""Keep the utterances of stage 2's data that a listed fine-tune trained on, each at its listed right context.

The 2026-12-06 model was fine-tuned on part of stage 2's data (its feature cache was cut short when the
session's time ran out): the real copies drawn at 480 and 720 ms, and 0.6 h of the synthetic voices moved
to 720 ms. ``labels/finetune-2026-12-06.tsv`` lists them, so stage 4 rebuilds that very set:

    python recipes/default/subset.py --data WORK/data --ids recipes/default/labels/finetune-2026-12-06.tsv \
        --out WORK/data-finetune
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_ids(path: Path) -> dict[str, int]:
    ids = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            utt, rc = line.split("\t")
            ids[utt] = int(rc)
    return ids


def subset(data: Path, ids: dict[str, int], out: Path) -> dict[str, int]:
    """Write every train*.jsonl of ``data`` to ``out`` holding only the listed ids; return lines per file."""
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for manifest in sorted(data.glob("train*.jsonl")):
        kept = []
        for line in manifest.read_text().splitlines():
            e = json.loads(line)
            if e["id"] in ids:
                kept.append(json.dumps({**e, "right_context_ms": ids[e["id"]]}))
        (out / manifest.name).write_text("".join(k + "\n" for k in kept))
        counts[manifest.name] = len(kept)
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="stage 2's data folder")
    ap.add_argument("--ids", type=Path, required=True, help="id<TAB>right_context_ms lines")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    ids = read_ids(args.ids)
    counts = subset(args.data, ids, args.out)
    found = sum(counts.values())
    print(f"{found} of {len(ids)} listed utterances -> {args.out} ({counts})")
    if found < len(ids):
        print(f"subset: {len(ids) - found} listed utterances are not in {args.data}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stage 1's output in the form committed to the repository: one line per pseudo-labelled utterance.

The raw lines of ``python -m reallm_cli.train.pseudo_label`` name this machine's absolute audio path;
the committed file names the audio by its file name under ../shared/data/unlabeled-real and keeps
every setting that shaped the label (model, beam, its scores).

    python recipes/default/labels.py WORK/pseudo/labels_raw.jsonl --out recipes/default/labels/unlabeled-real.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("raw", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.raw.read_text().splitlines() if line.strip()]
    rows = sorted(({k: v for k, v in r.items() if k != "path"} for r in rows), key=lambda r: r["file"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".partial")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(args.out)
    print(f"{len(rows)} labels -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Average the weights of model files of one run (same config and tokenizer) into one model file.

The default model is the mean of its base and the fine-tunes of it (recipe stage 7; weights/README.md).
A file named twice counts twice, which makes weighted means such as (2B + T) / 3:

    python recipes/default/average.py --out model.safetensors base.safetensors tuned-a.safetensors tuned-b.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reallm_cli.errors import ReallmError
from reallm_cli.model.checkpoint import average_models


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", type=Path, nargs="+", help="model files to average (at least two)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    try:
        average_models(args.models, args.out)
    except ReallmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (mean of {len(args.models)} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

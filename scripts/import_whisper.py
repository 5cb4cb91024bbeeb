"""Convert an installed Whisper (CTranslate2 model.bin from PyPI) into our encoder file.

    python scripts/import_whisper.py --model base --out /work/cache/whisper-base-encoder.safetensors
"""

from __future__ import annotations

import argparse
import sys

import torch

from reallm_cli.errors import ReallmError
from reallm_cli.model.whisper_import import INSTALLED_WHISPER, convert_installed_whisper


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(INSTALLED_WHISPER), default="base")
    ap.add_argument("--out", required=True, help="output .safetensors path")
    ap.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                    help="stored precision (the PyPI files are float16, so float16 loses nothing)")
    args = ap.parse_args(argv)
    try:
        cfg = convert_installed_whisper(args.model, args.out, dtype=getattr(torch, args.dtype))
    except ReallmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

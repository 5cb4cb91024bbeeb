"""Put another adapted Whisper encoder under a trained model's projector and decoder, keeping them as they are.

For an encoder adapted further by ``adapt_encoder.py`` (same architecture, streaming schedule kept from
the model): the decoder was trained on the old encoder's frames, so measure the result before shipping it.

    python recipes/default/swap_encoder.py weights/reallm-default.safetensors /work/adapt2/encoder.safetensors \
        --out /work/runs/v3/model.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reallm_cli.errors import ReallmError
from reallm_cli.model.checkpoint import load_model, model_extra, save_model
from reallm_cli.model.whisper_encoder import load_whisper_encoder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a reallm model file with a Whisper encoder")
    ap.add_argument("encoder", type=Path, help="an encoder file written by adapt_encoder.py (export stage)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    try:
        model, tokenizer = load_model(args.model)
        if model.config.encoder_kind != "whisper":
            raise ReallmError(f"{args.model} has a {model.config.encoder_kind} encoder, not a Whisper one")
        cfg = model.encoder.config
        enc = load_whisper_encoder(args.encoder, chunk_ms=cfg.chunk_ms, lookahead_ms=cfg.lookahead_ms,
                                   window_ms=cfg.window_ms, overlap_ms=cfg.overlap_ms)
        if enc.config != cfg:
            raise ReallmError(f"{args.encoder} is another architecture than the encoder of {args.model}")
        model.encoder.load_state_dict(enc.state_dict())
        extra = model_extra(args.model) | {"encoder_swapped_from": args.encoder.name}
        save_model(args.out, model, tokenizer, extra=extra)
    except ReallmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

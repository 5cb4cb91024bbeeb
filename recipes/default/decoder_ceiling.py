"""Is the streaming encoder or the decoder the limit? Feed one model's decoder three kinds of frames.

For each utterance of a manifest (fsdd's digits left out unless ``--all``), the model's decoder reads:

- ``streaming``: its own chunk-causal encoder, as ``reallm eval`` runs it;
- ``original full attention``: the original Whisper encoder (``--whisper``, the imported file that the
  adapted encoder started from) seeing the whole utterance at once, i.e. what the streaming encoder's
  adaptation is trained to imitate; its best case;
- ``adapted full attention``: the model's own encoder with its chunk mask lifted.

If the decoder still errs on full-attention frames, a better streaming encoder cannot fix those errors:

    python recipes/default/decoder_ceiling.py ../shared/data/dev-real/manifest.jsonl \\
        --whisper /work/cache/whisper-base-encoder.safetensors [--model M] [--precision int8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jiwer
import numpy as np

from reallm_cli.audio.source import load_audio
from reallm_cli.engine import Recognizer
from reallm_cli.errors import ReallmError
from reallm_cli.model.whisper_encoder import load_whisper_encoder
from reallm_cli.text import normalize_text
from reallm_cli.timebase import SAMPLE_RATE
from reallm_cli.train.feature_cache import encode_audio
from reallm_cli.train.manifest import read_manifest

KINDS = ("streaming", "original full attention", "adapted full attention")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--whisper", type=Path, required=True, help="the imported Whisper encoder (safetensors)")
    ap.add_argument("--model", default=None, help="model file (default: the embedded model)")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "int8"])
    ap.add_argument("--all", action="store_true", help="keep fsdd's digits")
    args = ap.parse_args()
    try:
        rec = Recognizer.load(args.model, precision=args.precision)
        model = rec.model
        original = load_whisper_encoder(args.whisper, chunk_ms=model.chunk_ms, lookahead_ms=model.encoder.lookahead_ms)
        entries = [e for e in read_manifest(args.manifest, probe_duration=True) if args.all or "fsdd" not in str(e.audio)]
        # a late-writing model needs its trailing silence in the frames too (Session.flush adds it to audio)
        tail = np.zeros(round(model.config.emit_delay_chunks * model.chunk_ms * SAMPLE_RATE / 1000), np.float32)
        refs, hyps = [], {k: [] for k in KINDS}
        for e in entries:
            audio = load_audio(e.audio)
            padded = np.concatenate([audio, tail])
            refs.append(normalize_text(e.text))
            hyps[KINDS[0]].append(" ".join(w.text for w in rec.transcribe_array(audio)))
            for kind, enc in ((KINDS[1], original), (KINDS[2], model.encoder)):
                words = rec.session().decode_frames(encode_audio(enc, padded, full_attention=True)).final
                hyps[kind].append(" ".join(w.text for w in words))
    except ReallmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n_words = sum(len(r.split()) for r in refs)
    print(f"{len(refs)} utterances, {n_words} words, model {args.model or 'default'} ({args.precision})")
    for kind in KINDS:
        o = jiwer.process_words(refs, [normalize_text(h) for h in hyps[kind]])
        errors = o.substitutions + o.deletions + o.insertions
        print(f"{kind:24s} WER {100 * o.wer:5.1f} %  ({errors} errors: {o.substitutions} sub, "
              f"{o.deletions} del, {o.insertions} ins)")
    for i, r in enumerate(refs):
        if any(normalize_text(hyps[k][i]) != r for k in KINDS):
            print(f"\nref: {r}")
            for kind in KINDS:
                print(f"{kind}: {hyps[kind][i]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

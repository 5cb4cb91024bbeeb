"""Stream the prototype (whisper_stream.py) over the dev sets: WER, CER, errors by kind, emission delay, RTF; and
what it writes on silence and noise (must be nothing).

The encoder is the shipped model's (original Whisper base, right context 720 ms, 480 ms hops), through
the same streaming schedule as the engine; words are shown when the chunk after their last piece (the
emit delay) has been encoded: the end of its hop plus the right context and the front end's 12.5 ms, as
``engine.Emission`` computes it. Delays are against offline Whisper base's word times
(recipes/default/ref_word_times), as compare.py's. Each stream starts with two chunks of silence, as the
engine's (``--lead-in-chunks``); without them isolated words that start at once (fsdd) came out empty.

    python recipes/default/whisper_decoder/evaluate.py --ct2 runs/whisper-base-ct2/model.bin \\
        --trained runs/wd/run/trained.safetensors --sets dev-commonvoice,dev-nonnative,dev-real,noise
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jiwer
import numpy as np
import torch
from tokenizers import Tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from whisper_stream import EOT, load_whisper_base, stream_pieces  # noqa: E402

from reallm_cli.audio.source import load_audio  # noqa: E402
from reallm_cli.engine import Recognizer, frontend_lookahead_ms  # noqa: E402
from reallm_cli.evaluate import _matched_delays  # noqa: E402
from reallm_cli.text import normalize_text  # noqa: E402
from reallm_cli.train.feature_cache import encode_audio  # noqa: E402
from reallm_cli.train.manifest import read_manifest  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent
CHUNK_SAMPLES = 3840


def words_of(tok: Tokenizer, pieces: list[tuple[int, int]], emit_delay: int, encoder) -> list:
    """Pieces -> words with the stream time each was whole on screen (a piece with a leading space begins one):
    the encoder has finished the hop holding the chunk after the word's last piece, timed as the engine's
    ``Emission`` times it (the encoder's wait and the front end's look-ahead)."""
    groups: list[list] = []
    for t, c in pieces:
        if t >= EOT:
            continue
        if not groups or tok.id_to_token(t).startswith("\u0120"):
            groups.append([[t], c])
        else:
            groups[-1][0].append(t)
            groups[-1][1] = c
    hop, chunk_s = encoder.hop_chunks, encoder.chunk_ms / 1000
    wait_s = (encoder.wait_ms + frontend_lookahead_ms(encoder)) / 1000 - (hop - 1) * chunk_s
    out = []
    for ids, c in groups:
        shown = math.ceil((c + emit_delay + 1) / hop) * hop * chunk_s + wait_s
        out += [SimpleNamespace(text=w, emit_s=shown) for w in normalize_text(tok.decode(ids)).split()]
    return out


def transcribe(m, encoder, audio: np.ndarray, args) -> list[tuple[int, int]]:
    tail = np.zeros(2 * CHUNK_SAMPLES, np.float32)  # as Session.flush: the emit delay's audio after the end
    lead = np.zeros(args.lead_in_chunks * CHUNK_SAMPLES, np.float32)
    frames = encode_audio(encoder, np.concatenate([lead, audio, tail]))
    frames = frames[None] if frames.dim() == 2 else frames
    pieces = stream_pieces(m, frames, args.emit_delay, args.blank_penalty, no_repeat=not args.allow_repeats)
    return [(t, c - args.lead_in_chunks) for t, c in pieces]  # chunks of the audio itself


def noise_cases() -> dict[str, np.ndarray]:
    rng, t = np.random.default_rng(0), np.arange(160000) / 16000
    return {"silence": np.zeros(160000, np.float32),
            "white noise -30 dBFS": (rng.standard_normal(160000) * 0.0316).astype(np.float32),
            "white noise -15 dBFS": (rng.standard_normal(160000) * 0.178).astype(np.float32),
            "50 Hz hum": (0.1 * np.sin(2 * np.pi * 50 * t)).astype(np.float32),
            "brown noise": (np.cumsum(rng.standard_normal(160000)) / 400).astype(np.float32)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct2", type=Path, required=True)
    ap.add_argument("--trained", type=Path, default=None)
    ap.add_argument("--sets", default="dev-commonvoice,dev-nonnative,dev-real,noise")
    ap.add_argument("--shared", type=Path, default=RECIPE.parent.parent.parent / "shared" / "data")
    ap.add_argument("--blank-penalty", type=float, default=0.0)
    ap.add_argument("--emit-delay", type=int, default=1)
    ap.add_argument("--lead-in-chunks", type=int, default=2, help="silent chunks before the audio, as the engine's lead-in")
    ap.add_argument("--allow-repeats", action="store_true", help="let a piece follow itself within a chunk")
    ap.add_argument("--right-context-ms", type=int, default=720)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write every hypothesis here (JSON per set)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = Tokenizer.from_file(str(args.ct2.parent / "tokenizer.json"))
    m = load_whisper_base(args.ct2, args.trained).eval()
    encoder = Recognizer.load(None, precision="fp32", right_context_ms=args.right_context_ms).model.encoder
    for name in args.sets.split(","):
        if name == "noise":
            for case, audio in noise_cases().items():
                print(f"noise: {case}: {tok.decode([t for t, _ in transcribe(m, encoder, audio, args)])!r}", flush=True)
            continue
        times = {r["id"]: r["words"] for r in map(json.loads, (RECIPE / "ref_word_times" / f"{name}.jsonl").open())}
        refs, hyps, delays, rows, compute, audio_s = [], [], [], [], 0.0, 0.0
        for e in read_manifest(args.shared / name / "manifest.jsonl", probe_duration=True).entries:
            audio = load_audio(e.audio)
            t0 = time.perf_counter()
            words = words_of(tok, transcribe(m, encoder, audio, args), args.emit_delay, encoder)
            compute += time.perf_counter() - t0
            audio_s += len(audio) / 16000
            refs.append(normalize_text(e.text))
            hyps.append(" ".join(w.text for w in words))
            delays += _matched_delays(times[e.id], words) if e.id in times else []
            rows.append({"id": e.id, "ref": refs[-1], "hyp": hyps[-1]})
        w, c = jiwer.process_words(refs, hyps), jiwer.process_characters(refs, hyps)
        errors = w.substitutions + w.deletions + w.insertions
        print(f"{name}: WER {100 * w.wer:.1f} % CER {100 * c.cer:.1f} % ({errors} errors: {w.substitutions} S, "
              f"{w.deletions} D, {w.insertions} I), delay p50 {np.percentile(delays, 50):.2f} s "
              f"p95 {np.percentile(delays, 95):.2f} s, RTF {compute / audio_s:.3f} (fp32, {args.threads} thread, "
              f"blank penalty {args.blank_penalty}{', repeats allowed' if args.allow_repeats else ''})", flush=True)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"{name}.json").write_text(json.dumps(rows, indent=0))
    return 0


if __name__ == "__main__":
    sys.exit(main())

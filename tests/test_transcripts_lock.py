"""The behaviour lock in CI: the shipped model's transcripts of part of dev-real equal the committed reference.

The whole set (306 utterances, ~45 s) is compared by ``scripts/transcripts_lock.py``; this test covers the
long utterances (LibriVox, jfk) and a few digits, the ones that exercise windows, hops and flush.
"""

import importlib.util
import json

from conftest import REPO

spec = importlib.util.spec_from_file_location("transcripts_lock", REPO / "scripts" / "transcripts_lock.py")
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)


def test_transcripts_equal_the_reference(shared_data, tmp_path):
    manifest = shared_data / "dev-real" / "manifest.jsonl"
    entries = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    subset = [e for e in entries if not e["audio"].startswith("fsdd/")] + \
             [e for e in entries if e["audio"].startswith("fsdd/")][:4]
    small = tmp_path / "manifest.jsonl"
    small.write_text("".join(json.dumps(dict(e, audio=str(manifest.parent / e["audio"]))) + "\n" for e in subset))
    reference = {r["id"]: r for r in map(json.loads, lock.REFERENCE.read_text().splitlines())}
    got = lock.transcribe_all(small)
    assert len(got) == len(subset) >= 10
    for r in got:
        assert r == reference[r["id"]], r["id"]

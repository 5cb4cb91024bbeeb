"""recipes/default/real_data.py and synthetic_data.py: the draws of stage 2, and their rounds.

Round 0 must keep making the data the committed lists name (labels/finetune-2026-12-06.tsv); another
round must draw other copies (and, for the voices, other texts) under ids of its own, so that two rounds
never share a file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO

RECIPE = REPO / "recipes" / "default"
SOURCE = {"id": "spk1_utt1", "src": "/nowhere.flac", "text": "a real sentence", "label_source": "true:test"}


def committed_ids() -> set[str]:
    lines = (RECIPE / "labels" / "finetune-2026-12-06.tsv").read_text().splitlines()
    return {line.split("\t")[0] for line in lines if line and not line.startswith("#")}


def test_round_zero_keeps_the_ids_and_draws_of_the_committed_lists():
    from real_data import copies

    jobs = copies(SOURCE, Path("/out"))
    assert [j["id"] for j in jobs] == ["spk1_utt1_sp0.9", "spk1_utt1_sp1.0", "spk1_utt1_sp1.1"]
    assert copies(SOURCE, Path("/out"), 0) == jobs
    # real copies in the committed list are named as round 0 names them
    assert any(i.endswith("_sp1.0") and not i.endswith("_r1") for i in committed_ids())


def test_another_round_draws_other_copies_under_other_ids():
    from real_data import copies

    first, second = copies(SOURCE, Path("/out")), copies(SOURCE, Path("/out"), 1)
    assert {j["id"] for j in first}.isdisjoint(j["id"] for j in second)
    assert {j["audio"] for j in first}.isdisjoint(j["audio"] for j in second)
    assert all(j["id"].endswith("_r1") for j in second)
    draws = lambda jobs: [(j["aug"], j["right_context_ms"]) for j in jobs]  # noqa: E731
    many = [dict(SOURCE, id=f"u{i}") for i in range(20)]
    assert [d for s in many for d in draws(copies(s, Path("/out")))] != \
        [d for s in many for d in draws(copies(s, Path("/out"), 1))]


needs_text = pytest.mark.skipif(not (REPO.parent / "shared" / "text" / "ljspeech-sentences.tsv").exists(),
                                reason="../shared/text (the recipe's text corpus) is absent")


@needs_text
def test_a_synthetic_round_speaks_other_texts_into_other_files():
    from synthetic_data import plan

    first, second = plan(Path("/out"), 0.2), plan(Path("/out"), 0.2, round_=1)
    assert plan(Path("/out"), 0.2) == first  # seeded: the same plan again
    assert {j["audio"] for j in first}.isdisjoint(j["audio"] for j in second)
    texts = lambda jobs: {j["text"] for j in jobs}  # noqa: E731
    assert len(texts(first) & texts(second)) < 0.2 * len(texts(first))
    assert {j["id"] for j in first if j["id"].startswith("syn_LJ")} & committed_ids()


@needs_text
def test_a_short_only_plan_speaks_only_short_texts_into_files_of_its_own():
    from synthetic_data import plan

    mixed, short = plan(Path("/out"), 0.2, round_=1), plan(Path("/out"), 0.2, round_=1001, short_share=1.0)
    assert short and all(j["id"].startswith("syn_short") for j in short)
    assert any(j["id"].startswith("syn_LJ") for j in mixed)
    assert {j["audio"] for j in mixed}.isdisjoint(j["audio"] for j in short)
    assert sum(len(j["text"].split()) == 1 for j in short) > 0.1 * len(short)  # isolated digits among them


def test_narrowband_copies_lose_everything_above_4_khz_and_keep_their_text_timing_and_right_context(tmp_path):
    import json

    import numpy as np
    import soundfile as sf
    from narrowband import chosen, main

    rng = np.random.default_rng(0)
    entries = []
    for i in range(40):
        path = tmp_path / "audio" / f"u{i}.flac"
        path.parent.mkdir(exist_ok=True)
        sf.write(path, (0.1 * rng.standard_normal(8000)).astype(np.float32), 16000)  # white: energy to 8 kHz
        entries.append({"id": f"u{i}", "audio": str(path), "text": f"text {i}", "aug": {"speed": 1.0},
                        "right_context_ms": 720, "duration": 0.5})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    picked = chosen(entries, 0.5)
    assert 10 < len(picked) < 30 and chosen(entries, 0.5) == picked  # a seeded half, the same every time
    assert {e["id"] for e in chosen(entries, 0.25)} <= {e["id"] for e in picked}  # a smaller share: a subset

    import sys
    argv, sys.argv = sys.argv, ["narrowband.py", "--data", str(tmp_path), "--share", "train=0.5", "--jobs", "1"]
    try:
        assert main() == 0
    finally:
        sys.argv = argv
    lines = [json.loads(x) for x in (tmp_path / "train_narrowband.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [e["id"] + "_nb8k" for e in picked]
    source = {e["id"]: e for e in entries}
    for x in lines:
        src = source[x["id"].removesuffix("_nb8k")]
        assert (x["text"], x["right_context_ms"], x["duration"]) == (src["text"], 720, 0.5)
        assert x["aug"] == {"speed": 1.0, "narrowband_hz": 8000}
        y, sr = sf.read(x["audio"], dtype="float32")
        assert sr == 16000 and len(y) == 8000
        power = np.abs(np.fft.rfft(y)) ** 2
        freq = np.fft.rfftfreq(len(y), 1 / sr)
        assert power[freq > 4100].sum() < 1e-3 * power.sum()  # the band above 4 kHz is gone
        assert power[(freq > 300) & (freq < 3500)].sum() > 0.5 * power.sum()  # the telephone band stays


def test_narrowband_refuses_a_share_outside_0_to_1():
    from narrowband import parse_shares

    assert parse_shares("train=0.25,train_synthetic_short=1") == {"train": 0.25, "train_synthetic_short": 1.0}
    with pytest.raises(ValueError, match="within 0..1"):
        parse_shares("train=1.5")

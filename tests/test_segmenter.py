"""Segmenter: pauses and length limits close segments; incremental pushing equals one batch."""

from __future__ import annotations

import random

import pytest

from reallm_cli.results import Word
from reallm_cli.segmenter import Segmenter, SegmenterConfig, segment_words


def words_at(spans: list[tuple[float, float]], text: str = "w") -> list[Word]:
    return [Word(f"{text}{i}", s, e, e + 0.3) for i, (s, e) in enumerate(spans)]


def test_pause_splits_and_short_gap_does_not():
    ws = words_at([(0.0, 0.4), (0.5, 0.9), (1.0, 1.3), (2.1, 2.5), (2.6, 3.0)])  # gap 0.8 s after w2
    segs = segment_words(ws, SegmenterConfig(pause_s=0.7))
    assert [s.text for s in segs] == ["w0 w1 w2", "w3 w4"]
    assert (segs[0].start_s, segs[0].end_s) == (0.0, 1.3)
    assert (segs[1].start_s, segs[1].end_s) == (2.1, 3.0)


def test_max_words_and_max_seconds():
    ws = words_at([(i * 0.3, i * 0.3 + 0.25) for i in range(10)])
    segs = segment_words(ws, SegmenterConfig(max_words=4, max_segment_s=100))
    assert [len(s.words) for s in segs] == [4, 4, 2]
    segs = segment_words(ws, SegmenterConfig(max_words=100, max_segment_s=1.0))
    assert all(s.end_s - s.start_s <= 1.0 for s in segs)
    assert sum(len(s.words) for s in segs) == 10 and len(segs) > 1


def test_sentence_end_closes_long_enough_segment():
    ws = [Word("Hi.", 0.0, 0.3, 0.5), Word("there", 0.4, 0.7, 0.9), Word("end.", 4.5, 4.8, 5.0), Word("next", 4.9, 5.1, 5.3)]
    segs = segment_words(ws, SegmenterConfig(pause_s=5.0, min_sentence_s=4.0))
    # "Hi." is too short a segment to close on its full stop; "end." closes after 4.8 s.
    assert [s.text for s in segs] == ["Hi. there end.", "next"]


def test_incremental_equals_batch():
    rng = random.Random(0)
    t = 0.0
    spans = []
    for _ in range(200):
        t += rng.choice([0.05, 0.1, 0.2, 0.9, 1.5])
        d = rng.uniform(0.1, 0.6)
        spans.append((t, t + d))
        t += d
    ws = words_at(spans)
    batch = segment_words(ws)
    seg = Segmenter()
    inc = []
    i = 0
    while i < len(ws):
        n = rng.randint(0, 5)
        inc += seg.push(ws[i : i + n])
        i += n
    inc += seg.flush()
    assert inc == batch
    assert [w for s in inc for w in s.words] == ws  # no word lost or duplicated


def test_advance_closes_after_silence_and_flush_empties():
    seg = Segmenter(SegmenterConfig(pause_s=0.7, settle_s=1.0))
    assert seg.push(words_at([(0.0, 0.5)])) == []
    assert seg.advance(1.5) == []  # 1.0 s after the word: still within pause + settle
    closed = seg.advance(2.3)
    assert [s.text for s in closed] == ["w0"]
    assert seg.open_words == () and seg.flush() == []


def test_bad_config_refused():
    with pytest.raises(ValueError):
        SegmenterConfig(pause_s=0)

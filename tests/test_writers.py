"""Writers: exact srt/vtt/txt text, json/jsonl round trips, streaming flushes, atomic replace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reallm_cli.errors import ReallmError
from reallm_cli.results import Event, Segment, Transcript, Word
from reallm_cli.writers import (
    format_timestamp,
    format_transcript,
    open_stream_writer,
    output_path,
    resolve_format,
    write_transcript,
)

W = [Word("hello", 0.0, 0.48, 0.72), Word("world", 0.48, 0.96, 1.2), Word("again", 3661.5, 3662.0, 3662.2)]
SEGS = (Segment(0.0, 0.96, tuple(W[:2])), Segment(3661.5, 3662.0, (W[2],)))
T = Transcript(path="a.wav", duration_s=3663.0, segments=SEGS)


def test_timestamps():
    assert format_timestamp(3661.5) == "01:01:01,500"
    assert format_timestamp(0.0004, ".") == "00:00:00.000"
    assert format_timestamp(-1) == "00:00:00,000"
    assert format_timestamp(59.9996) == "00:01:00,000"


def test_srt_vtt_txt_text():
    assert format_transcript(T, "srt") == (
        "1\n00:00:00,000 --> 00:00:00,960\nhello world\n\n2\n01:01:01,500 --> 01:01:02,000\nagain\n\n"
    )
    assert format_transcript(T, "vtt") == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:00.960\nhello world\n\n01:01:01.500 --> 01:01:02.000\nagain\n\n"
    )
    assert format_transcript(T, "txt") == "hello world\nagain\n"


def test_json_has_words_segments_duration():
    doc = json.loads(format_transcript(T, "json"))
    assert doc["duration_s"] == 3663.0 and doc["text"] == "hello world again"
    words = [w for s in doc["segments"] for w in s["words"]]  # no flat list: it would hold the whole file
    assert [w["text"] for w in words] == ["hello", "world", "again"] and doc["file"] == "a.wav"
    assert words[1] == {"text": "world", "start_s": 0.48, "end_s": 0.96, "emit_s": 1.2}
    assert [s["text"] for s in doc["segments"]] == ["hello world", "again"]
    assert doc["segments"][1]["words"][0]["start_s"] == 3661.5


def test_jsonl_whole_file():
    lines = [json.loads(x) for x in format_transcript(T, "jsonl").splitlines()]
    assert [x["type"] for x in lines] == ["final", "segment", "final", "segment", "end"]
    assert lines[-1]["duration_s"] == 3663.0


@pytest.mark.parametrize(
    ("path", "fmt", "want"),
    [("a.srt", None, "srt"), ("a.VTT", None, "vtt"), ("a.ndjson", None, "jsonl"), ("a.out", "json", "json"), ("a.txt", None, "txt")],
)
def test_resolve_format(path, fmt, want):
    assert resolve_format(path, fmt) == want


@pytest.mark.parametrize(("path", "fmt"), [("a.doc", None), ("a", None), ("a.txt", "docx")])
def test_unknown_format_is_user_error(path, fmt):
    with pytest.raises(ReallmError, match="format"):
        resolve_format(path, fmt)


def test_write_transcript_atomic(tmp_path, monkeypatch):
    out = tmp_path / "a.srt"
    write_transcript(T, out)
    assert out.read_text() == format_transcript(T, "srt")
    good = out.read_text()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_transcript(Transcript("b", 1.0, ()), out)
    assert out.read_text() == good  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["a.srt"]  # and no temp file is left behind
    assert output_path(tmp_path, "/x/talk.wav", "vtt") == tmp_path / "talk.vtt"


def test_an_atomic_write_gets_an_ordinary_files_mode(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "a.txt"
        write_transcript(T, out)
        assert out.stat().st_mode & 0o777 == 0o644  # as open() would make it, not mkstemp's 0600
        out.chmod(0o640)
        write_transcript(T, out)
        assert out.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its mode
    finally:
        os.umask(old)


@pytest.mark.parametrize("fmt", ["txt", "srt", "vtt", "jsonl", "json"])
def test_stream_writer_matches_whole_file_and_is_readable_before_close(tmp_path, fmt):
    path = tmp_path / f"live.{fmt}"
    w = open_stream_writer(path)
    w.event(Event(final=tuple(W[:2]), partial="", audio_s=1.2))
    w.segment(SEGS[0])
    if fmt != "json":  # json is rate-limited; the others must be on disk at once
        assert "hello world" in path.read_text()
    w.event(Event(final=(W[2],), audio_s=3662.2))
    w.segment(SEGS[1])
    w.close(3663.0)
    got = path.read_text()
    if fmt in ("txt", "srt", "vtt"):
        assert got == format_transcript(T, fmt)
    elif fmt == "json":
        doc = json.loads(got)
        assert doc["duration_s"] == 3663.0 and doc["text"] == "hello world again"
    else:
        types = [json.loads(x)["type"] for x in got.splitlines()]
        assert types == ["final", "segment", "final", "segment", "end"]


def test_jsonl_records_partials_only_when_changed(tmp_path):
    path = tmp_path / "e.jsonl"
    w = open_stream_writer(path)
    for p in ["he", "he", "hell", ""]:
        w.event(Event(partial=p, audio_s=0.5))
    w.close(1.0)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(x["type"], x.get("text")) for x in lines] == [("partial", "he"), ("partial", "hell"), ("partial", ""), ("end", None)]


def test_srt_append_continues_numbering_and_clock(tmp_path):
    path = tmp_path / "a.srt"
    w = open_stream_writer(path)
    w.segment(SEGS[0])
    w.close(2.0)
    w = open_stream_writer(path, append=True)
    w.segment(Segment(0.5, 1.0, (Word("more", 0.5, 1.0, 1.2),)))
    w.close(2.0)
    text = path.read_text()
    assert text.endswith("2\n00:00:01,460 --> 00:00:01,960\nmore\n\n")  # offset by the last cue end, 0.96 s
    assert text.count("-->") == 2


def test_vtt_append_keeps_one_header(tmp_path):
    path = tmp_path / "a.vtt"
    for _ in range(2):
        w = open_stream_writer(path, append=True)
        w.segment(SEGS[0])
        w.close(1.0)
    assert path.read_text().count("WEBVTT") == 1 and path.read_text().count("-->") == 2


def test_json_append_refused_and_bad_folder(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(ReallmError, match="jsonl"):
        open_stream_writer(tmp_path / "a.json", append=True)
    with pytest.raises(ReallmError, match="does not exist"):
        open_stream_writer(tmp_path / "nope" / "a.srt")


def test_nothing_lost_on_kill(tmp_path):
    """A process killed with SIGKILL right after writing a segment leaves that cue complete on disk."""
    path = tmp_path / "k.srt"
    code = f"""
import os, signal
from reallm_cli.results import Segment, Word
from reallm_cli.writers import open_stream_writer
w = open_stream_writer({str(path)!r})
w.segment(Segment(0.0, 1.0, (Word("kept", 0.0, 1.0, 1.2),)))
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -9
    assert path.read_text() == "1\n00:00:00,000 --> 00:00:01,000\nkept\n\n"

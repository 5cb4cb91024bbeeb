"""The live loop: audio blocks from a source → recogniser session → segments → outputs and view.

Independent of where audio comes from (a microphone, or a scripted source in tests) and of the
terminal: the CLI supplies sinks (stdout, an output file) and a refresh callback for the view.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from reallm_cli.results import Event, Segment
from reallm_cli.segmenter import Segmenter
from reallm_cli.timebase import SAMPLE_RATE
from reallm_cli.view import LiveStats, TranscriptView, level_db


class AudioSource(Protocol):
    """What the loop needs from a microphone (see ``audio.microphone.Microphone``)."""

    overflows: int
    dropped_blocks: int

    def read(self, timeout_s: float = 0.1) -> np.ndarray | None: ...

    def stop(self) -> None: ...

    @property
    def finished(self) -> bool: ...

    @property
    def captured_s(self) -> float: ...


class Sink(Protocol):
    """Where results go; ``writers.StreamWriter`` fits, and so does ``StdoutLines``."""

    def event(self, event: Event) -> None: ...

    def segment(self, segment: Segment) -> None: ...

    def close(self, duration_s: float) -> None: ...


class StdoutLines:
    """One line per finished segment on stdout, flushed at once (so pipes see it live)."""

    def event(self, event: Event) -> None:
        pass

    def segment(self, segment: Segment) -> None:
        if segment.words:
            # sys.stdout is looked up each time: the live view swaps it for a proxy while it runs.
            print(segment.text, file=sys.stdout, flush=True)

    def close(self, duration_s: float) -> None:
        pass


def run_live(
    source: AudioSource,
    session,
    *,
    sinks: list[Sink],
    stop: threading.Event,
    duration_s: float | None = None,
    view: TranscriptView | None = None,
    refresh: Callable[[], None] | None = None,
    segmenter: Segmenter | None = None,
    refresh_interval_s: float = 0.1,
) -> LiveStats:
    """Decode until ``stop`` is set, ``duration_s`` of audio was taken, or the source ends.

    After stopping, the blocks already captured are still decoded and the session flushed, so the
    last words reach the sinks; every sink is closed. Returns the final statistics.
    """
    view = view or TranscriptView(history_lines=0)
    stats = view.stats
    segmenter = segmenter or Segmenter()
    limit_samples = None if duration_s is None else int(round(duration_s * SAMPLE_RATE))
    pushed = 0
    sinks = list(sinks)
    last_refresh = 0.0

    def send(method: str, arg) -> None:
        for sink in list(sinks):
            try:
                getattr(sink, method)(arg)
            except BrokenPipeError:
                # The reader went away (e.g. `reallm listen | head -3`): that is a request to stop.
                sinks.remove(sink)
                stop.set()

    def handle(event: Event) -> None:
        send("event", event)
        closed = segmenter.push(event.final) + segmenter.advance(event.audio_s)
        for seg in closed:
            send("segment", seg)
            if seg.words:
                view.add_line(seg.text)
        stats.words += len(event.final)
        stats.segments += sum(1 for s in closed if s.words)
        view.open_text = " ".join(w.text for w in segmenter.open_words)
        view.partial = event.partial

    def update_stats() -> None:
        captured = source.captured_s
        if limit_samples is not None:
            captured = min(captured, limit_samples / SAMPLE_RATE)
        stats.captured_s = max(captured, session.audio_s)
        stats.decoded_s = session.audio_s
        stats.compute_s = session.stats.compute_s
        stats.overflows = source.overflows + source.dropped_blocks

    stopping = False
    try:
        while True:
            if not stopping and (stop.is_set() or (limit_samples is not None and pushed >= limit_samples)):
                source.stop()
                stopping = stats.stopping = True
            block = source.read(0.0 if stopping else 0.1)
            if block is None:
                if stopping or source.finished:
                    break
            else:
                if limit_samples is not None:
                    block = block[: max(0, limit_samples - pushed)]
                if len(block):
                    pushed += len(block)
                    stats.level_db = level_db(block)
                    handle(session.push(block))
            update_stats()
            now = time.monotonic()
            if refresh is not None and now - last_refresh >= refresh_interval_s:
                refresh()
                last_refresh = now
    finally:
        source.stop()
    # End of stream: the recogniser's remaining words, then the open segment.
    final = session.flush()
    send("event", final)
    closed = segmenter.push(final.final) + segmenter.flush()
    stats.words += len(final.final)
    for seg in closed:
        send("segment", seg)
        if seg.words:
            view.add_line(seg.text)
            stats.segments += 1
    view.open_text = view.partial = ""
    update_stats()
    for sink in sinks:
        try:
            sink.close(session.audio_s)
        except BrokenPipeError:
            pass
    if refresh is not None:
        refresh()
    return stats

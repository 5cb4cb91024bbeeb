"""Files of any length through the streaming engine, in bounded memory.

A file is read in blocks and pushed through the very ``Session`` a microphone uses; large blocks let
the encoder run many chunks in one masked pass, which gives the same result as live streaming.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass

from reallm_cli.audio.source import AudioError, open_audio
from reallm_cli.engine import Recognizer
from reallm_cli.pipeline import pipelined_events
from reallm_cli.results import Segment, Transcript
from reallm_cli.segmenter import Segmenter
from reallm_cli.timebase import SAMPLE_RATE


@dataclass(frozen=True)
class TranscribeOptions:
    block_s: float = 8.0  # audio pushed per call; larger is faster, any size gives the same words
    # read and encode the next block in a second thread while the decoder reads this one (``pipeline``);
    # torch's threads are split between the two: for two threads or more
    pipeline: bool = False


def file_options(block_s: float = TranscribeOptions.block_s) -> TranscribeOptions:
    """Options for ``reallm transcribe`` (one process or a ``--jobs`` worker): with two torch threads or more
    the file is pipelined, the encoder of the next block beside the decoder of this one."""
    import torch

    return TranscribeOptions(block_s=block_s, pipeline=torch.get_num_threads() >= 2)


@dataclass(frozen=True)
class FileResult:
    """What streaming one file produced, besides the segments handed out as they closed."""

    path: str
    duration_s: float  # audio decoded (less than the file's length if it is damaged)
    compute_s: float
    n_segments: int
    damage: str | None = None  # why decoding stopped early, or None: the whole file was read


def stream_file(
    recognizer: Recognizer,
    path: str,
    on_segment: Callable[[Segment], None],
    options: TranscribeOptions = TranscribeOptions(),
    on_progress: Callable[[float, float], None] | None = None,
) -> FileResult:
    """Stream one file through a fresh session; each segment goes to ``on_segment`` the moment it closes.

    Nothing is kept: memory is bounded for any length. Damaged audio (an ``AudioError`` after the file
    opened) ends the stream where it stopped decoding; the words before it are flushed and handed out,
    and ``FileResult.damage`` says what happened. ``KeyboardInterrupt`` hands out the words already final
    (the open segment) before it propagates, so an interrupted run loses only words still in progress.
    """
    source = open_audio(path)
    session = recognizer.session()
    segmenter = Segmenter()
    n_segments = 0
    damage = None

    def emit(segments) -> None:
        nonlocal n_segments
        for segment in segments:
            n_segments += 1
            on_segment(segment)

    block = max(1, int(options.block_s * SAMPLE_RATE))
    try:
        try:
            blocks = source.iter_blocks(block)
            events = pipelined_events(session, blocks) if options.pipeline else (session.push(b) for b in blocks)
            with closing(events):  # an interrupt stops the pipeline's second thread too
                for event in events:
                    if event.final:
                        emit(segmenter.push(event.final))
                    if on_progress:
                        on_progress(session.audio_s, source.duration_s)
        except AudioError as exc:
            damage = str(exc)
        emit(segmenter.push(session.flush().final))
    except KeyboardInterrupt:
        emit(segmenter.flush())
        raise
    emit(segmenter.flush())
    return FileResult(path=str(path), duration_s=session.audio_s, compute_s=session.stats.compute_s,
                      n_segments=n_segments, damage=damage)


def transcribe_file(
    recognizer: Recognizer,
    path: str,
    options: TranscribeOptions = TranscribeOptions(),
    on_progress: Callable[[float, float], None] | None = None,
) -> Transcript:
    """A whole file's transcript in memory (evaluation, short files); damaged audio raises ``AudioError``."""
    segments: list[Segment] = []
    result = stream_file(recognizer, path, segments.append, options, on_progress)
    if result.damage:
        raise AudioError(result.damage)
    return Transcript(path=str(path), duration_s=result.duration_s, segments=tuple(segments), compute_s=result.compute_s)

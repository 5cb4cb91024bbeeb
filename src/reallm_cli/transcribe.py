"""Files of any length through the streaming engine, in bounded memory.

A file is read in blocks and pushed through the very ``Session`` a microphone uses; large blocks let
the encoder run many chunks in one masked pass, which gives the same result as live streaming.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from reallm_cli.audio.source import open_audio
from reallm_cli.engine import Recognizer
from reallm_cli.results import Transcript, Word
from reallm_cli.segmenter import Segmenter
from reallm_cli.timebase import SAMPLE_RATE


@dataclass(frozen=True)
class TranscribeOptions:
    block_s: float = 8.0  # audio pushed per call; larger is faster, any size gives the same words


def transcribe_file(
    recognizer: Recognizer,
    path: str,
    options: TranscribeOptions = TranscribeOptions(),
    on_progress: Callable[[float, float], None] | None = None,
    on_words: Callable[[tuple[Word, ...]], None] | None = None,
) -> Transcript:
    """Stream one file through a fresh session; ``on_progress(audio_done_s, duration_s)`` after each block."""
    source = open_audio(path)
    session = recognizer.session()
    segmenter = Segmenter()
    segments = []
    block = max(1, int(options.block_s * SAMPLE_RATE))
    for audio in source.iter_blocks(block):
        event = session.push(audio)
        if event.final:
            segments.extend(segmenter.push(event.final))
            if on_words:
                on_words(event.final)
        if on_progress:
            on_progress(session.audio_s, source.duration_s)
    event = session.flush()
    segments.extend(segmenter.push(event.final))
    segments.extend(segmenter.flush())
    if on_words and event.final:
        on_words(event.final)
    return Transcript(path=str(path), duration_s=session.audio_s, segments=tuple(segments), compute_s=session.compute_s)

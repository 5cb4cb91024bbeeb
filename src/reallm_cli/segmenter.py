"""Groups a stream of final words into segments (subtitle cues, output lines).

The model has no end-pointer, so segment boundaries come from the words' own times: a pause between
two words, or a segment grown too long to read as one subtitle. Works incrementally: push words as
they become final, get back the segments that closed; ``flush`` at the end of the stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from reallm_cli.results import Segment, Word

_SENTENCE_END = (".", "?", "!", "。", "？", "！")


@dataclass(frozen=True)
class SegmenterConfig:
    pause_s: float = 0.7  # a gap at least this long between two words starts a new segment
    max_segment_s: float = 12.0  # never let a segment span more than this (two subtitle lines' worth)
    max_words: int = 32
    # A sentence end closes a segment once it is at least this long, so cues break at full stops
    # rather than mid-sentence when the speaker does not pause.
    min_sentence_s: float = 4.0
    # Live use: the open segment is closed by ``advance`` when this much audio beyond its last word
    # has been decoded without a new word. The margin beyond ``pause_s`` covers decoder latency
    # (a word becomes final only some chunks after it ends).
    settle_s: float = 1.0

    def __post_init__(self) -> None:
        if self.pause_s <= 0 or self.max_segment_s <= 0 or self.max_words < 1 or self.settle_s < 0:
            raise ValueError(f"invalid segmenter config: {self}")


class Segmenter:
    """Incremental word → segment grouping; holds only the words of the open segment."""

    def __init__(self, config: SegmenterConfig | None = None) -> None:
        self.config = config or SegmenterConfig()
        self._open: list[Word] = []

    @property
    def open_words(self) -> tuple[Word, ...]:
        """Final words of the segment still being built (not yet returned)."""
        return tuple(self._open)

    def push(self, words: Iterable[Word]) -> list[Segment]:
        """Add final words (in stream order); returns the segments they closed."""
        closed: list[Segment] = []
        cfg = self.config
        for word in words:
            if self._open:
                last = self._open[-1]
                first = self._open[0]
                too_long = word.end_s - first.start_s > cfg.max_segment_s or len(self._open) >= cfg.max_words
                paused = word.start_s - last.end_s >= cfg.pause_s
                sentence_done = (
                    last.text.endswith(_SENTENCE_END) and last.end_s - first.start_s >= cfg.min_sentence_s
                )
                if too_long or paused or sentence_done:
                    closed.append(self._close())
            self._open.append(word)
        return closed

    def advance(self, audio_s: float) -> list[Segment]:
        """Tell the segmenter how far the stream has been decoded; closes the open segment after silence."""
        if self._open and audio_s - self._open[-1].end_s >= self.config.pause_s + self.config.settle_s:
            return [self._close()]
        return []

    def flush(self) -> list[Segment]:
        """End of stream: the open segment (if any) is closed."""
        return [self._close()] if self._open else []

    def _close(self) -> Segment:
        words = tuple(self._open)
        self._open = []
        return Segment(start_s=words[0].start_s, end_s=words[-1].end_s, words=words)


def segment_words(words: Iterable[Word], config: SegmenterConfig | None = None) -> list[Segment]:
    """Whole-stream convenience: all words at once → all segments."""
    seg = Segmenter(config)
    return seg.push(words) + seg.flush()

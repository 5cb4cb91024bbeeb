"""What recognition produces: plain frozen dataclasses, shared by the engine, writers and CLI."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Word:
    text: str
    start_s: float  # stream time at which the chunk holding its first piece began
    end_s: float  # stream time at which the chunk holding its last piece ended
    emit_s: float  # stream time by which its whole text was shown: chunk end + encoder and front-end look-ahead


@dataclass(frozen=True)
class Event:
    """What one ``Session.push``/``flush`` returns."""

    final: tuple[Word, ...] = ()  # words that became final during this call, in order
    partial: str = ""  # text still in progress after this call (may still change)
    audio_s: float = 0.0  # stream time consumed so far


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    words: tuple[Word, ...] = field(default_factory=tuple)

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)


@dataclass(frozen=True)
class Transcript:
    """A whole file's result."""

    path: str
    duration_s: float
    segments: tuple[Segment, ...]
    compute_s: float = 0.0  # engine time spent on it (real-time factor = compute_s / duration_s)

    @property
    def words(self) -> tuple[Word, ...]:
        return tuple(w for s in self.segments for w in s.words)

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.words)

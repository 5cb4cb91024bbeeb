"""Test doubles with the engine's Recognizer/Session API (``load``, ``session``, ``push``, ``flush``).

``LevelRecognizer`` "hears" loudness: each run of loud 240 ms chunks becomes one word, so a test that
plays speech into a microphone can prove audio really arrived. ``ScriptedRecognizer`` emits given
words at given times, for exact checks of the live loop and the writers.
Used by the CLI through REALLM_TEST_RECOGNIZER=fake_recognizer:LevelRecognizer (tests/ on PYTHONPATH).
"""

from __future__ import annotations

import time

import numpy as np

from reallm_cli.errors import ModelError
from reallm_cli.results import Event, Word
from reallm_cli.stats import SessionStats

SAMPLE_RATE = 16_000
CHUNK_SAMPLES = 3840  # 240 ms


class LevelSession:
    def __init__(self, threshold_db: float) -> None:
        self.threshold_db = threshold_db
        self._buf = np.zeros(0, np.float32)
        self._chunks = 0
        self._run_start: float | None = None
        self._run_end = 0.0
        self._n_words = 0
        self._samples = 0
        self.stats = SessionStats()

    @property
    def audio_s(self) -> float:
        return self._samples / SAMPLE_RATE

    def _word(self, emit_s: float) -> Word:
        w = Word(f"speech{self._n_words}", self._run_start, self._run_end, emit_s)
        self._n_words += 1
        self._run_start = None
        return w

    def _chunk(self, chunk: np.ndarray) -> list[Word]:
        start_s = self._chunks * CHUNK_SAMPLES / SAMPLE_RATE
        self._chunks += 1
        end_s = start_s + len(chunk) / SAMPLE_RATE
        rms = float(np.sqrt(np.mean(np.square(chunk, dtype=np.float64)))) if len(chunk) else 0.0
        if 20 * np.log10(max(rms, 1e-9)) > self.threshold_db:
            if self._run_start is None:
                self._run_start = start_s
            self._run_end = end_s
            return []
        return [self._word(end_s)] if self._run_start is not None else []

    def push(self, audio: np.ndarray) -> Event:
        t0 = time.perf_counter()
        audio = np.asarray(audio, np.float32).reshape(-1)
        self._samples += len(audio)
        self._buf = np.concatenate([self._buf, audio])
        final: list[Word] = []
        while len(self._buf) >= CHUNK_SAMPLES:
            final += self._chunk(self._buf[:CHUNK_SAMPLES])
            self._buf = self._buf[CHUNK_SAMPLES:]
        self.stats.compute_s += time.perf_counter() - t0
        partial = f"speech{self._n_words}" if self._run_start is not None else ""
        return Event(final=tuple(final), partial=partial, audio_s=self.audio_s)

    def flush(self) -> Event:
        final = self._chunk(self._buf) if len(self._buf) else []
        self._buf = np.zeros(0, np.float32)
        if self._run_start is not None:
            final.append(self._word(self.audio_s))
        return Event(final=tuple(final), partial="", audio_s=self.audio_s)


class LevelRecognizer:
    sample_rate = SAMPLE_RATE
    threshold_db = -40.0

    @classmethod
    def load(cls, model: str | None, precision: str = "auto") -> "LevelRecognizer":
        if model == "missing-model":
            raise ModelError("model file not found: missing-model")
        return cls()

    def session(self) -> LevelSession:
        return LevelSession(self.threshold_db)


class ScriptedSession:
    """Emits each scripted word once the stream has passed its end plus ``delay_s``."""

    def __init__(self, words: list[Word], delay_s: float) -> None:
        self._todo = list(words)
        self.delay_s = delay_s
        self._samples = 0
        self.stats = SessionStats()

    @property
    def audio_s(self) -> float:
        return self._samples / SAMPLE_RATE

    def _due(self, until_s: float) -> tuple[Word, ...]:
        out = []
        while self._todo and self._todo[0].end_s + self.delay_s <= until_s:
            w = self._todo.pop(0)
            out.append(Word(w.text, w.start_s, w.end_s, until_s))
        return tuple(out)

    def push(self, audio: np.ndarray) -> Event:
        self._samples += len(audio)
        self.stats.compute_s += 0.25 * len(audio) / SAMPLE_RATE  # pretend: RTF 0.25
        final = self._due(self.audio_s)
        partial = self._todo[0].text if self._todo and self._todo[0].start_s <= self.audio_s else ""
        return Event(final=final, partial=partial, audio_s=self.audio_s)

    def flush(self) -> Event:
        final = tuple(w for w in self._todo if w.start_s < self.audio_s)
        self._todo = []
        return Event(final=final, partial="", audio_s=self.audio_s)


class ScriptedRecognizer:
    sample_rate = SAMPLE_RATE

    def __init__(self, words: list[Word], delay_s: float = 0.48) -> None:
        self.words = words
        self.delay_s = delay_s

    def session(self) -> ScriptedSession:
        return ScriptedSession(self.words, self.delay_s)

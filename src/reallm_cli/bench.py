"""What a user of the streaming engine feels, measured the way a live stream uses it.

Audio is pushed in blocks of ``block_ms`` (as a microphone delivers it), after a warm-up; every push is
timed with ``perf_counter``. Real-time factor = compute seconds / audio seconds (below 1 is faster than
real time). By default the audio is the speech clip shipped in the package (``reallm_cli.samples``:
jfk, with its reference transcript and word end times), so the figures include the decoder's work on
real words, the WER, and how long after a word ended it appeared:

* emission delay of a word = the stream position (audio pushed so far) at the push after which its
  whole text was on screen, minus the word's reference end time, over words that match the reference;
* first word = the stream position at the push after which the first text appeared.

``run_streams`` measures many live streams served by one process: one model, N sessions fed one block
each in turn, as a server with N microphones would.
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from reallm_cli.engine import Recognizer
from reallm_cli.model.quantize import parameter_count
from reallm_cli.results import Event, Word
from reallm_cli.stats import Reservoir
from reallm_cli.timebase import SAMPLE_RATE


@dataclass(frozen=True)
class BenchResult:
    model: str
    chunk_ms: int  # audio pushed per call (the model decodes its own chunk length, model_chunk_ms)
    threads: int
    audio_s: float
    compute_s: float
    rtf: float
    chunk_p50_ms: float  # compute time of one push of chunk_ms of audio
    chunk_p95_ms: float
    chunk_p99_ms: float
    chunk_max_ms: float
    load_s: float
    first_word_s: float | None  # stream time at which the first word was shown (None: no word)
    pieces_per_chunk: float
    peak_rss_mb: float
    n_params: int
    wer: float | None = None  # None: no reference known
    delay_p50_s: float | None = None  # emission delay (None: no reference word times)
    delay_p95_s: float | None = None
    delay_words: int = 0  # words the delays are over (hypothesis words that match the reference)
    text: str = ""
    precision: str = ""
    audio: str = ""  # what was streamed: a file, or "sample:jfk"
    model_chunk_ms: int = 0
    reference: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class StreamsResult:
    """N live streams in one process: each stream's figures, and whether the process kept up."""

    model: str
    precision: str
    threads: int
    streams: int
    chunk_ms: int
    audio_s: float  # per stream
    load_s: float
    aggregate_rtf: float  # compute of all streams / audio of one stream: below 1 keeps up on average
    round_p50_ms: float  # compute time of one round (one block pushed to every stream)
    round_p99_ms: float
    max_lag_s: float  # worst time from a block's arrival to the end of its round, in a real-time schedule
    kept_real_time: bool  # every round ended within two blocks of its block's arrival
    peak_rss_mb: float
    per_stream: tuple[dict, ...] = ()  # {"stream", "rtf", "chunk_p50_ms", "chunk_p99_ms", "words"}


@dataclass(frozen=True)
class Reference:
    text: str
    words: tuple[dict, ...] | None = None  # word times {"word", "end_s"}, or None


def synthetic_audio(duration_s: float, seed: int = 0) -> np.ndarray:
    """Speech-like test signal: harmonic bursts with a moving pitch and pauses, plus a little noise."""
    rng = np.random.default_rng(seed)
    n = int(duration_s * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = (np.sin(2 * np.pi * 1.9 * t) > -0.3).astype(np.float32)
    x = 0.2 * voiced * envelope + 0.01 * rng.standard_normal(n)
    return x.astype(np.float32)


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def known_reference(path: str | Path) -> Reference | None:
    """The reference of an audio file when it is known: the shipped sample (same bytes), or an entry of a
    ``manifest.jsonl`` in the file's folder or the two above it (``audio`` naming this file, ``text``)."""
    from reallm_cli.samples import sample

    path = Path(path)
    try:
        jfk = sample()
        if path.stat().st_size == jfk.audio.stat().st_size and _sha256(path) == _sha256(jfk.audio):
            return Reference(jfk.text, jfk.words)
        for folder in list(path.resolve().parents)[:3]:
            manifest = folder / "manifest.jsonl"
            if not manifest.is_file():
                continue
            for line in manifest.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("text"), str) and \
                        (folder / str(entry.get("audio", ""))).resolve() == path.resolve():
                    return Reference(entry["text"])
    except OSError:
        return None
    return None


class _EmissionClock:
    """Stamps every final word with the stream position after which its whole text was shown.

    A word is shown as the partial text while it grows; it has been on screen whole since the last push
    that changed that partial (if it was final by then), else since the push that made it final."""

    def __init__(self) -> None:
        self.partial = ""
        self.partial_since = 0.0
        self.stamped: list[tuple[Word, float]] = []
        self.first_s: float | None = None

    def event(self, event: Event) -> None:
        now = event.audio_s
        for k, word in enumerate(event.final):
            whole_before = k == 0 and self.partial and word.text == self.partial
            self.stamped.append((word, self.partial_since if whole_before else now))
        if event.final or event.partial != self.partial:
            self.partial_since = now
        self.partial = event.partial
        if self.first_s is None and (event.final or event.partial):
            self.first_s = now

    @property
    def words(self) -> list[Word]:
        return [w for w, _ in self.stamped]

    def delays(self, ref_words) -> list[float]:
        from reallm_cli.evaluate import _matched_delays

        return _matched_delays(list(ref_words), [replace(w, emit_s=at) for w, at in self.stamped])


def word_error_rate(reference: str, words) -> float:
    """WER of ``words`` against ``reference``, both normalised: the very figure ``reallm eval`` gives."""
    from reallm_cli.evaluate import _score
    from reallm_cli.text import normalize_text

    return _score([normalize_text(reference)], [normalize_text(" ".join(w.text for w in words))])[0]


def _warm_up(recognizer: Recognizer, audio: np.ndarray, block: int, warmup_s: float) -> None:
    warm = recognizer.session()
    for i in range(0, min(len(audio), int(warmup_s * SAMPLE_RATE)), block):
        warm.push(audio[i : i + block])
    warm.flush()


def _pct_ms(times_s: Reservoir, q: float) -> float:
    return round(times_s.percentile(q) * 1000, 2)


def run_bench(
    recognizer: Recognizer,
    audio: np.ndarray,
    name: str,
    load_s: float,
    warmup_s: float = 2.0,
    block_ms: int | None = None,
    reference: Reference | None = None,
    audio_name: str = "",
) -> BenchResult:
    """Push ``audio`` block by block through a fresh session; time every push; score against ``reference``."""
    model_chunk_ms = recognizer.model.chunk_ms
    block_ms = block_ms or model_chunk_ms
    block = SAMPLE_RATE * block_ms // 1000
    _warm_up(recognizer, audio, block, warmup_s)

    session = recognizer.session()
    clock = _EmissionClock()
    push_s = Reservoir()  # exact percentiles up to its capacity of pushes (16 min of 240 ms blocks)
    for i in range(0, len(audio), block):
        t0 = time.perf_counter()
        event = session.push(audio[i : i + block])
        push_s.add(time.perf_counter() - t0)
        clock.event(event)
    clock.event(session.flush())
    words = clock.words
    stats = session.stats
    audio_s = len(audio) / SAMPLE_RATE
    wer = delays = None
    if reference is not None:
        wer = round(word_error_rate(reference.text, words), 4)
        if reference.words:
            delays = clock.delays(reference.words)
    return BenchResult(
        model=name,
        chunk_ms=block_ms,
        threads=torch.get_num_threads(),
        audio_s=round(audio_s, 3),
        compute_s=round(stats.compute_s, 3),
        rtf=round(stats.compute_s / audio_s, 4),
        chunk_p50_ms=_pct_ms(push_s, 50),
        chunk_p95_ms=_pct_ms(push_s, 95),
        chunk_p99_ms=_pct_ms(push_s, 99),
        chunk_max_ms=round(push_s.max * 1000, 2),
        load_s=round(load_s, 3),
        first_word_s=None if clock.first_s is None else round(clock.first_s, 3),
        pieces_per_chunk=round(stats.pieces_per_chunk, 2),
        peak_rss_mb=round(peak_rss_mb(), 1),
        n_params=parameter_count(recognizer.model),
        wer=wer,
        delay_p50_s=round(float(np.percentile(delays, 50)), 3) if delays else None,
        delay_p95_s=round(float(np.percentile(delays, 95)), 3) if delays else None,
        delay_words=len(delays or ()),
        text=" ".join(w.text for w in words),
        precision=recognizer.precision,
        audio=audio_name,
        model_chunk_ms=model_chunk_ms,
        reference=None if reference is None else reference.text,
    )


def run_streams(
    recognizer: Recognizer,
    audio: np.ndarray,
    n_streams: int,
    name: str,
    load_s: float,
    block_ms: int | None = None,
    warmup_s: float = 2.0,
) -> StreamsResult:
    """``n_streams`` sessions of one recognizer, fed one block each in turn (a round per block).

    Stream k hears ``audio`` rotated by k/n of its length, so the streams' words do not fall in the same
    chunks, and starts ``k mod h`` rounds late, h the encoder's hop in blocks, so that streams begun at
    random moments are mimicked: their encoder hops do not all fall in the same round.

    A round's block arrives at the end of its ``block_ms``; in a real-time schedule a round starts when its
    block has arrived and the previous round has ended, and the lag is the time from the block's arrival to
    the round's end. The process kept real time if no lag exceeded two blocks."""
    block_ms = block_ms or recognizer.model.chunk_ms
    block = SAMPLE_RATE * block_ms // 1000
    block_s = block_ms / 1000
    _warm_up(recognizer, audio, block, warmup_s)
    sessions = [recognizer.session() for _ in range(n_streams)]
    feeds = [np.roll(audio, -(k * len(audio)) // n_streams) for k in range(n_streams)]
    hop_blocks = max(1, round(recognizer.model.chunk_ms * recognizer.model.encoder.hop_chunks / block_ms))
    late = [k % hop_blocks for k in range(n_streams)]
    n_blocks = -(-len(audio) // block)
    pushes = [Reservoir() for _ in range(n_streams)]
    n_words = [0] * n_streams
    rounds = Reservoir()
    done_at = lag_max = 0.0
    for r in range(n_blocks + max(late)):
        round_s = 0.0
        for k, session in enumerate(sessions):
            if not 0 <= r - late[k] < n_blocks:
                continue
            i = (r - late[k]) * block
            t0 = time.perf_counter()
            event = session.push(feeds[k][i : i + block])
            dt = time.perf_counter() - t0
            pushes[k].add(dt)
            round_s += dt
            n_words[k] += len(event.final)
        rounds.add(round_s)
        arrival = (r + 1) * block_s
        done_at = max(done_at, arrival) + round_s
        lag_max = max(lag_max, done_at - arrival)
    audio_s = len(audio) / SAMPLE_RATE
    per_stream = []
    for k, session in enumerate(sessions):
        n_words[k] += len(session.flush().final)
        per_stream.append({"stream": k + 1, "rtf": round(session.stats.compute_s / audio_s, 4),
                           "chunk_p50_ms": _pct_ms(pushes[k], 50), "chunk_p99_ms": _pct_ms(pushes[k], 99),
                           "words": n_words[k]})
    return StreamsResult(
        model=name, precision=recognizer.precision, threads=torch.get_num_threads(), streams=n_streams,
        chunk_ms=block_ms, audio_s=round(audio_s, 3), load_s=round(load_s, 3),
        aggregate_rtf=round(rounds.total / audio_s, 4), round_p50_ms=_pct_ms(rounds, 50),
        round_p99_ms=_pct_ms(rounds, 99), max_lag_s=round(lag_max, 3), kept_real_time=lag_max <= 2 * block_s,
        peak_rss_mb=round(peak_rss_mb(), 1), per_stream=tuple(per_stream),
    )

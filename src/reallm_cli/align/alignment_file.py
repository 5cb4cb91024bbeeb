"""Alignment files: one JSON object per utterance with the chunk after which each token is emitted.

A line is ``{"id", "tokens", "token_chunks", "score", "token_frames"}`` for an aligned utterance,
or ``{"id", "tokens", "error"}`` for one the teacher could not align (kept so the failure rate is visible).
``token_frames`` (the CTC spike frames) is optional; the report needs it for emission delays.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from reallm_cli.align.ctc import AlignmentImpossibleError, ctc_forced_align, token_chunks_from_frames
from reallm_cli.errors import ReallmError


class AlignmentFileError(ReallmError):
    """An alignment file that cannot be read (names the line)."""


@dataclass(frozen=True)
class AlignmentRecord:
    id: str
    tokens: tuple[int, ...] = ()
    token_chunks: tuple[int, ...] = ()  # per token: index of the chunk after whose embedding it is emitted
    score: float | None = None  # CTC best-path log-probability
    token_frames: tuple[int, ...] | None = None  # per token: teacher frame of its CTC spike
    error: str | None = None  # set when the utterance failed to align

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> str:
        if not self.ok:
            return json.dumps({"id": self.id, "tokens": list(self.tokens), "error": self.error})
        d = {"id": self.id, "tokens": list(self.tokens), "token_chunks": list(self.token_chunks), "score": self.score}
        if self.token_frames is not None:
            d["token_frames"] = list(self.token_frames)
        return json.dumps(d)


def align_record(
    utt_id: str,
    log_probs,
    tokens: Sequence[int],
    blank: int,
    *,
    frame_ms: int,
    chunk_ms: int,
    wait_ms: int = 0,
    n_chunks: int | None = None,
) -> AlignmentRecord:
    """Force-align one utterance's teacher posteriors (T, V); a failure becomes a record with ``error``."""
    try:
        al = ctc_forced_align(log_probs, tokens, blank)
    except AlignmentImpossibleError as exc:
        return AlignmentRecord(id=utt_id, tokens=tuple(int(t) for t in tokens), error=str(exc))
    chunks = token_chunks_from_frames(al.token_frames, frame_ms, chunk_ms, wait_ms, n_chunks=n_chunks)
    return AlignmentRecord(
        id=utt_id, tokens=al.tokens, token_chunks=tuple(chunks), score=al.score, token_frames=al.token_frames
    )


def write_alignments(path: str | Path, records: Iterable[AlignmentRecord]) -> int:
    """Write records as JSON Lines (atomically: temp file then rename); returns how many were written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(rec.to_json() + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def _int_tuple(value, field: str, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise AlignmentFileError(f"{where}: '{field}' must be a list of integers")
    return tuple(value)


def read_alignments(path: str | Path) -> list[AlignmentRecord]:
    """Read and validate an alignment file; any malformed line raises AlignmentFileError naming it."""
    path = Path(path)
    if not path.is_file():
        raise AlignmentFileError(f"{path}: no such alignment file")
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            where = f"{path}:{line_no}"
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as exc:
                raise AlignmentFileError(f"{where}: invalid JSON ({exc.msg})") from None
            if not isinstance(d, dict) or not isinstance(d.get("id"), str):
                raise AlignmentFileError(f"{where}: expected an object with a string 'id'")
            if "error" in d:
                tokens = _int_tuple(d.get("tokens", []), "tokens", where)
                records.append(AlignmentRecord(id=d["id"], tokens=tokens, error=str(d["error"])))
                continue
            for key in ("tokens", "token_chunks"):
                if key not in d:
                    raise AlignmentFileError(f"{where}: missing '{key}'")
            tokens = _int_tuple(d["tokens"], "tokens", where)
            chunks = _int_tuple(d["token_chunks"], "token_chunks", where)
            if len(tokens) != len(chunks):
                raise AlignmentFileError(f"{where}: {len(tokens)} tokens but {len(chunks)} token_chunks")
            if any(b < a for a, b in zip(chunks, chunks[1:])) or any(c < 0 for c in chunks):
                raise AlignmentFileError(f"{where}: token_chunks must be non-negative and non-decreasing")
            frames = d.get("token_frames")
            if frames is not None:
                frames = _int_tuple(frames, "token_frames", where)
                if len(frames) != len(tokens):
                    raise AlignmentFileError(f"{where}: {len(tokens)} tokens but {len(frames)} token_frames")
            score = d.get("score")
            records.append(
                AlignmentRecord(
                    id=d["id"], tokens=tokens, token_chunks=chunks,
                    score=None if score is None else float(score), token_frames=frames,
                )
            )
    return records


@dataclass(frozen=True)
class AlignmentReport:
    n_utterances: int
    n_failed: int
    failed_share: float
    n_tokens: int  # tokens with a known spike frame (the delay statistics are over these)
    mean_delay_ms: float  # embedding available minus end of the CTC spike frame, averaged over tokens
    median_delay_ms: float
    p90_delay_ms: float
    max_delay_ms: float

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.n_utterances} utterances, {self.n_failed} failed ({100 * self.failed_share:.1f}%), "
            f"{self.n_tokens} tokens, emission delay mean {self.mean_delay_ms:.0f} ms, "
            f"median {self.median_delay_ms:.0f} ms, p90 {self.p90_delay_ms:.0f} ms"
        )


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def alignment_report(
    records: Sequence[AlignmentRecord], *, frame_ms: int, chunk_ms: int, wait_ms: int = 0
) -> AlignmentReport:
    """Failure share, and how long each token waits between its CTC spike and its chunk's embedding.

    A token spiking in teacher frame f was heard at (f+1)*frame_ms; the embedding of chunk c is
    available once (c+1)*chunk_ms + wait_ms of audio is in. The difference is the latency the
    chunking itself adds (0..chunk_ms + wait_ms for the plain "chunk holding the spike" rule).
    """
    n_failed = sum(1 for r in records if not r.ok)
    delays: list[float] = []
    for r in records:
        if r.ok and r.token_frames is not None:
            for f, c in zip(r.token_frames, r.token_chunks):
                delays.append(float((c + 1) * chunk_ms + wait_ms - (f + 1) * frame_ms))
    delays.sort()
    n = len(records)
    return AlignmentReport(
        n_utterances=n,
        n_failed=n_failed,
        failed_share=n_failed / n if n else 0.0,
        n_tokens=len(delays),
        mean_delay_ms=sum(delays) / len(delays) if delays else math.nan,
        median_delay_ms=_percentile(delays, 0.5),
        p90_delay_ms=_percentile(delays, 0.9),
        max_delay_ms=delays[-1] if delays else math.nan,
    )

"""Training manifests: JSON Lines of ``{"audio", "text", "duration", "id"?}``, validated line by line.

Relative ``audio`` paths resolve against the manifest's own folder, so a data folder can be moved
as a whole. Every problem is reported with its line number; ``on_error="refuse"`` stops at the
first one, ``on_error="skip"`` keeps the good lines and lists the rest in ``Manifest.problems``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from reallm_cli.errors import ReallmError
from reallm_cli.timebase import DEFAULT_CHUNK_MS

# Fast read English is ~15-20 characters a second (spaces included); 25 leaves room for fast
# speakers while still catching a transcript attached to the wrong (shorter) audio file.
MAX_CHARS_PER_S = 25.0
# Every token is at least one character, so 6 tokens per 240 ms chunk (25 a second) matches the
# character limit; more means the text cannot belong to this audio.
MAX_TOKENS_PER_CHUNK = 6.0


class ManifestError(ReallmError):
    """A manifest that cannot be used (names the file and line of the first problem)."""


@dataclass(frozen=True)
class ManifestEntry:
    audio: Path  # absolute path
    text: str
    duration_s: float
    id: str

    def to_dict(self, relative_to: Path | None = None) -> dict:
        audio = self.audio
        if relative_to is not None:
            try:
                audio = audio.relative_to(relative_to)
            except ValueError:
                pass  # outside the manifest's folder: keep it absolute
        return {"id": self.id, "audio": audio.as_posix(), "text": self.text, "duration": self.duration_s}


@dataclass(frozen=True)
class ManifestProblem:
    path: Path
    line_no: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line_no}: {self.message}"


@dataclass(frozen=True)
class Manifest:
    """The good entries of a manifest, and the problems of the lines that were skipped."""

    path: Path
    entries: tuple[ManifestEntry, ...]
    problems: tuple[ManifestProblem, ...] = ()

    def __iter__(self) -> Iterator[ManifestEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> ManifestEntry:
        return self.entries[i]

    @property
    def total_duration_s(self) -> float:
        return sum(e.duration_s for e in self.entries)


def _probe_duration_s(path: Path) -> float | str:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as exc:
        return f"unreadable audio file {path}: {str(exc).splitlines()[0]}"
    return info.frames / info.samplerate


def _check_line(
    d, base: Path, check_audio: bool, probe_duration: bool, max_chars_per_s: float,
    count_tokens: Callable[[str], int] | None, max_tokens_per_chunk: float, chunk_ms: int,
) -> ManifestEntry | str:
    """The entry of one parsed line, or a one-line description of what is wrong with it."""
    if not isinstance(d, dict):
        return f"expected a JSON object, got {type(d).__name__}"
    required = ("audio", "text") if probe_duration else ("audio", "text", "duration")
    missing = [k for k in required if k not in d]
    if missing:
        return "missing field" + ("s " if len(missing) > 1 else " ") + ", ".join(f"'{k}'" for k in missing)
    audio, text = d["audio"], d["text"]
    if not isinstance(audio, str) or not audio:
        return "'audio' must be a non-empty string path"
    if not isinstance(text, str):
        return "'text' must be a string"
    utt_id = d.get("id")
    if utt_id is not None and (not isinstance(utt_id, str) or not utt_id):
        return "'id' must be a non-empty string"
    audio_path = Path(audio)
    if not audio_path.is_absolute():
        audio_path = base / audio_path
    if (check_audio or "duration" not in d) and not audio_path.is_file():
        return f"audio file not found: {audio_path}"
    duration = d["duration"] if "duration" in d else _probe_duration_s(audio_path)
    if isinstance(duration, str):
        return duration
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration) or duration <= 0:
        return f"'duration' must be a positive number of seconds, got {duration!r}"
    text = " ".join(text.split())
    if not any(c.isalpha() for c in text):
        return f"text has no letters: {text!r}"
    chars_per_s = len(text) / duration
    if chars_per_s > max_chars_per_s:
        return (
            f"transcript too long for its audio: {len(text)} characters in {duration:.2f} s "
            f"({chars_per_s:.0f}/s, limit {max_chars_per_s:.0f}/s)"
        )
    if count_tokens is not None:
        n_chunks = max(1, math.ceil(duration * 1000 / chunk_ms))
        n_tokens = count_tokens(text)
        if n_tokens > n_chunks * max_tokens_per_chunk:
            return (
                f"transcript too long for its audio: {n_tokens} tokens for {n_chunks} chunks of {chunk_ms} ms "
                f"(limit {max_tokens_per_chunk:g} a chunk)"
            )
    if utt_id is None:
        try:
            utt_id = audio_path.relative_to(base).with_suffix("").as_posix()
        except ValueError:
            utt_id = audio_path.with_suffix("").as_posix()
    return ManifestEntry(audio=audio_path.resolve(), text=text, duration_s=float(duration), id=utt_id)


def read_manifest(
    path: str | Path,
    on_error: Literal["skip", "refuse"] = "skip",
    *,
    check_audio: bool = True,
    probe_duration: bool = False,
    max_chars_per_s: float = MAX_CHARS_PER_S,
    count_tokens: Callable[[str], int] | None = None,
    max_tokens_per_chunk: float = MAX_TOKENS_PER_CHUNK,
    chunk_ms: int = DEFAULT_CHUNK_MS,
) -> Manifest:
    """Read and validate a manifest.

    ``probe_duration=True`` accepts lines without ``duration`` and reads it from the audio file's
    header (for evaluation lists such as dev-real's); ``count_tokens`` (e.g.
    ``lambda t: len(tokenizer.encode(t))``) adds the tokens-per-chunk check.
    """
    if on_error not in ("skip", "refuse"):
        raise ValueError(f"on_error must be 'skip' or 'refuse', got {on_error!r}")
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    base = path.resolve().parent
    entries: list[ManifestEntry] = []
    problems: list[ManifestProblem] = []
    seen_ids: dict[str, int] = {}
    n_lines = 0
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            n_lines += 1
            try:
                result = _check_line(
                    json.loads(line), base, check_audio, probe_duration, max_chars_per_s, count_tokens, max_tokens_per_chunk, chunk_ms
                )
            except json.JSONDecodeError as exc:
                result = f"invalid JSON ({exc.msg} at column {exc.colno})"
            if isinstance(result, ManifestEntry) and result.id in seen_ids:
                result = f"duplicate id {result.id!r} (first on line {seen_ids[result.id]})"
            if isinstance(result, str):
                problem = ManifestProblem(path, line_no, result)
                if on_error == "refuse":
                    raise ManifestError(str(problem))
                problems.append(problem)
                continue
            seen_ids[result.id] = line_no
            entries.append(result)
    if n_lines == 0:
        raise ManifestError(f"{path}: the manifest is empty")
    if not entries:
        raise ManifestError(f"{path}: none of its {n_lines} lines is usable; first problem: {problems[0]}")
    return Manifest(path=path, entries=tuple(entries), problems=tuple(problems))


def write_manifest(path: str | Path, entries: Iterable[ManifestEntry]) -> int:
    """Write entries as JSON Lines (audio relative to the manifest's folder when inside it); returns the count."""
    path = Path(path)
    base = path.resolve().parent
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(e.to_dict(relative_to=base), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n

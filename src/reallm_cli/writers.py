"""Transcript writers: txt, srt, vtt, json, jsonl.

Two ways to write:

* ``open_stream_writer`` for live use (``reallm listen --output``): every closed segment is written and
  flushed at once, so a killed process loses at most the words not yet final. srt/vtt numbering
  continues across the session (and across runs with ``append=True``).
* ``DocumentWriter`` for files (``reallm transcribe``): each closed segment is written and flushed to
  stdout or to ``<name>.<ext>.partial`` at once, which is renamed when the input ends;
  ``StdoutDocuments`` keeps several inputs apart on one stream. ``write_transcript`` writes a whole
  ``Transcript`` atomically (a temporary name moved into place).

Formats: ``txt`` one line per segment; ``srt``/``vtt`` one cue per segment; ``json`` one document
(``file``, segments with their words, duration, text; the live writer also a flat word list); ``jsonl`` one JSON object per
line: ``{"type": "final", ...}`` for words that became final, ``{"type": "partial", ...}`` when the
in-progress text changed, ``{"type": "segment", ...}`` for each closed segment and a last
``{"type": "end", "duration_s": ...}``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import IO, Protocol

from reallm_cli.errors import ReallmError
from reallm_cli.results import Event, Segment, Transcript, Word

FORMATS = ("txt", "srt", "vtt", "json", "jsonl")
_EXTENSIONS = {"txt": "txt", "text": "txt", "srt": "srt", "vtt": "vtt", "json": "json", "jsonl": "jsonl", "ndjson": "jsonl"}


def resolve_format(path: str | Path | None, fmt: str | None = None) -> str:
    """The output format: ``fmt`` if given, else from the file extension; unknown → ReallmError."""
    if fmt:
        name = fmt.lower().lstrip(".")
        if name not in _EXTENSIONS:
            raise ReallmError(f"unknown output format {fmt!r} (choose from {', '.join(FORMATS)})")
        return _EXTENSIONS[name]
    if path is None:
        return "txt"
    ext = Path(path).suffix.lower().lstrip(".")
    if not ext:
        raise ReallmError(f"cannot tell the output format of {str(path)!r}: give it an extension or --format ({', '.join(FORMATS)})")
    if ext not in _EXTENSIONS:
        raise ReallmError(f"unknown output format {ext!r} from {str(path)!r} (choose from {', '.join(FORMATS)}, or pass --format)")
    return _EXTENSIONS[ext]


# ---------------------------------------------------------------------------------------------
# Formatting helpers


def format_timestamp(seconds: float, sep: str = ",") -> str:
    """HH:MM:SS,mmm (srt) or HH:MM:SS.mmm (vtt); negative times clamp to zero."""
    total_ms = max(0, round(seconds * 1000))
    hours, rest = divmod(total_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms:03d}"


def _r(x: float) -> float:
    return round(x, 3)


def word_dict(word: Word) -> dict:
    return {"text": word.text, "start_s": _r(word.start_s), "end_s": _r(word.end_s), "emit_s": _r(word.emit_s)}


def segment_dict(segment: Segment, offset_s: float = 0.0) -> dict:
    return {
        "start_s": _r(segment.start_s + offset_s),
        "end_s": _r(segment.end_s + offset_s),
        "text": segment.text,
        "words": [word_dict(_shift(w, offset_s)) for w in segment.words],
    }


def transcript_dict(transcript: Transcript) -> dict:
    return {
        "path": transcript.path,
        "duration_s": _r(transcript.duration_s),
        "text": transcript.text,
        "segments": [segment_dict(s) for s in transcript.segments],
        "words": [word_dict(w) for w in transcript.words],
    }


def _shift(word: Word, offset_s: float) -> Word:
    if not offset_s:
        return word
    return Word(word.text, word.start_s + offset_s, word.end_s + offset_s, word.emit_s + offset_s)


def _cue(index: int, segment: Segment, offset_s: float, sep: str) -> str:
    start = format_timestamp(segment.start_s + offset_s, sep)
    # A cue must last a little; words from one chunk can share start and end.
    end = format_timestamp(max(segment.end_s, segment.start_s + 0.2) + offset_s, sep)
    prefix = f"{index}\n" if sep == "," else ""
    return f"{prefix}{start} --> {end}\n{segment.text}\n\n"


# ---------------------------------------------------------------------------------------------
# Streaming writers


class StreamWriter(Protocol):
    path: Path

    def event(self, event: Event) -> None: ...  # every engine event (only jsonl records them)

    def segment(self, segment: Segment) -> None: ...  # a segment that closed

    def close(self, duration_s: float) -> None: ...  # end of stream


class _LineWriter:
    """Base for formats that are written line by line and flushed at once."""

    def __init__(self, path: Path, append: bool) -> None:
        self.path = path
        self.offset_s = 0.0  # added to every time when appending after an earlier run
        self._existing = path.read_text(encoding="utf-8", errors="replace") if append and path.exists() else ""
        try:
            self._f: IO[str] = open(path, "a" if append else "w", encoding="utf-8")
        except OSError as exc:
            raise ReallmError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc

    def _write(self, text: str) -> None:
        self._f.write(text)
        self._f.flush()

    def event(self, event: Event) -> None:
        pass

    def close(self, duration_s: float) -> None:
        if not self._f.closed:
            self._f.close()


class TxtStreamWriter(_LineWriter):
    def segment(self, segment: Segment) -> None:
        if segment.words:
            self._write(segment.text + "\n")


_SRT_TIME = re.compile(r"(\d+):(\d\d):(\d\d)[,.](\d\d\d)\s*-->\s*(\d+):(\d\d):(\d\d)[,.](\d\d\d)")


def _last_cue_end_s(text: str) -> float:
    ends = [int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000 for *_, h, m, s, ms in _SRT_TIME.findall(text)]
    return max(ends, default=0.0)


class SrtStreamWriter(_LineWriter):
    def __init__(self, path: Path, append: bool) -> None:
        super().__init__(path, append)
        # Appending continues the numbering and the clock where the earlier run stopped.
        self.index = len(_SRT_TIME.findall(self._existing))
        self.offset_s = _last_cue_end_s(self._existing)
        if self._existing and not self._existing.endswith("\n\n"):
            self._write("\n" if self._existing.endswith("\n") else "\n\n")

    def segment(self, segment: Segment) -> None:
        if segment.words:
            self.index += 1
            self._write(_cue(self.index, segment, self.offset_s, ","))


class VttStreamWriter(_LineWriter):
    def __init__(self, path: Path, append: bool) -> None:
        super().__init__(path, append)
        self.offset_s = _last_cue_end_s(self._existing)
        if not self._existing.strip():
            self._write("WEBVTT\n\n")
        elif not self._existing.endswith("\n\n"):
            self._write("\n" if self._existing.endswith("\n") else "\n\n")

    def segment(self, segment: Segment) -> None:
        if segment.words:
            self._write(_cue(0, segment, self.offset_s, "."))


class JsonlStreamWriter(_LineWriter):
    def __init__(self, path: Path, append: bool) -> None:
        super().__init__(path, append)
        self._partial = ""
        if self._existing:
            ends = [json.loads(line).get("duration_s", 0.0) for line in self._existing.splitlines() if '"end"' in line]
            self.offset_s = float(ends[-1]) if ends else 0.0

    def _line(self, obj: dict) -> None:
        self._write(json.dumps(obj, ensure_ascii=False) + "\n")

    def event(self, event: Event) -> None:
        audio_s = _r(event.audio_s + self.offset_s)
        if event.final:
            self._line({"type": "final", "audio_s": audio_s, "words": [word_dict(_shift(w, self.offset_s)) for w in event.final]})
        if event.partial != self._partial:
            self._partial = event.partial
            self._line({"type": "partial", "audio_s": audio_s, "text": event.partial})

    def segment(self, segment: Segment) -> None:
        self._line({"type": "segment", **segment_dict(segment, self.offset_s)})

    def close(self, duration_s: float) -> None:
        if not self._f.closed:
            self._line({"type": "end", "duration_s": _r(duration_s + self.offset_s)})
        super().close(duration_s)


class JsonStreamWriter:
    """One JSON document cannot be appended to, so it is rewritten atomically as segments arrive.

    Rewrites are rate-limited (at least ``min_interval_s`` apart and at most ~5% of wall time) so an
    hours-long session does not spend its time rewriting a large file; ``close`` always writes.
    For long sessions jsonl is the better choice.
    """

    def __init__(self, path: Path, append: bool, min_interval_s: float = 2.0) -> None:
        self.path = path
        self.min_interval_s = min_interval_s
        self.segments: list[Segment] = []
        self._offset_s = 0.0
        if append and path.exists():
            raise ReallmError(f"cannot append to the JSON document {str(path)!r}; use a .jsonl file to append")
        self._last_write = 0.0
        self._last_cost_s = 0.0
        self._audio_s = 0.0
        self._dirty = False
        self._write(0.0)  # fail early on an unwritable path, and leave a valid file from the start

    def event(self, event: Event) -> None:
        self._audio_s = event.audio_s

    def segment(self, segment: Segment) -> None:
        self.segments.append(segment)
        self._dirty = True
        now = time.monotonic()
        if now - self._last_write >= max(self.min_interval_s, 20 * self._last_cost_s):
            self._write(self._audio_s)

    def _write(self, duration_s: float) -> None:
        t0 = time.monotonic()
        transcript = Transcript(path="", duration_s=duration_s, segments=tuple(self.segments))
        atomic_write_text(self.path, json.dumps(transcript_dict(transcript), ensure_ascii=False, indent=1) + "\n")
        self._last_write = time.monotonic()
        self._last_cost_s = self._last_write - t0
        self._dirty = False

    def close(self, duration_s: float) -> None:
        self._write(duration_s)


_STREAM_WRITERS = {
    "txt": TxtStreamWriter,
    "srt": SrtStreamWriter,
    "vtt": VttStreamWriter,
    "jsonl": JsonlStreamWriter,
    "json": JsonStreamWriter,
}


def open_stream_writer(path: str | Path, fmt: str | None = None, append: bool = False) -> StreamWriter:
    """A writer that writes each closed segment (and, for jsonl, each event) as it comes."""
    path = Path(path)
    name = resolve_format(path, fmt)
    if path.parent and not path.parent.exists():
        raise ReallmError(f"cannot write {str(path)!r}: folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise ReallmError(f"cannot write {str(path)!r}: it is a folder")
    return _STREAM_WRITERS[name](path, append)


# ---------------------------------------------------------------------------------------------
# Whole-file writers


class DocumentWriter:
    """One input's transcript written to an open text stream segment by segment, each flushed at once.

    What ``reallm transcribe`` writes, to stdout or to ``<name>.<ext>.partial``: nothing waits for the
    end of the file except the closing fields of a json document (its duration and text).
    """

    def __init__(self, out: IO[str], fmt: str, file: str, header: bool = False, separator: str = "") -> None:
        self.out, self.fmt, self.file = out, resolve_format(None, fmt), file
        self._index = 0  # srt cue number
        self._text: list[str] = []  # json only: its "text" field comes last
        start = separator
        if header and self.fmt in ("txt", "srt", "vtt"):
            start += f"==> {file} <==\n"
        if self.fmt == "vtt":
            start += "WEBVTT\n\n"
        elif self.fmt == "json":
            start += "{" + f'"file": {json.dumps(file, ensure_ascii=False)},\n "segments": ['
        self._write(start)

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()

    def _record(self, obj: dict) -> str:
        return json.dumps({"type": obj.pop("type"), "file": self.file, **obj}, ensure_ascii=False) + "\n"

    def segment(self, segment: Segment) -> None:
        """A closed segment, written and flushed."""
        if not segment.words:
            return
        self._index += 1
        if self.fmt == "txt":
            self._write(segment.text + "\n")
        elif self.fmt in ("srt", "vtt"):
            self._write(_cue(self._index, segment, 0.0, "," if self.fmt == "srt" else "."))
        elif self.fmt == "json":
            self._text.append(segment.text)
            sep = ",\n  " if self._index > 1 else "\n  "
            self._write(sep + json.dumps(segment_dict(segment), ensure_ascii=False))
        else:
            # The same lines a live session would have written, minus partials (a file has none left).
            emit_s = max(w.emit_s for w in segment.words)
            self._write(self._record({"type": "final", "audio_s": _r(emit_s), "words": [word_dict(w) for w in segment.words]})
                        + self._record({"type": "segment", **segment_dict(segment)}))

    def end(self, duration_s: float) -> None:
        """The input ended (or stopped early): close the document."""
        if self.fmt == "json":
            self._write(("\n " if self._index else "") + f'],\n "duration_s": {_r(duration_s)},\n '
                        f'"text": {json.dumps(" ".join(self._text), ensure_ascii=False)}}}')
            self._text = []
        elif self.fmt == "jsonl":
            self._write(self._record({"type": "end", "duration_s": _r(duration_s)}))


class StdoutDocuments:
    """Several inputs' transcripts on one stream, each one separable: a header per file (txt/srt/vtt)
    when there is more than one, ``file`` in every jsonl record, one json array for many json documents."""

    def __init__(self, out: IO[str], fmt: str, many: bool) -> None:
        self.out, self.fmt, self.many = out, resolve_format(None, fmt), many
        self._n = 0

    def open(self, file: str) -> DocumentWriter:
        first = self._n == 0
        self._n += 1
        if self.fmt == "json":
            sep = ("[\n" if first else ",\n") if self.many else ""
        else:
            sep = "\n" if self.fmt == "txt" and not first else ""
        return DocumentWriter(self.out, self.fmt, file, header=self.many, separator=sep)

    def close(self) -> None:
        """After the last input: end the json array (or line)."""
        if self.fmt == "json" and self._n:
            self.out.write("\n]\n" if self.many else "\n")
            self.out.flush()


def format_transcript(transcript: Transcript, fmt: str) -> str:
    """The whole transcript as text in one format (exactly what ``DocumentWriter`` streams)."""
    import io

    buf = io.StringIO()
    docs = StdoutDocuments(buf, fmt, many=False)
    writer = docs.open(transcript.path)
    for s in transcript.segments:
        writer.segment(s)
    writer.end(transcript.duration_s)
    docs.close()
    return buf.getvalue()


def default_file_mode() -> int:
    """What ``open()`` gives a new file: 0666 less the umask (``mkstemp`` gives 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _new_file_mode(path: Path) -> int:
    """The mode a replaced file had, or ``default_file_mode()`` for a new one."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return default_file_mode()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and move it into place (never half a file)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    except OSError as exc:
        raise ReallmError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), _new_file_mode(path))  # mkstemp makes 0600; a transcript is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_transcript(transcript: Transcript, path: str | Path, fmt: str | None = None) -> Path:
    """Write a whole transcript atomically; the format comes from ``fmt`` or the extension."""
    path = Path(path)
    atomic_write_text(path, format_transcript(transcript, resolve_format(path, fmt)))
    return path


def output_path(output_dir: str | Path, audio_path: str | Path, fmt: str) -> Path:
    """Where ``transcribe --output-dir`` puts one format of one input: ``DIR/<stem>.<fmt>``."""
    return Path(output_dir) / f"{Path(audio_path).stem}.{resolve_format(None, fmt)}"


def output_paths(output_dir: str | Path, audio_paths: list[str], fmt: str) -> list[Path]:
    """One output per input, never two the same: ``DIR/<stem>.<fmt>``, or, when two inputs share a stem,
    every input's folder mirrored under DIR (relative to the folder all inputs share).

    Two inputs that would still collide (one file given twice, ``x.flac`` beside ``x.wav``) are refused
    here, before any work."""
    ext = resolve_format(None, fmt)
    stems = [("stdin" if p == "-" else Path(p).stem) for p in audio_paths]
    if len(set(stems)) == len(stems):
        return [Path(output_dir) / f"{stem}.{ext}" for stem in stems]
    folders = [Path.cwd() if p == "-" else Path(p).resolve().parent for p in audio_paths]
    common = Path(os.path.commonpath([str(f) for f in folders]))
    outs = [Path(output_dir) / folder.relative_to(common) / f"{stem}.{ext}" for folder, stem in zip(folders, stems)]
    seen: dict[Path, str] = {}
    for src, out in zip(audio_paths, outs):
        if out in seen:
            raise ReallmError(f"{seen[out]} and {src} would both be written to {out}; transcribe them into separate --output-dir folders")
        seen[out] = src
    return outs

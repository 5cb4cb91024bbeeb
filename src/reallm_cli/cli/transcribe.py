"""``reallm transcribe``: files of any length through the streaming engine; transcript on stdout."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from reallm_cli.cli.options import FormatOpt, LookaheadMs, ModelOpt, Precision, QuietOpt, ThreadsOpt, set_threads
from reallm_cli.errors import ReallmError, error, warn


def transcribe_command(
    files: Annotated[list[str], typer.Argument(metavar="FILE...", help="Audio files (wav, flac, ogg, mp3, ...; any rate), or - for a whole audio file on stdin.", show_default=False)],
    model: ModelOpt = None,
    precision: Precision = "auto",
    lookahead_ms: LookaheadMs = None,
    fmt: FormatOpt = "txt",
    threads: ThreadsOpt = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", metavar="DIR", help="Write DIR/<name>.<format> per input instead of stdout (inputs sharing a name keep their folders under DIR); each is written as <name>.<format>.partial and renamed when its input ends.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace transcripts already in --output-dir (default: skip those inputs, and say so).")] = False,
    block_s: Annotated[float, typer.Option("--block-s", metavar="SECONDS", help="Seconds of audio pushed per step; any value gives the same words.", min=0.01, max=600)] = 8.0,
    quiet: QuietOpt = False,
) -> None:
    """Transcribe audio files, streamed with no end-pointing (bounded memory for any length).

    Each segment is written (and flushed) to stdout or to --output-dir as soon as it is final; with
    several inputs every one is marked (a header line, or a "file" field). Progress, warnings and
    errors go to stderr. Exit status: 0 all done, 1 a file failed or was damaged (its transcript up
    to the damage is kept), 2 a usage error, 130 interrupted (what was written is kept).
    """
    from reallm_cli.engine import Recognizer
    from reallm_cli.writers import output_paths, resolve_format

    fmt_name = resolve_format(None, fmt)
    if files.count("-") > 1:
        raise ReallmError("stdin (-) can be read only once")
    targets: list[Optional[Path]] = [None] * len(files)
    if output_dir is not None:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReallmError(f"cannot create output folder {output_dir}: {exc.strerror}") from exc
        if not output_dir.is_dir() or not _writable(output_dir):
            raise ReallmError(f"output folder is not writable: {output_dir}")
        targets = output_paths(output_dir, files, fmt_name)
    jobs = []
    for path, target in zip(files, targets):
        if target is not None and target.exists() and not overwrite:
            warn(f"skipped {path}: {target} exists (--overwrite replaces it)")
        else:
            jobs.append((path, target))
    if not jobs:
        return
    set_threads(threads)
    recognizer = Recognizer.load(model, precision=precision, lookahead_ms=lookahead_ms)
    failures = _run(recognizer, jobs, fmt_name, many=len(files) > 1, block_s=block_s, quiet=quiet)
    if failures:
        raise typer.Exit(1)


def _run(recognizer, jobs, fmt_name: str, many: bool, block_s: float, quiet: bool) -> int:
    """Transcribe each (input, target or None for stdout); returns how many failed."""
    import signal

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from reallm_cli.transcribe import TranscribeOptions, stream_file
    from reallm_cli.writers import StdoutDocuments

    err = Console(stderr=True)
    docs = StdoutDocuments(sys.stdout, fmt_name, many)
    failures = 0
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[done]}"),
                        TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), console=err,
                        disable=quiet or not err.is_terminal, transient=True)

    def on_term(signum, frame) -> None:  # noqa: ARG001
        raise KeyboardInterrupt  # SIGTERM ends like Ctrl-C: what is final is written, the rest kept

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        with progress:
            for path, target in jobs:
                label = "-" if path == "-" else path
                sink = _Sink(docs, label, target, fmt_name)
                task = progress.add_task(Path(path).name if path != "-" else "stdin", total=None, done="", speed="")
                started = time.perf_counter()

                def on_progress(done_s: float, total_s: float, _task=task, _t0=started, _sink=sink) -> None:
                    _sink.audio_s = done_s
                    speed = done_s / max(1e-9, time.perf_counter() - _t0)
                    progress.update(_task, total=total_s, completed=done_s,
                                    done=f"{_clock(done_s)}/{_clock(total_s)}", speed=f"{speed:.1f}x")

                try:
                    result = stream_file(recognizer, path, sink.segment, TranscribeOptions(block_s=block_s), on_progress)
                except ReallmError as exc:
                    failures += 1
                    sink.abandon()
                    error(str(exc))
                    continue
                except KeyboardInterrupt:
                    kept = sink.interrupted()
                    docs.close()
                    progress.stop()
                    warn("interrupted" + (f"; the transcript so far is in {kept}" if kept else ""))
                    raise typer.Exit(130) from None
                finally:
                    progress.remove_task(task)
                sink.finish(result.duration_s)
                if result.damage:
                    failures += 1
                    warn(f"{result.damage}; the transcript up to there is kept")
        docs.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return failures


class _Sink:
    """Where one input's segments go: stdout, or ``<target>.partial`` renamed to ``target`` at the end.

    Opened at the first segment (or at the end), so an input that cannot be read leaves no trace."""

    def __init__(self, docs, label: str, target: Optional[Path], fmt_name: str) -> None:
        self.docs, self.label, self.target, self.fmt_name = docs, label, target, fmt_name
        self.partial = None if target is None else target.with_name(target.name + ".partial")
        self.audio_s = 0.0
        self._writer = None
        self._file = None

    def _open(self):
        from reallm_cli.writers import DocumentWriter, StdoutDocuments

        if self._writer is None:
            if self.target is None:
                self._writer = self.docs.open(self.label)
            else:
                try:
                    self.partial.parent.mkdir(parents=True, exist_ok=True)
                    self._file = open(self.partial, "w", encoding="utf-8")
                except OSError as exc:
                    raise ReallmError(f"cannot write {self.partial}: {exc.strerror or exc}") from exc
                self._writer = DocumentWriter(self._file, self.fmt_name, self.label)
        return self._writer

    def segment(self, segment) -> None:
        self._open().segment(segment)

    def finish(self, duration_s: float) -> None:
        import os

        self._open().end(duration_s)
        if self._file is not None:
            self._file.write("\n" if self.fmt_name == "json" else "")
            self._file.close()
            os.replace(self.partial, self.target)

    def interrupted(self) -> Optional[Path]:
        """Ctrl-C: close what was written so far (a json document stays valid); returns the file kept."""
        if self._writer is None:
            return None
        self._writer.end(self.audio_s)
        if self._file is None:
            return None
        self._file.close()
        return self.partial

    def abandon(self) -> None:
        if self._file is not None:
            self._file.close()


def _clock(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _writable(folder: Path) -> bool:
    import os

    return os.access(folder, os.W_OK | os.X_OK)


def register(app: typer.Typer) -> None:
    app.command("transcribe")(transcribe_command)

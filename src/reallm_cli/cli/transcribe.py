"""``reallm transcribe``: files of any length through the streaming engine; transcript on stdout."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from reallm_cli.cli.options import (FormatOpt, LookaheadMsAlias, ModelOpt, Precision, QuietOpt, RightContextMs, ThreadsOpt,
                                    right_context, set_threads)
from reallm_cli.errors import ReallmError, error, warn


def transcribe_command(
    files: Annotated[list[str], typer.Argument(metavar="FILE...", help="Audio files (wav, flac, ogg, mp3, ...; any rate), or - for a whole audio file on stdin.", show_default=False)],
    model: ModelOpt = None,
    precision: Precision = "auto",
    right_context_ms: RightContextMs = None,
    lookahead_ms: LookaheadMsAlias = None,
    fmt: FormatOpt = "txt",
    threads: ThreadsOpt = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", metavar="DIR", help="Write DIR/<name>.<format> per input instead of stdout (inputs sharing a name keep their folders under DIR); each is written as <name>.<format>.partial and renamed when its input ends.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace transcripts already in --output-dir (default: skip those inputs, and say so).")] = False,
    block_s: Annotated[float, typer.Option("--block-s", metavar="SECONDS", help="Seconds of audio pushed per step; any value gives the same words.", min=0.01, max=600)] = 8.0,
    quiet: QuietOpt = False,
    n_jobs: Annotated[int, typer.Option("--jobs", "-j", metavar="N", help="Worker processes transcribing inputs side by side, each with its own model and --threads threads (default per worker: the cores divided among the workers); output stays in input order.", min=1, max=64)] = 1,
) -> None:
    """Transcribe audio files, streamed with no end-pointing (bounded memory for any length).

    Each segment is written (and flushed) to stdout or to --output-dir as soon as it is final; with
    several inputs every one is marked (a header line, or a "file" field). Progress, warnings and
    errors go to stderr. With two threads or more, one thread encodes the next block while another
    decodes this one (the same words as one thread). With --jobs N, N worker processes take the inputs in turn; stdout still
    holds the inputs in the order given (a later input's segments wait until the earlier ones are
    written), each --output-dir file is written as its segments arrive. Exit status: 0 all done, 1 a file failed or was damaged (its transcript up
    to the damage is kept), 2 a usage error, 130 interrupted (what was written is kept).
    """
    from reallm_cli.engine import Recognizer
    from reallm_cli.writers import output_paths, resolve_format

    right_context_ms = right_context(right_context_ms, lookahead_ms)
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
    n_jobs = min(n_jobs, len(jobs))
    if n_jobs > 1:
        import os

        from reallm_cli.jobs import WorkerConfig

        config = WorkerConfig(model=model, precision=precision, right_context_ms=right_context_ms,
                              threads=threads or max(1, (os.cpu_count() or 1) // n_jobs), block_s=block_s,
                              parent_pid=os.getpid())
        failures = _run_parallel(config, n_jobs, jobs, fmt_name, many=len(files) > 1, quiet=quiet)
        if failures:
            raise typer.Exit(1)
        return
    set_threads(threads)
    recognizer = Recognizer.load(model, precision=precision, right_context_ms=right_context_ms)
    failures = _run(recognizer, jobs, fmt_name, many=len(files) > 1, block_s=block_s, quiet=quiet)
    if failures:
        raise typer.Exit(1)


def _run(recognizer, jobs, fmt_name: str, many: bool, block_s: float, quiet: bool) -> int:
    """Transcribe each (input, target or None for stdout); returns how many failed."""
    import signal

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from reallm_cli.transcribe import file_options, stream_file
    from reallm_cli.writers import StdoutDocuments

    options = file_options(block_s)
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
                    result = stream_file(recognizer, path, sink.segment, options, on_progress)
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


def _run_parallel(config, n_workers: int, jobs, fmt_name: str, many: bool, quiet: bool) -> int:
    """``_run`` with the inputs spread over ``n_workers`` processes (``reallm_cli.jobs``); returns how many
    failed. What goes to stdout is replayed in input order; --output-dir files are written as they come."""
    import multiprocessing as mp
    import queue
    import signal
    import tempfile

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from reallm_cli.jobs import worker_main
    from reallm_cli.writers import StdoutDocuments

    err = Console(stderr=True)
    docs = StdoutDocuments(sys.stdout, fmt_name, many)
    sinks = [_Sink(docs, "-" if path == "-" else path, target, fmt_name) for path, target in jobs]
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[done]}"),
                        TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), console=err,
                        disable=quiet or not err.is_terminal, transient=True)
    stdin_file = None
    inputs = []
    for path, _ in jobs:
        if path == "-":  # a worker cannot read our stdin: it reads a copy
            data = sys.stdin.buffer.read()
            fd, stdin_file = tempfile.mkstemp(prefix="reallm-stdin-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            inputs.append((stdin_file, "<stdin>"))
        else:
            inputs.append((path, path))
    ctx = mp.get_context("spawn")  # a clean interpreter: no torch thread pool forked mid-state
    tasks, results = ctx.Queue(), ctx.Queue()
    for i, (path, label) in enumerate(inputs):
        tasks.put((i, path, label))
    for _ in range(n_workers):
        tasks.put(None)

    def on_term(signum, frame) -> None:  # noqa: ARG001
        raise KeyboardInterrupt

    # Workers start with SIGINT ignored (set before the spawn, kept over exec), so a Ctrl-C reaches only
    # this process, which decides what is kept.
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    workers = [ctx.Process(target=worker_main, args=(w, config, tasks, results), daemon=True) for w in range(n_workers)]
    try:
        for p in workers:
            p.start()
    finally:
        signal.signal(signal.SIGINT, previous_int)
    previous_term = signal.signal(signal.SIGTERM, on_term)

    n = len(jobs)
    pending: list[list] = [[] for _ in range(n)]  # stdout inputs: messages waiting for the inputs before them
    state = ["waiting"] * n  # waiting, running, done (started by a worker / ended)
    on_worker: dict[int, int] = {}  # worker -> input it is transcribing
    tasks_of: dict[int, int] = {}  # input -> its progress-bar task
    started_at: dict[int, float] = {}
    failures = 0
    ordered = sinks[0].target is None  # --output-dir files are independent: each written as it comes
    current = 0  # the first stdout input not yet fully written
    alive = n_workers

    def apply(i: int, msg: tuple) -> None:
        nonlocal failures
        kind = msg[0]
        if kind == "segment":
            sinks[i].segment(msg[2])
        elif kind == "progress":
            sinks[i].audio_s = msg[2]
        elif kind == "done":
            sinks[i].finish(msg[2])
            if msg[3]:
                failures += 1
                warn(f"{msg[3]}; the transcript up to there is kept")
        elif kind == "error":
            failures += 1
            sinks[i].abandon()
            error(msg[2])

    def deliver(i: int, msg: tuple) -> None:
        """Apply now, or hold until every earlier input is written (stdout: one stream, in input order)."""
        nonlocal current
        if not ordered or i == current:
            apply(i, msg)
        else:
            pending[i].append(msg)
        while ordered and current < n and state[current] == "done":
            current += 1
            if current < n:
                for held in pending[current]:
                    apply(current, held)
                pending[current] = []

    def end_input(i: int) -> None:
        state[i] = "done"
        on_worker.pop(next((w for w, j in on_worker.items() if j == i), -1), None)
        if i in tasks_of:
            progress.remove_task(tasks_of.pop(i))

    try:
        with progress:
            while any(s != "done" for s in state):
                try:
                    msg = results.get(timeout=0.5)
                except queue.Empty:
                    for w, p in enumerate(workers):
                        if not p.is_alive() and w in on_worker:  # killed mid-input (out of memory, ...)
                            i = on_worker[w]
                            msg = ("error", i, f"{jobs[i][0]}: the worker transcribing it died (exit status {p.exitcode})")
                            end_input(i)
                            deliver(i, msg)
                    if not any(p.is_alive() for p in workers) and any(s != "done" for s in state):
                        raise ReallmError("every worker process ended before the inputs were done")
                    continue
                kind = msg[0]
                if kind == "fatal":
                    raise ReallmError(msg[2])
                if kind == "ready":
                    continue
                if kind == "start":
                    w, i = msg[1], msg[2]
                    on_worker[w] = i
                    state[i] = "running"
                    started_at[i] = time.perf_counter()
                    name = Path(jobs[i][0]).name if jobs[i][0] != "-" else "stdin"
                    tasks_of[i] = progress.add_task(name, total=None, done="", speed="")
                    continue
                i = msg[1]
                if kind == "progress" and i in tasks_of:
                    done_s, total_s = msg[2], msg[3]
                    speed = done_s / max(1e-9, time.perf_counter() - started_at[i])
                    progress.update(tasks_of[i], total=total_s, completed=done_s,
                                    done=f"{_clock(done_s)}/{_clock(total_s)}", speed=f"{speed:.1f}x")
                if kind in ("done", "error"):
                    end_input(i)
                deliver(i, msg)
        docs.close()
    except KeyboardInterrupt:
        _stop(workers)
        kept = []
        for i in range(n):  # in input order: what arrived is written, what was in progress is closed as it is
            for held in pending[i]:
                apply(i, held)
            pending[i] = []
            if state[i] == "running":
                path = sinks[i].interrupted()
                if path is not None:
                    kept.append(str(path))
        docs.close()
        progress.stop()
        warn("interrupted" + (f"; the transcript so far is in {', '.join(kept)}" if kept else ""))
        raise typer.Exit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        _stop(workers)
        if stdin_file is not None:
            os.unlink(stdin_file)
    return failures


def _stop(workers) -> None:
    for p in workers:
        if p.is_alive():
            p.terminate()
    for p in workers:
        p.join(timeout=5)


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

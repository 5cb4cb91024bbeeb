"""``reallm transcribe``: files of any length through the streaming engine; transcript on stdout."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from reallm_cli.cli.options import LookaheadMs, Precision
from reallm_cli.errors import ReallmError


def transcribe_command(
    files: Annotated[list[str], typer.Argument(help="Audio files (wav, flac, ogg, mp3; any rate), or - for a WAV on stdin.", show_default=False)],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model name or path (default: the embedded model).", show_default=False)] = None,
    precision: Precision = "auto",
    lookahead_ms: LookaheadMs = None,
    fmt: Annotated[Optional[str], typer.Option("--format", "-f", help="txt, srt, vtt, json or jsonl.", show_default=False)] = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Write <name>.<format> files here (atomically) instead of stdout.", show_default=False)] = None,
    block_s: Annotated[float, typer.Option("--block-s", help="Seconds of audio pushed per step; any value gives the same words.", min=0.01, max=600)] = 8.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Transcribe audio files, streamed with no end-pointing (bounded memory for any length).

    The transcript goes to stdout (or to --output-dir); progress and errors go to stderr. The exit
    status is 0 only if every file succeeded.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from reallm_cli.engine import Recognizer
    from reallm_cli.transcribe import TranscribeOptions, transcribe_file
    from reallm_cli.writers import format_transcript, output_path, resolve_format, write_transcript

    fmt_name = resolve_format(None, fmt)
    if output_dir is not None:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReallmError(f"cannot create output folder {output_dir}: {exc.strerror}") from exc
        if not output_dir.is_dir() or not _writable(output_dir):
            raise ReallmError(f"output folder is not writable: {output_dir}")
    if files.count("-") > 1:
        raise ReallmError("stdin (-) can be read only once")
    recognizer = Recognizer.load(model, precision=precision, lookahead_ms=lookahead_ms)
    err = Console(stderr=True)
    failures = 0
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[done]}"),
                        TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), console=err,
                        disable=quiet or not err.is_terminal, transient=True)
    with progress:
        for path in files:
            name = "stdin" if path == "-" else Path(path).name
            task = progress.add_task(name, total=None, done="", speed="")
            started = time.perf_counter()

            def on_progress(done_s: float, total_s: float, _task=task, _t0=started) -> None:
                speed = done_s / max(1e-9, time.perf_counter() - _t0)
                progress.update(_task, total=total_s, completed=done_s,
                                done=f"{_clock(done_s)}/{_clock(total_s)}", speed=f"{speed:.1f}x")

            try:
                transcript = transcribe_file(recognizer, path, TranscribeOptions(block_s=block_s), on_progress)
            except ReallmError as exc:
                failures += 1
                print(f"reallm: error: {exc}", file=sys.stderr, flush=True)
                continue
            finally:
                progress.remove_task(task)
            if output_dir is not None:
                stem_source = "stdin" if path == "-" else path
                write_transcript(transcript, output_path(output_dir, stem_source, fmt_name), fmt_name)
            else:
                text = format_transcript(transcript, fmt_name)
                sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
                sys.stdout.flush()
    if failures:
        raise typer.Exit(1)


def _clock(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _writable(folder: Path) -> bool:
    import os

    return os.access(folder, os.W_OK | os.X_OK)


def register(app: typer.Typer) -> None:
    app.command("transcribe")(transcribe_command)

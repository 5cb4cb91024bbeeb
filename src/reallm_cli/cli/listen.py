"""``reallm listen``: live transcription from a microphone.

Where things go:

* stdout: one line per finished segment, flushed at once, whether stdout is a terminal, a pipe or a
  file (``reallm listen > notes.txt`` and ``reallm listen | grep -i --line-buffered stop`` just work).
  On a terminal the lines scroll up above the live view.
* stderr: the live view (only on a terminal, and not with ``--quiet``): the line in progress with
  partial words dimmed, elapsed time, input level, real-time factor, lag, overflows; at the end a
  one-line summary.
* ``--output FILE``: every finished segment is appended and flushed at once (txt/srt/vtt/jsonl),
  so killing the process loses only the words not yet final.

Ctrl-C or SIGTERM stops capture, decodes the audio already captured, writes the last words, prints
the summary and exits 0; a second Ctrl-C quits at once (exit 130).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from reallm_cli.cli.options import (FormatOpt, LookaheadMsAlias, ModelOpt, Precision, QuietOpt, RightContextMs,
                                    right_context)
from reallm_cli.errors import ReallmError

# Test hook: "module:attribute" naming a class with the Recognizer API (``load(model)``, ``session()``),
# so the end-to-end microphone test can run without model weights. Not for users.
TEST_RECOGNIZER_ENV = "REALLM_TEST_RECOGNIZER"


def load_recognizer(model: str | None, precision: str = "auto", right_context_ms: int | None = None):
    """The real recogniser, or the test double named by $REALLM_TEST_RECOGNIZER."""
    extra = {} if right_context_ms is None else {"right_context_ms": right_context_ms}
    spec = os.environ.get(TEST_RECOGNIZER_ENV)
    if spec:
        module_name, _, attr = spec.partition(":")
        cls = getattr(importlib.import_module(module_name), attr or "Recognizer")
        return cls.load(model, precision=precision, **extra)
    from reallm_cli.engine import Recognizer

    return Recognizer.load(model, precision=precision, **extra)


def print_devices() -> None:
    from rich.console import Console
    from rich.table import Table

    from reallm_cli.audio.microphone import list_input_devices

    devices = list_input_devices()
    if not devices:
        raise ReallmError("no audio input device found (no microphone, or no sound server such as PulseAudio/PipeWire running)")
    table = Table(box=None)
    for col in ("", "index", "name", "host API", "channels", "rate"):
        table.add_column(col)
    for d in devices:
        table.add_row("*" if d.is_default else "", str(d.index), d.name, d.hostapi, str(d.max_input_channels), f"{d.default_samplerate:.0f}")
    Console().print(table)


def listen_command(
    model: ModelOpt = None,
    precision: Precision = "auto",
    right_context_ms: RightContextMs = None,
    lookahead_ms: LookaheadMsAlias = None,
    device: Annotated[Optional[str], typer.Option("--device", "-d", metavar="NAME|INDEX", help="Input device: index or (part of) its name; default: the system default.", show_default=False)] = None,
    list_devices: Annotated[bool, typer.Option("--list-devices", help="List input devices and exit.")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="FILE", help="Also write the transcript here as it is recognised (txt, srt, vtt, json, jsonl).", show_default=False)] = None,
    fmt: FormatOpt = None,
    append: Annotated[bool, typer.Option("--append", help="Append to --output instead of replacing it (srt/vtt numbering and times continue).")] = False,
    duration: Annotated[Optional[float], typer.Option("--duration", metavar="SECONDS", help="Stop after this many seconds of audio.", show_default=False)] = None,
    quiet: QuietOpt = False,
) -> None:
    """Transcribe the microphone live until Ctrl-C.

    Finished lines go to stdout; the live view (partial words, level, real-time factor, lag) goes to
    stderr. Ctrl-C or SIGTERM finishes the last words and exits 0.
    """
    from reallm_cli.writers import open_stream_writer, resolve_format

    right_context_ms = right_context(right_context_ms, lookahead_ms)
    if list_devices:
        print_devices()
        return
    if duration is not None and duration <= 0:
        raise ReallmError(f"--duration must be positive, got {duration}")
    if output is not None:
        resolve_format(output, fmt)  # a bad format fails before the model loads
    elif fmt is not None:
        raise ReallmError("--format applies to --output; give --output FILE")
    run_listen(model=model, precision=precision, right_context_ms=right_context_ms, device=device, output=output, fmt=fmt, append=append, duration_s=duration,
               quiet=quiet, open_writer=open_stream_writer)


def run_listen(*, model, precision="auto", right_context_ms=None, device, output, fmt, append, duration_s, quiet, open_writer) -> None:
    from rich.console import Console
    from rich.live import Live

    from reallm_cli.audio.microphone import Microphone, find_input_device
    from reallm_cli.live import StdoutLines, run_live
    from reallm_cli.view import TranscriptView, summary_line

    err = Console(stderr=True, highlight=False)
    show_view = not quiet and err.is_terminal
    stdout_tty = sys.stdout.isatty()

    find_input_device(device)  # a wrong --device fails before the (slow) model load
    if show_view:
        with err.status("loading model…"):
            recognizer = load_recognizer(model, precision, right_context_ms)
    else:
        recognizer = load_recognizer(model, precision, right_context_ms)
    session = recognizer.session()

    sinks = [StdoutLines()]
    if output is not None:
        sinks.append(open_writer(output, fmt, append))

    stop = threading.Event()
    previous = {}

    def on_signal(signum, frame) -> None:  # noqa: ARG001
        stop.set()
        # A second Ctrl-C means "quit now": restore the default so it raises KeyboardInterrupt.
        signal.signal(signal.SIGINT, signal.default_int_handler)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)

    # Finished lines scroll above the view when stdout is the same terminal; otherwise they go
    # elsewhere, so the view keeps the last few itself.
    view = TranscriptView(history_lines=0 if stdout_tty else 6)
    mic = Microphone(device)
    try:
        mic.start()
        if show_view:
            with Live(view, console=err, auto_refresh=False, transient=True, redirect_stdout=stdout_tty, redirect_stderr=False) as live:
                stats = run_live(mic, session, sinks=sinks, stop=stop, duration_s=duration_s, view=view, refresh=lambda: live.update(view, refresh=True))
        else:
            stats = run_live(mic, session, sinks=sinks, stop=stop, duration_s=duration_s, view=view)
    finally:
        mic.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not quiet:
        err.print(summary_line(stats, str(output) if output else None))
        if not stop.is_set() and duration_s is None:
            err.print("reallm: warning: the input device stopped delivering audio", style="yellow")


def register(app: typer.Typer) -> None:
    app.command("listen")(listen_command)

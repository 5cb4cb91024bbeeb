"""``reallm align``: CTC forced alignment of a manifest with a trained teacher -> the alignment file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from reallm_cli.cli.options import ThreadsOpt, set_threads


def align_command(
    manifest: Annotated[Path, typer.Option("--manifest", help="Training manifest (JSON Lines: audio, text, duration).", show_default=False)],
    teacher: Annotated[Path, typer.Option("--teacher", help="CTC teacher file from `reallm train teacher`.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Alignment file to write (JSON Lines, one line per utterance).", show_default=False)],
    chunk_ms: Annotated[Optional[int], typer.Option("--chunk-ms", help="Chunk of the ReaLLM to train (default: the teacher's).", min=40, show_default=False)] = None,
    on_error: Annotated[Literal["skip", "refuse"], typer.Option("--on-error", help="skip: report bad manifest lines and go on; refuse: stop at the first.")] = "skip",
    max_batch_s: Annotated[float, typer.Option("--max-batch-s", help="Padded seconds of audio per teacher batch.", min=1.0)] = 120.0,
    report_json: Annotated[Optional[Path], typer.Option("--json", help="Also write the alignment report here as JSON.", show_default=False)] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Align every utterance with the teacher; prints the report (emission delay, failed share).

    Utterances the teacher cannot align are kept in the file with their error, so the failure
    rate stays visible; the ReaLLM stage skips them.
    """
    import torch

    from reallm_cli.errors import ReallmError
    from reallm_cli.train.teacher import align_manifest

    if on_error not in ("skip", "refuse"):
        raise ReallmError(f"--on-error must be skip or refuse, not {on_error!r}")
    set_threads(threads)
    report = align_manifest(teacher, manifest, output, chunk_ms=chunk_ms, on_error=on_error, max_batch_s=max_batch_s)
    print(f"wrote {output}", file=sys.stderr)
    typer.echo(report.summary())
    if report_json is not None:
        from reallm_cli.writers import atomic_write_text

        atomic_write_text(report_json, json.dumps(report.to_dict(), indent=1))


def register(app: typer.Typer) -> None:
    app.command("align")(align_command)

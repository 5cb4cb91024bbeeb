"""``reallm eval``: WER through the streaming engine, real-time factor and emission delay."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from reallm_cli.cli.options import (LookaheadMsAlias, ModelOpt, Precision, RightContextMs, ThreadsOpt, right_context,
                                    set_threads)


def eval_command(
    manifest: Annotated[Path, typer.Argument(help="JSON Lines manifest: audio, text (duration optional).", show_default=False)],
    model: ModelOpt = None,
    precision: Precision = "auto",
    right_context_ms: RightContextMs = None,
    lookahead_ms: LookaheadMsAlias = None,
    group_by: Annotated[Literal["dir", "id", "none"], typer.Option("--group-by", help="WER per group: dir (first folder of the audio path), id, or none.")] = "dir",
    alignments: Annotated[Optional[Path], typer.Option("--alignments", help="Reference word times (JSONL id, words[word, end_s]) for emission delay.", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--json", help="Write the full report (with every hypothesis) here.", show_default=False)] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N utterances.", min=1)] = None,
    threads: ThreadsOpt = None,
) -> None:
    """Evaluate a model on a manifest, streaming every utterance; prints a table."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from reallm_cli.engine import Recognizer
    from reallm_cli.errors import ReallmError
    from reallm_cli.evaluate import evaluate
    from reallm_cli.writers import atomic_write_text

    if group_by not in ("dir", "id", "none"):
        raise ReallmError(f"--group-by must be dir, id or none, not {group_by!r}")
    if alignments is not None and not alignments.is_file():
        raise ReallmError(f"alignment file not found: {alignments}")
    right_context_ms = right_context(right_context_ms, lookahead_ms)
    set_threads(threads)
    recognizer = Recognizer.load(model, precision=precision, right_context_ms=right_context_ms)
    err = Console(stderr=True)
    with err.status("evaluating") as status:
        report = evaluate(recognizer, manifest, model or "default", group_by, alignments, limit,
                          on_utterance=lambda i, n, r: status.update(f"evaluating {i}/{n}"))
    t = Table(title=f"reallm eval: {manifest.name} ({recognizer.precision})")
    for col in ("group", "utterances", "words", "WER %", "sub", "del", "ins"):
        t.add_column(col, justify="left" if col == "group" else "right")
    for g in report.groups:
        t.add_row(g.group, str(g.utterances), str(g.words), f"{100 * g.wer:.1f}", str(g.substitutions), str(g.deletions), str(g.insertions))
    if [g.group for g in report.groups] != ["all"]:  # with --group-by none the one group is the total
        t.add_row("all", str(report.utterances), "", f"{100 * report.wer:.1f}", "", "", "", style="bold")
    out = Console()
    out.print(t)
    out.print(f"real-time factor {report.rtf:.4f} ({report.compute_s:.1f} s compute for {report.audio_s:.1f} s audio)")
    if report.delay_words:
        out.print(f"emission delay: median {report.delay_p50_s:.3f} s, p95 {report.delay_p95_s:.3f} s over {report.delay_words} words")
    if output is not None:
        atomic_write_text(output, report.to_json())


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)

"""Options that several commands share, declared once so their names, metavars and help are the same everywhere."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from reallm_cli.errors import ReallmError

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", metavar="NAME|FILE",
    help="Model name (see `reallm models`) or model file; default: the embedded model.", show_default=False)]

Precision = Annotated[Literal["auto", "fp32", "bf16", "fp16", "int8"], typer.Option(
    "--precision", metavar="auto|fp32|bf16|fp16|int8",
    help="What the linear layers run in. auto: bf16 on a CPU that multiplies bfloat16 natively (AVX512-BF16 "
         "or AMX), else fp16 on x86 (float16 weights, float32 arithmetic), else fp32. bf16, fp16 or int8 are "
         "converted on load (faster; int8 is slightly less accurate; bf16 is slower than fp32 on a CPU "
         "without bfloat16 instructions; see the model card).")]

RightContextMs = Annotated[Optional[int], typer.Option(
    "--right-context-ms", metavar="MS",
    help="Audio every encoder layer of a Whisper-encoder model sees past the hop it finishes, a multiple of "
         "240 ms (the default model's own: 720). 480 shows words 0.24 s sooner with more errors on real "
         "speech, 960 0.24 s later; 0 (chunk-causal) is quickest and much less accurate. Measured in the "
         "model card.", min=0, max=1440, show_default=False)]
# The option's first name, kept working for scripts (hidden: one name in the help).
LookaheadMsAlias = Annotated[Optional[int], typer.Option(
    "--lookahead-ms", metavar="MS", help="Old name of --right-context-ms.", min=0, max=1440, hidden=True)]

ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", metavar="N", help="Torch CPU threads (default: torch's choice, one per core).",
    min=1, max=256, show_default=False)]

FormatName = Literal["txt", "srt", "vtt", "json", "jsonl"]
FormatOpt = Annotated[Optional[FormatName], typer.Option(
    "--format", "-f", metavar="txt|srt|vtt|json|jsonl",
    help="Transcript format (listen --output FILE: from its extension unless given).")]

QuietOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", help="Nothing on stderr but warnings and errors (no progress bar, live view or summary).")]


def right_context(right_context_ms: int | None, lookahead_ms: int | None) -> int | None:
    """``--right-context-ms``, or its old name ``--lookahead-ms`` (None: the model's own)."""
    if right_context_ms is not None and lookahead_ms is not None:
        raise ReallmError("--lookahead-ms is the old name of --right-context-ms: give one of them")
    return lookahead_ms if right_context_ms is None else right_context_ms


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (None: leave torch's choice)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

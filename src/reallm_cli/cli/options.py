"""Options that several commands share, declared once so their names, metavars and help are the same everywhere."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", metavar="NAME|FILE",
    help="Model name (see `reallm models`) or model file; default: the embedded model.", show_default=False)]

Precision = Annotated[Literal["auto", "fp32", "bf16", "fp16", "int8"], typer.Option(
    "--precision", metavar="auto|fp32|bf16|fp16|int8",
    help="What the linear layers run in. auto: bf16 on a CPU that multiplies bfloat16 natively (AVX512-BF16 "
         "or AMX), else fp16 on x86 (float16 weights, float32 arithmetic), else fp32. bf16, fp16 or int8 are "
         "converted on load (faster; int8 is slightly less accurate; bf16 is slower than fp32 on a CPU "
         "without bfloat16 instructions; see the model card).")]

LookaheadMs = Annotated[Optional[int], typer.Option(
    "--lookahead-ms", metavar="MS",
    help="Audio a Whisper-encoder model sees ahead of each chunk, a multiple of 240 ms; for the default model "
         "(right-context mode) the right context every encoder layer sees (its own: 720). 480 shows words "
         "0.24 s sooner with more errors on real speech, 960 0.24 s later; 0 is quickest and much less "
         "accurate. Measured in the model card.", min=0, max=1440, show_default=False)]

ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", metavar="N", help="Torch CPU threads (default: torch's choice, one per core).",
    min=1, max=256, show_default=False)]

FormatName = Literal["txt", "srt", "vtt", "json", "jsonl"]
FormatOpt = Annotated[Optional[FormatName], typer.Option(
    "--format", "-f", metavar="txt|srt|vtt|json|jsonl",
    help="Transcript format (listen --output FILE: from its extension unless given).")]

QuietOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", help="Nothing on stderr but warnings and errors (no progress bar, live view or summary).")]


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (None: leave torch's choice)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

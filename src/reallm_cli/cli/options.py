"""Options that several commands share, defined once so their names and help stay the same."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

Precision = Annotated[str, typer.Option(
    "--precision",
    help="auto: bf16 on a CPU that multiplies bfloat16 natively (AVX512-BF16 or AMX), else fp16 on x86 "
         "(float16 weights, float32 arithmetic), else fp32. bf16, fp16 or int8: the encoder's and decoder's "
         "linear layers converted on load (faster; int8 is slightly less accurate; bf16 is slower than fp32 on "
         "a CPU without bfloat16 instructions; see the model card).")]

LookaheadMs = Annotated[Optional[int], typer.Option(
    "--lookahead-ms",
    help="Audio a Whisper-encoder model sees ahead of each chunk, a multiple of 240 ms; for the default model "
         "(right-context mode) the right context every encoder layer sees (its own: 720). 480 shows words "
         "0.24 s sooner with more errors on real speech, 960 0.24 s later; 0 is quickest and much less "
         "accurate. Measured in the model card.", min=0, max=1440, show_default=False)]

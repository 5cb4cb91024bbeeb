"""Options that several commands share, defined once so their names and help stay the same."""

from __future__ import annotations

from typing import Annotated

import typer

Precision = Annotated[str, typer.Option(
    "--precision",
    help="fp32, or int8: the encoder's and decoder's linear layers quantized on load "
         "(faster, slightly less accurate; see the model card).")]

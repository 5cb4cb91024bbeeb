"""``reallm download``: fetch a model into the cache, verified by SHA-256, resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from reallm_cli.cli.options import QuietOpt
from reallm_cli.errors import ReallmError


def download_command(
    name: Annotated[Optional[str], typer.Argument(metavar="NAME", help="Model name from `reallm models`.", show_default=False)] = None,
    url: Annotated[Optional[str], typer.Option("--url", metavar="URL", help="Download this URL instead of a registry model (needs --sha256).", show_default=False)] = None,
    sha256: Annotated[Optional[str], typer.Option("--sha256", metavar="HEX", help="Expected SHA-256 (64 hex digits); the file is refused if it differs.", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="FILE", help="Save here instead of the model cache.", show_default=False)] = None,
    quiet: QuietOpt = False,
) -> None:
    """Download a model into the cache ($REALLM_HOME/models).

    An interrupted download is resumed (also by running the command again); the file is kept only
    if its SHA-256 matches. Prints the path of the model on stdout.
    """
    from reallm_cli.weights import download

    if (name is None) == (url is None):
        raise ReallmError("give a model NAME (see `reallm models`) or --url URL --sha256 HEX")
    path = download(url or name, sha256=sha256, dest=output, quiet=quiet)
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.command("download")(download_command)

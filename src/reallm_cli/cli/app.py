"""Builds the Typer app from one small module per command group; ``main`` turns user errors into one line."""

from __future__ import annotations

import importlib
import sys

import typer

from reallm_cli import __version__

# Each module defines ``register(app: typer.Typer) -> None``; the list order is the order in --help.
COMMAND_MODULES = [
    "transcribe",
    "listen",
    "bench",
    "download",
    "models",
    "data",
    "train",
    "align",
    "eval",
]

app = typer.Typer(
    name="reallm",
    help="Real-time streaming speech recognition with Speech ReaLLM, on a laptop CPU.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"reallm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Real-time streaming speech recognition with Speech ReaLLM, on a laptop CPU."""


for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"reallm_cli.cli.{_name}")
    except ModuleNotFoundError as exc:  # a command group not written yet must not break the others
        if exc.name != f"reallm_cli.cli.{_name}":
            raise
        continue
    _module.register(app)


def main() -> None:
    """Entry point: user errors become one line on stderr and a non-zero exit, never a traceback."""
    from reallm_cli.errors import ReallmError

    try:
        app()
    except ReallmError as exc:
        print(f"reallm: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("reallm: interrupted", file=sys.stderr)
        sys.exit(130)

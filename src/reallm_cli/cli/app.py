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

class _PlainArgument(typer.core.TyperArgument):
    """An argument shown as ``FILE...`` in usage and help, not ``{files}...`` and ``<list[str]>``."""

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        return name if self.required else f"[{name}]"

    def display_type_rich(self, ctx) -> None:  # noqa: ARG002
        return None


def _plain_metavar(param) -> str:
    """A plain word for an option's value (``MS``, ``FILE``, ``N``) where Typer would show ``<int range>``."""
    name, desc = param.name or "", param.type_descriptor
    if desc.is_choice:
        return "|".join(map(str, desc.choices))
    if name.endswith("_ms"):
        return "MS"
    if name.endswith("_s") or name == "duration":
        return "SECONDS"
    if name.endswith("_minutes"):
        return "MINUTES"
    if desc.is_path:
        return "DIR" if name.endswith("dir") else "FILE"
    if desc.annotation is int:
        return "N"
    if desc.annotation is float:
        return "X"
    return name.upper().replace("_", "-")


def _plain_help(cmd) -> None:
    """Give every parameter of ``cmd`` (and of its subcommands) a plain metavar, in one place for all commands."""
    for param in cmd.params:
        if isinstance(param, typer.core.TyperArgument):
            if param.metavar is None:
                param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")
            param.__class__ = _PlainArgument
        elif param.metavar is None and not getattr(param, "is_flag", False) and not getattr(param, "count", False):
            param.metavar = _plain_metavar(param)
    for sub in getattr(cmd, "commands", {}).values():
        _plain_help(sub)


class _Group(typer.core.TyperGroup):
    """The root group; see ``_plain_help``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _plain_help(self)


app = typer.Typer(
    name="reallm",
    cls=_Group,
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


# Exit statuses, the same for every command (README and man pages list them).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def main() -> None:
    """Entry point: user errors, ours and the option parser's alike, become one ``reallm: error:`` line."""
    from reallm_cli.errors import ReallmError, error

    click = typer.core._click  # Typer's own copy of click: its exceptions are these
    try:
        status = app(standalone_mode=False)
    except ReallmError as exc:
        error(str(exc))
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()  # `reallm` alone: the help, as before
        sys.exit(EXIT_USAGE)
    except click.exceptions.ClickException as exc:
        hint = f" (see: {exc.ctx.command_path} --help)" if getattr(exc, "ctx", None) is not None else ""
        error(" ".join(exc.format_message().split()) + hint)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        print("reallm: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(status if isinstance(status, int) else EXIT_OK)

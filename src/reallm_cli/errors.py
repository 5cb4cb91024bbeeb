"""One exception family for problems the user can fix; the CLI prints them as one line and exits non-zero."""


class ReallmError(Exception):
    """A problem with the user's input or environment (bad file, bad option, missing model, ...)."""

    exit_code = 2


class ModelError(ReallmError):
    """A model file that is missing, corrupt, or of the wrong kind."""


class ConfigError(ReallmError, ValueError):
    """A model config with an unknown or missing key, a value of the wrong type, or inconsistent values."""


def error(text: str) -> None:
    """One line on stderr in the one voice every reallm message uses."""
    import sys

    print(f"reallm: error: {text}", file=sys.stderr, flush=True)


def warn(text: str) -> None:
    """A one-line warning on stderr (the run goes on, or ends with a non-zero status)."""
    import sys

    print(f"reallm: warning: {text}", file=sys.stderr, flush=True)

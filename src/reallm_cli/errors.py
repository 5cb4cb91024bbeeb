"""One exception family for problems the user can fix; the CLI prints them as one line and exits non-zero."""


class ReallmError(Exception):
    """A problem with the user's input or environment (bad file, bad option, missing model, ...)."""

    exit_code = 2


class ModelError(ReallmError):
    """A model file that is missing, corrupt, or of the wrong kind."""

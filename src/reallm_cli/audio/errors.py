"""The one exception the audio front end raises for bad input; its message is a single line for users."""

from reallm_cli.errors import ReallmError


class AudioError(ReallmError):
    """An audio input that cannot be used (missing, a directory, not audio, corrupt, empty)."""

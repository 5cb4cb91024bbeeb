"""reallm: real-time streaming speech recognition with Speech ReaLLM."""

__version__ = "0.1.0"

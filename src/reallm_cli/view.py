"""Rich renderables for the terminal: the live transcript view and its status line.

Memory stays flat over hours: the view keeps only the last ``history_lines`` finished lines and the
line in progress; everything older lives in the output file / stdout, not here.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from rich.console import Group
from rich.text import Text


@dataclass
class LiveStats:
    """What the status line shows; updated by the live loop."""

    captured_s: float = 0.0  # audio the microphone delivered
    decoded_s: float = 0.0  # audio the recogniser has consumed
    compute_s: float = 0.0  # time spent inside push/flush
    level_db: float = -120.0  # loudness of the latest block, dBFS
    overflows: int = 0  # PortAudio input overflows + blocks dropped from a full queue
    words: int = 0
    segments: int = 0
    stopping: bool = False  # Ctrl-C seen: decoding what is left

    @property
    def rtf(self) -> float:
        """Real-time factor: compute seconds per audio second (below 1 keeps up)."""
        return self.compute_s / self.decoded_s if self.decoded_s > 0 else 0.0

    @property
    def lag_s(self) -> float:
        """Audio captured but not yet decoded."""
        return max(0.0, self.captured_s - self.decoded_s)


def format_clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


_BARS = " ▁▂▃▄▅▆▇█"


def level_meter(level_db: float, width: int = 10, floor_db: float = -60.0) -> str:
    """A bar of ``width`` cells, empty at ``floor_db`` and full at 0 dBFS."""
    frac = min(1.0, max(0.0, (level_db - floor_db) / -floor_db)) if math.isfinite(level_db) else 0.0
    eighths = round(frac * width * 8)
    full, rest = divmod(eighths, 8)
    return ("█" * full + (_BARS[rest] if rest else "")).ljust(width)


def level_db(block) -> float:
    """RMS level of a block of float samples in dBFS."""
    import numpy as np

    if len(block) == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(np.square(block, dtype=np.float64))))
    return 20 * math.log10(max(rms, 1e-6))


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def status_line(stats: LiveStats) -> Text:
    """● 01:23  ▇▇▇▅      RTF 0.31  lag 0.2 s  42 words  overflows 0"""
    t = Text()
    if stats.stopping:
        t.append("■ finishing ", style="bold yellow")
    else:
        t.append("● ", style="bold red")
    t.append(format_clock(stats.captured_s), style="bold")
    t.append("  ")
    t.append(level_meter(stats.level_db), style="green" if stats.level_db < -6 else "red")
    t.append(f"  RTF {stats.rtf:.2f}", style="red" if stats.rtf > 1 else "")
    t.append(f"  lag {stats.lag_s:.1f} s", style="yellow" if stats.lag_s > 2 else "")
    t.append(f"  {plural(stats.words, 'word')}")
    if stats.overflows:
        t.append(f"  overflows {stats.overflows}", style="bold red")
    else:
        t.append("  overflows 0", style="dim")
    return t


class TranscriptView:
    """Finished lines (last N), the line in progress (final words normal, partial dimmed), status."""

    def __init__(self, history_lines: int = 6) -> None:
        self.lines: deque[str] = deque(maxlen=max(0, history_lines))
        self.open_text = ""  # final words of the segment in progress
        self.partial = ""  # text that may still change
        self.stats = LiveStats()

    def add_line(self, text: str) -> None:
        if self.lines.maxlen:
            self.lines.append(text)

    def render(self) -> Group:
        current = Text()
        current.append(self.open_text)
        if self.partial:
            current.append((" " if self.open_text else "") + self.partial, style="dim")
        parts = [Text(line) for line in self.lines]
        parts.append(current)
        parts.append(status_line(self.stats))
        return Group(*parts)

    def __rich__(self) -> Group:
        return self.render()


def summary_line(stats: LiveStats, output: str | None = None) -> str:
    """One line for stderr when a live session ends."""
    parts = [
        f"listened {format_clock(stats.decoded_s)} ({stats.decoded_s:.1f} s)",
        f"{plural(stats.words, 'word')} in {plural(stats.segments, 'segment')}",
        f"RTF {stats.rtf:.2f}",
        f"overflows {stats.overflows}",
    ]
    if output:
        parts.append(f"wrote {output}")
    return "reallm: " + ", ".join(parts)

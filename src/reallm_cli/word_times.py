"""Word start and end times finer than the 240 ms chunk, from the encoder's 20 ms frames.

The decoder writes a word after a chunk, so all it knows is which chunks the word's pieces came after:
its times lie on the chunk grid. The *word timer* is a small character CTC head (LayerNorm, one hidden
layer, blank + space + apostrophe + a-z) over the encoder frames the engine computes anyway; it ships
as its own file, ``word-timer.safetensors`` beside the model (the model file stays as it is), and is
trained by ``recipes/default/word_timer.py`` on cached encoder frames.

When the engine finalises a word, a ``FrameTrack`` (one per stream, the head's log-posteriors of the
stream's recent frames) force-aligns the characters of the previous word, the word and the start of
the next one (CTC Viterbi, ``reallm_cli.align.ctc``) over the frames around the word's chunks; the
first frame of its first character and the last frame of its last character give its start and end.

A model whose encoder is not the one the head was trained on (a fingerprint of its weights, stored in
the head's file) or a model with no such file beside it keeps the chunk times.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from reallm_cli.align.ctc import AlignmentError, ctc_forced_align
from reallm_cli.errors import ModelError
from reallm_cli.text import normalize_text
from reallm_cli.train.ctc_head import CTCHead

FILE_NAME = "word-timer.safetensors"
FORMAT = "reallm-word-timer/1"
BLANK, SPACE = 0, 1
CHARS = " '" + "abcdefghijklmnopqrstuvwxyz"  # id = position + 1; 0 is the CTC blank
_CHAR_ID = {c: i + 1 for i, c in enumerate(CHARS)}
VOCAB_SIZE = len(CHARS) + 1


def text_ids(text: str) -> list[int]:
    """Character ids of ``text`` in spoken form (``normalize_text``: "Mr." -> mister, "1990" ->
    nineteen ninety), words separated by SPACE; characters outside the alphabet are dropped."""
    out: list[int] = []
    for word in normalize_text(text).split():
        ids = [_CHAR_ID[c] for c in word if c in _CHAR_ID and c != " "]
        if ids:
            if out:
                out.append(SPACE)
            out.extend(ids)
    return out


def encoder_fingerprint(encoder: torch.nn.Module) -> str:
    """A short hash of every parameter of ``encoder`` (a strided sample of each, in fp16): the head
    is only valid over the frames of the encoder it was trained on. Taken before any quantisation."""
    h = hashlib.sha256()
    for name, p in sorted(encoder.named_parameters()):
        flat = p.detach().reshape(-1)
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(flat[:: max(1, flat.numel() // 4096)].to(torch.float16).numpy().tobytes())
    return h.hexdigest()[:32]


class WordTimer:
    """The CTC head and what its file says about it."""

    def __init__(self, head: CTCHead, fingerprint: str, frame_s: float = 0.02, start_offset_s: float = 0.0,
                 end_offset_s: float = 0.0, blank_penalty: float = 0.0, join_gap_s: float = 0.0,
                 extra: dict | None = None):
        self.head = head.eval()
        self.fingerprint = fingerprint
        self.frame_s = frame_s
        self.start_offset_s = start_offset_s  # added to a word's first frame's start (calibration)
        self.end_offset_s = end_offset_s  # added to its last frame's end
        self.blank_penalty = blank_penalty  # taken off the blank's log-probability when aligning (longer letters)
        self.join_gap_s = join_gap_s  # a word that starts less than this after the word before starts where it ends
        self.extra = extra or {}

    @property
    def in_dim(self) -> int:
        return self.head.net[0].normalized_shape[0]

    def log_probs(self, frames: torch.Tensor) -> np.ndarray:
        """Encoder frames (T, C) -> per-frame log-posteriors (T, VOCAB_SIZE), float32."""
        with torch.inference_mode():
            return self.head(frames.float()[None])[0].numpy()

    def matches(self, encoder: torch.nn.Module) -> bool:
        return getattr(encoder, "out_dim", self.in_dim) == self.in_dim and encoder_fingerprint(encoder) == self.fingerprint

    def track(self, frames_per_chunk: int, lead_chunks: int = 0, frame_s: float | None = None) -> "FrameTrack":
        return FrameTrack(self, frames_per_chunk, lead_chunks, frame_s)

    def save(self, path: str | Path) -> Path:
        """fp16 safetensors with its metadata, and ``<file>.sha256`` beside it (checked at every load)."""
        from safetensors.torch import save_file

        from reallm_cli.weights import sha256_file

        path = Path(path)
        hidden = self.head.net[2].out_features
        meta = {"format": FORMAT, "chars": CHARS, "blank": str(BLANK), "in_dim": str(self.in_dim),
                "hidden": str(hidden), "frame_s": repr(self.frame_s), "encoder_fingerprint": self.fingerprint,
                "start_offset_s": repr(self.start_offset_s), "end_offset_s": repr(self.end_offset_s),
                "blank_penalty": repr(self.blank_penalty), "join_gap_s": repr(self.join_gap_s),
                "extra": json.dumps(self.extra)}
        tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in self.head.state_dict().items()}
        tmp = path.with_name(path.name + ".partial")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        path.with_name(path.name + ".sha256").write_text(f"{sha256_file(path)}  {path.name}\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "WordTimer":
        """Read a word-timer file; its ``.sha256`` beside it is checked first. Any problem is one
        ``ModelError`` line naming the file."""
        from safetensors import SafetensorError, safe_open

        from reallm_cli.weights import verify_model_file

        path = Path(path)
        verify_model_file(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                state = {k: f.get_tensor(k).float() for k in f.keys()}
            if meta.get("format") != FORMAT:
                raise ValueError(f"not a word-timer file (format {meta.get('format')!r}, want {FORMAT!r})")
            if meta.get("chars") != CHARS or int(meta.get("blank", -1)) != BLANK:
                raise ValueError("its alphabet is not this version's")
            head = CTCHead(int(meta["in_dim"]), VOCAB_SIZE, hidden=int(meta["hidden"]), dropout=0.0)
            head.load_state_dict(state)
            return cls(head, meta["encoder_fingerprint"], float(meta["frame_s"]), float(meta["start_offset_s"]),
                       float(meta["end_offset_s"]), float(meta.get("blank_penalty", 0.0)),
                       float(meta.get("join_gap_s", 0.0)),
                       json.loads(meta.get("extra") or "{}"))
        except (OSError, SafetensorError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"word-timer file {path} is damaged or not one: {first}") from exc


def find_word_timer(model_path: str | Path, encoder: torch.nn.Module) -> WordTimer | None:
    """The word timer beside ``model_path`` if there is one and it fits ``encoder``, else None.
    A damaged file is an error (``ModelError``), not a silent fallback."""
    path = Path(model_path).parent / FILE_NAME
    if not path.is_file():
        return None
    timer = WordTimer.load(path)
    return timer if timer.matches(encoder) else None


class FrameTrack:
    """One stream's recent head log-posteriors, indexed by stream frame (lead-in included), and the
    word alignment over them."""

    def __init__(self, timer: WordTimer, frames_per_chunk: int, lead_chunks: int = 0, frame_s: float | None = None,
                 keep_s: float = 30.0):
        self.timer = timer
        self.k = frames_per_chunk
        self.frame_s = frame_s or timer.frame_s  # the engine's frame, which the timer's file should agree with
        self.lead_frames = lead_chunks * frames_per_chunk
        self._keep = max(int(keep_s / self.frame_s), 16 * frames_per_chunk)
        self._lp = np.zeros((0, VOCAB_SIZE), np.float32)
        self._start = 0  # stream frame index of self._lp[0]
        self._prev: tuple[list[int], int] | None = None  # the last word's characters and its first frame
        self._prev_end_s = 0.0  # the last word's end time: words never overlap
        self._words = 0  # words timed so far
        self.tail_chunks = 1  # chunks looked at after a word that no next word follows yet

    @property
    def n_frames(self) -> int:
        return self._start + len(self._lp)

    def push(self, frames: torch.Tensor) -> None:
        """Encoder frames (t, C), in stream order."""
        if not frames.shape[0]:
            return
        lp = self.timer.log_probs(frames)
        lp[:, BLANK] -= self.timer.blank_penalty
        self._lp = np.concatenate([self._lp, lp])
        if len(self._lp) > self._keep:
            drop = len(self._lp) - self._keep
            self._lp, self._start = self._lp[drop:], self._start + drop

    def word_times(self, text: str, first_chunk: int, last_chunk: int, upto_chunk: int | None = None,
                   next_text: str = "", margin_chunks: int = 1,
                   fallback: tuple[float, float] | None = None) -> tuple[float, float] | None:
        """(start_s, end_s) on the stream's audio clock (lead-in excluded) of the word ``text`` whose
        audio the decoder put in chunks ``first_chunk``..``last_chunk`` (stream chunks, lead-in
        included); frames after chunk ``upto_chunk`` are not looked at, so the answer does not depend
        on how far the encoder has run. ``next_text``: the beginning of the next word, when known.
        When the word has no characters to align or its frames are gone: ``fallback`` (its chunk
        times), moved on so as not to overlap the word before, or None without one."""
        span = self._word_frames(text, first_chunk, last_chunk, upto_chunk, next_text, margin_chunks)
        if span is None:
            self._prev = None
            if fallback is None:
                return None
            start_s = max(fallback[0], self._prev_end_s)
            return self._finish(start_s, max(fallback[1], start_s + self.frame_s))
        s, e = span
        t = self.timer
        start_s = max((s - self.lead_frames) * self.frame_s + t.start_offset_s, self._prev_end_s, 0.0)
        if self._words and start_s - self._prev_end_s < t.join_gap_s:  # a short gap joins the word before
            start_s = self._prev_end_s
        return self._finish(start_s, max((e - self.lead_frames) * self.frame_s + t.end_offset_s, start_s + self.frame_s))

    def _finish(self, start_s: float, end_s: float) -> tuple[float, float]:
        start_s, end_s = round(start_s, 3), round(end_s, 3)
        self._prev_end_s = end_s
        self._words += 1
        return start_s, end_s

    def _word_frames(self, text: str, first_chunk: int, last_chunk: int, upto_chunk: int | None, next_text: str,
                     margin_chunks: int) -> tuple[int, int] | None:
        """[first, end) stream frames of the word's characters, or None."""
        ids = text_ids(text)
        if not ids:
            return None
        k = self.k
        hi = (last_chunk + 1 + (margin_chunks if next_text else self.tail_chunks)) * k
        if upto_chunk is not None:
            hi = min(hi, (upto_chunk + 1) * k)
        hi = min(hi, self.n_frames)
        lo = max((first_chunk - margin_chunks) * k, 0)
        prev = self._prev
        if prev is not None and prev[1] >= lo - 2 * k:  # the previous word is near: align it too
            lo = min(lo, prev[1])
        else:
            prev = None
        lo = max(lo, self._start, hi - self._keep)
        if hi - lo < len(ids):
            return None
        before = prev[0] + [SPACE] if prev else []
        nxt = text_ids(next_text) if next_text else []
        labels = before + ids + ([SPACE] + nxt if nxt else [])
        span = self._align(self._lp[lo - self._start : hi - self._start], labels, len(before), len(ids))
        if span is None and (before or nxt):
            span = self._align(self._lp[lo - self._start : hi - self._start], ids, 0, len(ids))
            before = []
        if span is None:
            return None
        self._prev = (ids, span[0] + lo)
        return span[0] + lo, span[1] + lo

    @staticmethod
    def _align(lp: np.ndarray, labels: Sequence[int], first: int, n: int) -> tuple[int, int] | None:
        """[first frame, end frame) of labels[first : first + n] in the best CTC path of ``labels``."""
        try:
            a = ctc_forced_align(lp, labels, BLANK)
        except AlignmentError:
            return None
        return a.token_spans[first][0], a.token_spans[first + n - 1][1]

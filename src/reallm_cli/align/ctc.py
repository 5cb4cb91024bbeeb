"""CTC forced alignment (Viterbi), greedy CTC decoding, and token -> chunk assignment for ReaLLM targets.

The CTC teacher's alignment tells us at which frame each token "spikes" (the first frame of its
emission). Speech ReaLLM is then trained to emit that token right after the embedding of the chunk
that holds that frame, so ``token_chunks_from_frames`` turns frames into chunk indices.

Viterbi runs over the usual extended label sequence ``blank t1 blank t2 ... tU blank`` (S = 2U+1
states). The loop is over time; every step is vectorised over the S states (and, in the batched
version, over the batch too), which keeps a 10 s utterance at a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reallm_cli.errors import ReallmError

NEG_INF = -np.inf

# Back-pointer codes: which predecessor state the best path came from.
_STAY, _FROM_PREV, _FROM_SKIP = 0, 1, 2


class AlignmentError(ReallmError, ValueError):
    """A token sequence that cannot be aligned to the given posteriors (bad ids, bad shapes)."""


class AlignmentImpossibleError(AlignmentError):
    """Too few frames for the tokens (each token needs a frame, repeats need a blank between them),
    or every path has probability zero."""


@dataclass(frozen=True)
class CtcAlignment:
    """The single best CTC path of one utterance."""

    tokens: tuple[int, ...]
    token_spans: tuple[tuple[int, int], ...]  # per token: [first_frame, end_frame) of its emission
    score: float  # log-probability of the best path
    frame_labels: tuple[int, ...]  # per frame: index u of the token emitted there, or -1 for blank

    @property
    def token_frames(self) -> tuple[int, ...]:
        """First frame of each token's emission (the CTC "spike")."""
        return tuple(s for s, _ in self.token_spans)

    @property
    def n_frames(self) -> int:
        return len(self.frame_labels)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, possibly on an accelerator or with grad
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def min_frames_for(tokens: Sequence[int]) -> int:
    """Fewest frames a CTC path for ``tokens`` needs: one per token plus a blank between equal neighbours."""
    toks = list(tokens)
    return len(toks) + sum(1 for a, b in zip(toks, toks[1:]) if a == b)


def _check_tokens(tokens: Sequence[int], vocab_size: int, blank: int) -> np.ndarray:
    toks = np.asarray(list(tokens), dtype=np.int64)
    if toks.ndim != 1:
        raise AlignmentError(f"tokens must be a flat sequence of ids, got shape {toks.shape}")
    if not 0 <= blank < vocab_size:
        raise AlignmentError(f"blank id {blank} is outside the vocabulary of {vocab_size}")
    if toks.size and (toks.min() < 0 or toks.max() >= vocab_size):
        raise AlignmentError(f"token ids must lie in [0, {vocab_size}); got {toks.min()}..{toks.max()}")
    if np.any(toks == blank):
        raise AlignmentError(f"the token sequence contains the blank id {blank}")
    return toks


def _extended(toks: np.ndarray, blank: int) -> tuple[np.ndarray, np.ndarray]:
    """Extended labels (S,) and, per state, whether it may be entered by skipping the blank before it."""
    n_states = 2 * len(toks) + 1
    ext = np.full(n_states, blank, dtype=np.int64)
    ext[1::2] = toks
    skip_ok = np.zeros(n_states, dtype=bool)
    # A token state may be entered from the previous token state unless both are the same token
    # (then the blank in between is what separates the two emissions).
    skip_ok[3::2] = toks[1:] != toks[:-1]
    return ext, skip_ok


def ctc_forced_align(log_probs, tokens: Sequence[int], blank: int) -> CtcAlignment:
    """Best CTC path of ``tokens`` through per-frame log-posteriors ``log_probs`` (T, V)."""
    lp = _to_numpy(log_probs)
    if lp.ndim != 2:
        raise AlignmentError(f"log_probs must be (T, V), got shape {lp.shape}")
    n_frames, vocab_size = lp.shape
    toks = _check_tokens(tokens, vocab_size, blank)
    need = min_frames_for(toks.tolist())
    if n_frames < max(need, 1):
        raise AlignmentImpossibleError(
            f"{len(toks)} tokens need at least {max(need, 1)} frames (repeats need a blank between them), got {n_frames}"
        )
    ext, skip_ok = _extended(toks, blank)
    n_states = len(ext)
    emit = lp[:, ext]  # (T, S)

    delta = np.full(n_states, NEG_INF)  # (S,) best score of a path ending in each state
    delta[0] = emit[0, 0]
    if n_states > 1:
        delta[1] = emit[0, 1]
    back = np.zeros((n_frames, n_states), dtype=np.int8)  # (T, S)
    cand = np.full((3, n_states), NEG_INF)  # rows: stay, from s-1, from s-2
    cols = np.arange(n_states)
    for t in range(1, n_frames):
        cand[0] = delta
        cand[1, 1:] = delta[:-1]
        cand[2, 2:] = np.where(skip_ok[2:], delta[:-2], NEG_INF)
        choice = cand.argmax(axis=0)  # exact ties resolve to the first row, so the result is deterministic
        delta = cand[choice, cols] + emit[t]
        back[t] = choice

    finals = [n_states - 1] if n_states == 1 else [n_states - 1, n_states - 2]
    last = max(finals, key=lambda s: delta[s])
    score = float(delta[last])
    if not np.isfinite(score):
        raise AlignmentImpossibleError("every CTC path for these tokens has probability zero")

    states = np.empty(n_frames, dtype=np.int64)
    s = last
    for t in range(n_frames - 1, -1, -1):
        states[t] = s
        s -= int(back[t, s])
    return _alignment_from_states(toks, states, score)


def _alignment_from_states(toks: np.ndarray, states: np.ndarray, score: float) -> CtcAlignment:
    frame_labels = np.where(states % 2 == 1, (states - 1) // 2, -1)
    spans = []
    for u in range(len(toks)):
        where = np.flatnonzero(states == 2 * u + 1)
        spans.append((int(where[0]), int(where[-1]) + 1))
    return CtcAlignment(
        tokens=tuple(int(t) for t in toks),
        token_spans=tuple(spans),
        score=score,
        frame_labels=tuple(int(x) for x in frame_labels),
    )


def ctc_forced_align_batch(
    log_probs, lengths: Sequence[int], tokens: Sequence[Sequence[int]], blank: int
) -> list[CtcAlignment | AlignmentImpossibleError]:
    """Align a padded batch (B, T, V) at once; impossible items come back as their exception, not raised."""
    lp = _to_numpy(log_probs)
    if lp.ndim != 3:
        raise AlignmentError(f"log_probs must be (B, T, V), got shape {lp.shape}")
    batch, max_frames, vocab_size = lp.shape
    lengths = [int(n) for n in lengths]
    if len(lengths) != batch or len(tokens) != batch:
        raise AlignmentError(f"batch of {batch} needs {batch} lengths and token lists, got {len(lengths)} and {len(tokens)}")
    if any(n < 0 or n > max_frames for n in lengths):
        raise AlignmentError(f"lengths must lie in [0, {max_frames}], got {lengths}")

    results: list[CtcAlignment | AlignmentImpossibleError | None] = [None] * batch
    toks_list = [_check_tokens(t, vocab_size, blank) for t in tokens]
    for b, (toks, n) in enumerate(zip(toks_list, lengths)):
        need = max(min_frames_for(toks.tolist()), 1)
        if n < need:
            results[b] = AlignmentImpossibleError(f"{len(toks)} tokens need at least {need} frames, got {n}")
    live = [b for b in range(batch) if results[b] is None]
    if not live:
        return results  # type: ignore[return-value]

    n_states = 2 * max(len(toks_list[b]) for b in live) + 1
    ext = np.full((len(live), n_states), blank, dtype=np.int64)  # (B', S) padded states are never reachable
    skip_ok = np.zeros((len(live), n_states), dtype=bool)
    valid = np.zeros((len(live), n_states), dtype=bool)
    for i, b in enumerate(live):
        e, k = _extended(toks_list[b], blank)
        ext[i, : len(e)], skip_ok[i, : len(k)], valid[i, : len(e)] = e, k, True
    live_idx = np.array(live)[:, None, None]
    emit = lp[live_idx, np.arange(max_frames)[None, :, None], ext[:, None, :]]  # (B', T, S), no (B, T, V) copy
    emit = np.where(valid[:, None, :], emit, NEG_INF)
    lens = np.array([lengths[b] for b in live])

    delta = np.full((len(live), n_states), NEG_INF)  # (B', S)
    delta[:, 0] = emit[:, 0, 0]
    if n_states > 1:
        delta[:, 1] = emit[:, 0, 1]
    back = np.zeros((len(live), max_frames, n_states), dtype=np.int8)  # (B', T, S)
    cand = np.full((3, len(live), n_states), NEG_INF)
    rows = np.arange(len(live))[:, None]
    cols = np.arange(n_states)[None, :]
    for t in range(1, int(lens.max())):
        cand[0] = delta
        cand[1, :, 1:] = delta[:, :-1]
        cand[2, :, 2:] = np.where(skip_ok[:, 2:], delta[:, :-2], NEG_INF)
        choice = cand.argmax(axis=0)  # (B', S)
        new = cand[choice, rows, cols] + emit[:, t]
        active = (t < lens)[:, None]  # finished utterances keep their last scores
        delta = np.where(active, new, delta)
        back[:, t] = np.where(active, choice, 0)

    for i, b in enumerate(live):
        toks, n = toks_list[b], lengths[b]
        last_state = 2 * len(toks)
        finals = [last_state] if last_state == 0 else [last_state, last_state - 1]
        last = max(finals, key=lambda s: delta[i, s])
        score = float(delta[i, last])
        if not np.isfinite(score):
            results[b] = AlignmentImpossibleError("every CTC path for these tokens has probability zero")
            continue
        states = np.empty(n, dtype=np.int64)
        s = last
        for t in range(n - 1, -1, -1):
            states[t] = s
            s -= int(back[i, t, s])
        results[b] = _alignment_from_states(toks, states, score)
    return results  # type: ignore[return-value]


def ctc_greedy_decode(log_probs, blank: int) -> list[int]:
    """Best-per-frame CTC decoding of (T, V) log-posteriors: argmax, merge repeats, drop blanks."""
    lp = _to_numpy(log_probs)
    if lp.ndim != 2:
        raise AlignmentError(f"log_probs must be (T, V), got shape {lp.shape}")
    best = lp.argmax(axis=1)
    out: list[int] = []
    prev = -1
    for k in best.tolist():
        if k != prev and k != blank:
            out.append(int(k))
        prev = k
    return out


def token_chunks_from_frames(
    token_first_frames: Sequence[int],
    frame_ms: int,
    chunk_ms: int,
    wait_ms: int = 0,
    *,
    delay_ms: int = 0,
    n_chunks: int | None = None,
) -> list[int]:
    """Index of the chunk after whose embedding each token may be emitted.

    A token spiking at frame f has been heard once audio up to the end of that frame, (f+1)*frame_ms
    (+ ``delay_ms``, an optional extra wait), is in. The embedding of chunk c has seen audio up to
    (c+1)*chunk_ms + wait_ms (the encoder's ``wait_ms``), so the token goes to the first such chunk
    covering it; with no wait that is simply the chunk containing frame f. Clamped to ``n_chunks - 1`` when given
    (the last chunk sees the end of the stream) and made non-decreasing so the target order is the
    token order.
    """
    if frame_ms <= 0 or chunk_ms <= 0 or wait_ms < 0:
        raise AlignmentError(f"need frame_ms > 0, chunk_ms > 0, wait_ms >= 0; got {frame_ms}, {chunk_ms}, {wait_ms}")
    if n_chunks is not None and n_chunks < 1:
        raise AlignmentError(f"n_chunks must be at least 1, got {n_chunks}")
    chunks: list[int] = []
    floor = 0
    for f in token_first_frames:
        if f < 0:
            raise AlignmentError(f"frame indices must be non-negative, got {f}")
        heard_ms = (int(f) + 1) * frame_ms + delay_ms - wait_ms
        c = max(0, -(-heard_ms // chunk_ms) - 1)  # ceil(heard / chunk) - 1
        if n_chunks is not None:
            c = min(c, n_chunks - 1)
        floor = max(floor, c)
        chunks.append(floor)
    return chunks

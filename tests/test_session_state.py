"""A session's memory is bounded by construction: its state is as large after 24 h of audio as after 1 h.

The state is measured generically: every tensor, array, list and object reachable from the session's
attributes, less what all sessions share (the recognizer, its model and tokenizer).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import tiny_right_context_model
from reallm_cli.engine import DecodeOptions, Recognizer
from reallm_cli.model.conformer import ConformerConfig
from reallm_cli.model.decoder import DecoderConfig
from reallm_cli.model.presets import placeholder_tokenizer
from reallm_cli.model.reallm import ReaLLM, ReaLLMConfig
from reallm_cli.stats import Reservoir

SR = 16_000


def state_bytes(session) -> int:
    """Bytes the session holds: tensor storages and arrays (each once), containers, objects and scalars,
    reached through attributes, never into the shared recognizer, model (any nn.Module) or tokenizer."""
    rec = session.recognizer
    seen = {id(rec), id(rec.model), id(rec.tokenizer)}
    storages: set[int] = set()
    total = 0
    todo = [v for k, v in vars(session).items() if k != "recognizer"]
    while todo:
        x = todo.pop()
        if id(x) in seen or isinstance(x, (nn.Module, type)) or callable(x) and not hasattr(x, "__dict__"):
            continue
        seen.add(id(x))
        if isinstance(x, torch.Tensor):
            s = x.untyped_storage()
            if s.data_ptr() not in storages or s.nbytes() == 0:
                storages.add(s.data_ptr())
                total += s.nbytes()
            continue
        if isinstance(x, np.ndarray):
            base = x if x.base is None else x.base
            if isinstance(base, np.ndarray) and id(base) not in storages:
                storages.add(id(base))
                total += base.nbytes
            continue
        total += sys.getsizeof(x)
        if isinstance(x, dict):
            todo.extend(x.keys())
            todo.extend(x.values())
        elif isinstance(x, (list, tuple, set, frozenset)) or type(x).__name__ == "deque":
            todo.extend(x)
        elif hasattr(x, "__dict__"):
            todo.extend(vars(x).values())
        elif hasattr(x, "__slots__"):
            todo.extend(getattr(x, a) for a in x.__slots__ if hasattr(x, a))
    return total


class _NoMel:
    """A front end that costs nothing: one 0-wide mel frame per 10 ms of audio."""

    def __init__(self) -> None:
        self._carry = 0

    def push(self, audio: np.ndarray) -> torch.Tensor:
        n, self._carry = divmod(self._carry + len(audio), 160)
        return torch.empty(n, 0)

    def flush(self) -> torch.Tensor:
        return torch.empty(0, 0)


class _NoiseEncoder(nn.Module):
    """A stand-in streaming encoder that turns every two mel frames into one frame of seeded noise, in
    fixed memory: the hours of this test cost the decoder's work only, not an encoder's per frame."""

    frame_ms = 20
    wait_ms = 0
    hop_chunks = 1
    stem_lookahead_ms = 0

    def __init__(self, chunk_ms: int, out_dim: int = 8) -> None:
        super().__init__()
        self.chunk_ms, self.out_dim = chunk_ms, out_dim
        self._noise = torch.randn(1, 4 * chunk_ms // 20, out_dim, generator=torch.Generator().manual_seed(1))

    def init_state(self, batch_size: int = 1) -> dict:
        return {"mel": 0, "frames": 0}

    def step(self, mel: torch.Tensor, state: dict):
        n = (state["mel"] + mel.shape[1]) // 2 - state["frames"]
        state["mel"] += mel.shape[1]
        state["frames"] += n
        reps = -(-n // self._noise.shape[1])
        return self._noise.repeat(1, reps, 1)[:, :n], state

    def flush(self, state: dict):
        return self._noise[:, :0], state


def test_a_day_of_audio_holds_no_more_state_than_an_hour():
    """24 h in blocks of 10 min through a tiny random decoder with one-minute chunks (1440 chunks, so
    the test is fast), restarting its context every 8 chunks; the state is sampled every hour."""
    tok = placeholder_tokenizer(64)
    torch.manual_seed(0)
    chunk_ms = 60_000
    dec = DecoderConfig(vocab_size=tok.vocab_size, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, ffn_hidden=32,
                        window=64)
    cfg = ReaLLMConfig(encoder=ConformerConfig(chunk_ms=chunk_ms), decoder=dec)  # not built: the stand-in runs
    model = ReaLLM(cfg, _NoiseEncoder(chunk_ms)).eval()
    rec = Recognizer(model, tok, DecodeOptions(max_tokens_per_chunk=2, context_chunks=8, carry_chunks=2,
                                               lead_in_chunks=1))
    pieces = 0

    def count(p, c):
        nonlocal pieces
        pieces += 1

    s = rec.session(on_piece=count)
    s.encoder.mel = _NoMel()
    block = np.zeros(600 * SR, np.float32)
    sizes = []
    for hour in range(24):
        for _ in range(6):
            s.push(block)
        sizes.append(state_bytes(s))
    assert s.audio_s == 24 * 3600
    assert s.chunks_done >= 24 * 60  # the lead-in chunk too (less the frames still waiting)
    assert pieces > 1000 and s.stats.pieces == pieces, "the decoder said too little; the test would prove little"
    assert s.stats.restarts > 150 and s.stats.chunk_decode_s.count == s.chunks_done
    # flat: no hour holds more than the first did (the word in progress and the context's pieces vary a little)
    assert max(sizes[1:]) <= sizes[0] + 2048, sizes
    s.flush()


def test_a_real_right_context_stream_holds_as_much_after_two_minutes_as_after_thirty_seconds():
    """The whole pipeline (log-mel, a tiny Whisper-style encoder in right-context mode, decoder) across many
    encoder windows and decoder contexts: the state does not grow with them."""
    tok = placeholder_tokenizer(64)
    model = tiny_right_context_model(tok.vocab_size, d=16, enc_heads=2, enc_layers=1, dec_window=64)
    rec = Recognizer(model, tok, DecodeOptions(max_tokens_per_chunk=2, context_chunks=16, carry_chunks=4))
    s = rec.session()
    noise = (np.random.default_rng(0).standard_normal(10 * SR) * 0.1).astype(np.float32)
    sizes = []
    for k in range(12):  # 2 min: ~40 encoder windows of 2.88 s, ~30 decoder contexts
        for i in range(0, len(noise), 4000):
            s.push(noise[i : i + 4000])
        sizes.append(state_bytes(s))
    assert s.stats.restarts >= 25 and s.encoder.state.next_window >= 35
    assert max(sizes[3:]) <= max(sizes[:3]) + 2048, sizes


def test_the_reservoir_is_exact_while_it_holds_everything_and_fixed_in_size_after():
    r = Reservoir(capacity=100)
    values = np.random.default_rng(0).exponential(size=100)
    for v in values:
        r.add(v)
    for q in (50, 95, 99):
        assert r.percentile(q) == float(np.percentile(values, q))
    assert r.count == 100 and r.max == values.max() and r.total == pytest.approx(values.sum())
    nbytes = r._sample.nbytes
    for v in np.linspace(0, 1, 200_000):
        r.add(v)
    assert r._sample.nbytes == nbytes and r.count == 200_100 and r.max == values.max()
    assert abs(r.percentile(50) - 0.5) < 0.15  # a uniform sample of a stream that is now mostly uniform on [0, 1]
    assert Reservoir().percentile(99) == 0.0


def test_a_reservoir_sample_estimates_the_percentiles_of_a_long_stream():
    r = Reservoir()
    x = np.random.default_rng(1).lognormal(size=300_000)
    for v in x:
        r.add(v)
    for q in (50, 95, 99):
        true = np.percentile(x, q)
        assert abs(np.mean(x <= r.percentile(q)) * 100 - q) < 1.0, (q, r.percentile(q), true)

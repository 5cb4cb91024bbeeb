"""The decoder context of a cross-attention model (``model.cross_decoder``), with ``engine.DecoderContext``'s
interface: ``chunks_ahead``, ``forget``, ``piece``, and a restart at ``context_chunks`` chunks.

The speech memory holds the frames of the chunks in the context; the text holds the prompt and the pieces
written. The pieces after chunk e read the frames of chunks 0 .. e. Each chunk is asked "a piece, or
BLANK?" by a short-lived copy of the last text position (``CrossAttentionDecoder.ask``), several chunks in
one call. The decoder's greedy rules live here, so that the engine's argmax reads logits that already obey
them: BLANK's logit is lowered by ``blank_penalty``, and with ``no_repeat`` a piece cannot follow itself
within one chunk.

Whisper's decoder knows where it is in the audio by the frames' positions, so a context must not hold
frames whose positions jump back. A Whisper encoder's window restarts them every ``stride`` frames
(``model.whisper_encoder``): there the context restarts too, as the stream began (the lead-in's frames
and the prompt), then the new window's own frames of the last ``carry_chunks`` chunks before it (which it
re-encodes, ``WhisperStreamState.overlaps``) with the pieces already written after them. So a context is at
most one encoder window, its positions only rise, and ``context_chunks`` does not cut it shorter. A context
also begins afresh (lead-in and prompt alone) after ``QUIET_RESTART`` chunks without a piece: Whisper's
decoder can fall silent mid-stream and stay so while its context lasts, and in a pause a restart costs
nothing. With an encoder without windows, a context holding ``context_chunks`` chunks restarts with the last
``carry_chunks`` chunks, as does one whose text nearly fills the decoder's positions. Every restart falls on
a chunk fixed by the stream alone, so any block size writes the same pieces.
"""

from __future__ import annotations

import torch

from reallm_cli.model.cross_decoder import CrossCache
from reallm_cli.model.whisper_config import WhisperEncoderConfig, window_emit_range


class CrossDecoderContext:
    QUIET_RESTART = 12  # chunks without a piece after which a context begins afresh (2.88 s; 8 was worse)

    def __init__(self, recognizer, encoder_stage=None) -> None:
        """``encoder_stage`` (``engine.EncoderStage``): where a Whisper encoder's window frames are read at
        a window restart; None restarts as an encoder without windows."""
        self._recognizer = recognizer
        self._decoder = recognizer.model.decoder
        self._cfg = self._decoder.cfg
        self._opts = recognizer.options
        self._fpc = recognizer.model.frames_per_chunk
        self._blank = recognizer.tokenizer.blank
        self._stage = encoder_stage
        enc = recognizer.model.encoder.config
        self._windows = enc if isinstance(enc, WhisperEncoderConfig) and encoder_stage is not None else None
        self._window = 1  # the next window to restart on
        self._next = 0  # the stream's index of the next chunk fed (the lead-in's first is 0)
        self._written: dict[int, list[int]] = {}  # the stream's chunk -> pieces, since the context began
        self._quiet_from = 0  # the stream's chunk the context began at
        self.chunks: list[tuple[torch.Tensor, list[int]]] = []  # (frames (F, D), pieces)
        self._prompted = False
        self._last: int | None = None  # the context's last piece (None: the prompt's end)
        self.kv = self._new_cache()

    def _limit(self) -> int:
        """Chunks a context may hold: a whole window's (the first holds most), else ``context_chunks``."""
        if self._windows is None:
            return self._opts.context_chunks
        return -(-window_emit_range(self._windows, 0)[1] // self._fpc)

    def _switch(self) -> int | None:
        """The stream's chunk where the next window's frames begin (None without windows)."""
        if self._windows is None:
            return None
        return window_emit_range(self._windows, self._window)[0] // self._fpc

    def _wake(self) -> int:
        """The stream's chunk at which a context that wrote nothing since restarts afresh."""
        return max(self._quiet_from, max(self._written, default=-1) + 1) + self.QUIET_RESTART

    def _new_cache(self) -> CrossCache:
        most = self._limit() + self._opts.chunks_ahead  # a pass may read this far ahead of a restart
        return self._decoder.init_cache(most * self._fpc)

    def _rules(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float().clone()
        logits[..., self._blank] -= self._cfg.blank_penalty
        return logits

    def _seen(self, chunks: torch.Tensor | int, n: int = 1) -> torch.Tensor:
        """Frames read by positions after the given chunks (a tensor), or ``n`` positions after one chunk:
        all frames up to the chunk's end."""
        if isinstance(chunks, int):
            return torch.full((n,), (chunks + 1) * self._fpc)
        return (chunks + 1) * self._fpc

    def _prompt(self) -> None:
        """The prompt joins the text once the chunks it reads are in the memory."""
        if not self._prompted and len(self.chunks) >= self._cfg.prompt_chunks:
            self._decoder.feed(self.kv, None, self._seen(self._cfg.prompt_chunks - 1, self._cfg.prompt_tokens),
                               logits=False)
            self._prompted = True

    def _full(self) -> bool:
        room = self._cfg.n_ctx - self.kv.n - self._opts.max_tokens_per_chunk
        return len(self.chunks) >= self._limit() or room <= 0

    def chunks_ahead(self, slots: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Feed the frames (n, F, D) of the next chunks, as many as ``DecodeOptions.chunks_ahead`` allows
        and never past the next restart, restarting first where one is due; returns each chunk's logits
        (k, V) and whether it restarted. A chunk before the prompt's last answers BLANK."""
        switch, wake = self._switch(), self._wake()
        restart = self._next in (switch, wake) or self._full()
        if self._next == switch:
            self._restart_on_window(switch)
        elif self._next == wake:
            self._restart(carry=False)
        elif restart:
            self._restart()
        switch = self._switch()
        room = self._limit() - len(self.chunks) if switch is None else switch - self._next
        k = max(1, min(slots.shape[0], self._opts.chunks_ahead, room, self._wake() - self._next))
        first = len(self.chunks)
        self._next += k
        self._decoder.add_frames(self.kv, slots[:k].reshape(-1, slots.shape[-1]))
        self.chunks.extend((s.clone(), []) for s in slots[:k])
        logits = torch.full((k, self._cfg.vocab_size), float("-inf"))
        logits[:, self._blank] = 0.0
        ready = max(0, self._cfg.prompt_chunks - 1 - first)  # chunks answered BLANK before the prompt
        if ready < k:
            if not self._prompted:
                self._prompt()
            asked = self._decoder.ask(self.kv, self._last, self._seen(torch.arange(first + ready, first + k)))
            logits[ready:] = self._rules(asked)
        return logits, restart

    def forget(self, n: int) -> None:
        """Forget the last ``n`` chunks fed by ``chunks_ahead``; they are fed again later."""
        if n:
            self._decoder.drop_frames(self.kv, n * self._fpc)
            del self.chunks[-n:]
            self._next -= n

    def piece(self, token: int) -> torch.Tensor:
        """A piece written after the latest chunk; returns the next logits (1, 1, V)."""
        self.chunks[-1][1].append(token)
        self._written.setdefault(self._next - 1, []).append(token)
        self._last = token
        logits = self._rules(self._decoder.feed(self.kv, torch.tensor([token]), self._seen(len(self.chunks) - 1)))
        if self._cfg.no_repeat:
            logits[token] = float("-inf")
        return logits.view(1, 1, -1)

    def _restart_on_window(self, switch: int) -> None:
        """A fresh context at ``switch``, the new window's first chunk: the lead-in's frames, the prompt,
        then the window's own frames of the last ``carry_chunks`` chunks before it (positions below the
        window's next ones) with the pieces written after those chunks."""
        frames = self._stage.state.overlaps.get(switch * self._fpc)
        self._window += 1
        if frames is None:  # no window frames to restart on (the stream ended): as without windows
            return self._restart()
        n = min(frames.shape[1] // self._fpc, self._opts.carry_chunks)
        tail = frames[0, frames.shape[1] - n * self._fpc:]
        carried = [(tail[j * self._fpc:(j + 1) * self._fpc], list(self._written.get(switch - n + j, []))) for j in range(n)]
        self._begin([(f, []) for f in self._recognizer.lead_in_embeddings()] + carried)

    def _restart(self, carry: bool = True) -> None:
        carried = self.chunks[len(self.chunks) - self._opts.carry_chunks:] if carry else []
        self._begin([(f, []) for f in self._recognizer.lead_in_embeddings()] + carried)

    def _begin(self, chunks: list[tuple[torch.Tensor, list[int]]]) -> None:
        """A fresh context of these chunks (frames, pieces): their frames, the prompt, their pieces."""
        self.chunks = chunks
        self.kv, self._prompted, self._last = self._new_cache(), False, None
        self._quiet_from = self._next
        self._written = {c: p for c, p in self._written.items() if c >= self._next - len(chunks)}  # bounded
        if self.chunks:
            self._decoder.add_frames(self.kv, torch.cat([f for f, _ in self.chunks]))
        self._prompt()
        for c, (_, pieces) in enumerate(self.chunks):
            if pieces:
                self._decoder.feed(self.kv, torch.tensor(pieces), self._seen(c, len(pieces)), logits=False)
                self._last = pieces[-1]

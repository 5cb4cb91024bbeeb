"""The decoder context of a cross-attention model (``model.cross_decoder``), with ``engine.DecoderContext``'s
interface: ``chunks_ahead``, ``forget``, ``piece``, and a restart at ``context_chunks`` chunks.

The speech memory holds the frames of the chunks in the context; the text holds the prompt and the pieces
written. The pieces after chunk e read the frames of chunks 0 .. e. Each chunk is asked "a piece, or
BLANK?" by a short-lived copy of the last text position (``CrossAttentionDecoder.ask``), several chunks in
one call. The decoder's greedy rules live here, so that the engine's argmax reads logits that already obey
them: BLANK's logit is lowered by ``blank_penalty``, and with ``no_repeat`` a piece cannot follow itself
within one chunk.

A restart (the context holds ``context_chunks`` chunks, or the text nearly fills the decoder's positions)
begins a fresh context as the stream began: the lead-in's frames, the prompt, then the last
``carry_chunks`` chunks with the pieces written after them.
"""

from __future__ import annotations

import torch

from reallm_cli.model.cross_decoder import CrossCache


class CrossDecoderContext:
    def __init__(self, recognizer) -> None:
        self._recognizer = recognizer
        self._decoder = recognizer.model.decoder
        self._cfg = self._decoder.cfg
        self._opts = recognizer.options
        self._fpc = recognizer.model.frames_per_chunk
        self._blank = recognizer.tokenizer.blank
        self.chunks: list[tuple[torch.Tensor, list[int]]] = []  # (frames (F, D), pieces)
        self._prompted = False
        self._last: int | None = None  # the context's last piece (None: the prompt's end)
        self.kv = self._new_cache()

    def _new_cache(self) -> CrossCache:
        most = self._opts.context_chunks + self._opts.chunks_ahead  # a pass may read this far ahead of a restart
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
        return len(self.chunks) >= self._opts.context_chunks or room <= 0

    def chunks_ahead(self, slots: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Feed the frames (n, F, D) of the next chunks, as many as ``DecodeOptions.chunks_ahead`` allows,
        restarting a full context first; returns each chunk's logits (k, V) and whether it restarted. A chunk
        before the prompt's last answers BLANK."""
        restart = self._full()
        if restart:
            self._restart()
        k = max(1, min(slots.shape[0], self._opts.chunks_ahead, self._opts.context_chunks - len(self.chunks)))
        first = len(self.chunks)
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

    def piece(self, token: int) -> torch.Tensor:
        """A piece written after the latest chunk; returns the next logits (1, 1, V)."""
        self.chunks[-1][1].append(token)
        self._last = token
        logits = self._rules(self._decoder.feed(self.kv, torch.tensor([token]), self._seen(len(self.chunks) - 1)))
        if self._cfg.no_repeat:
            logits[token] = float("-inf")
        return logits.view(1, 1, -1)

    def _restart(self) -> None:
        carried = self.chunks[len(self.chunks) - self._opts.carry_chunks:]
        lead = self._recognizer.lead_in_embeddings()
        self.chunks = [(f, []) for f in lead] + carried
        self.kv, self._prompted, self._last = self._new_cache(), False, None
        if self.chunks:
            self._decoder.add_frames(self.kv, torch.cat([f for f, _ in self.chunks]))
        self._prompt()
        for c, (_, pieces) in enumerate(self.chunks):
            if pieces:
                self._decoder.feed(self.kv, torch.tensor(pieces), self._seen(c, len(pieces)), logits=False)
                self._last = pieces[-1]

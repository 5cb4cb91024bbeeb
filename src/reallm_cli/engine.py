"""The streaming recogniser: audio blocks of any size in, events out. A file and a microphone share it.

One ``Session`` per stream carries every cache, in four typed parts: ``EncoderStage`` (the log-mel front
end, the encoder state, the frames waiting to fill a chunk), ``DecoderContext`` (the decoder's KV cache and
the chunks and pieces it holds), ``Emission`` (the word in progress, when it becomes final, its times) and
``stats.SessionStats`` (running sums and a fixed-size sample of chunk times). None grows with the stream.
Decoding is greedy: after each chunk's speech embedding(s) the decoder emits word pieces until BLANK,
capped at ``max_tokens_per_chunk``.

A stream is endless, but no training utterance is longer than ~20 s: a decoder whose context holds
more than that is somewhere it never learned to be, and it starts dropping words. So the decoder's
context restarts every ``context_chunks`` chunks: a fresh cache is fed the lead-in silence again and
the last ``carry_chunks`` chunks with the pieces already written after them, as training utterances
begin, and decoding goes on from there. (The encoder restarts its own windows likewise.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from reallm_cli.audio.features import PAD_SAMPLES, StreamingLogMel
from reallm_cli.cross_context import CrossDecoderContext
from reallm_cli.results import Event, Word
from reallm_cli.stats import SessionStats
from reallm_cli.timebase import MEL_FRAME_MS, SAMPLE_RATE
from reallm_cli.tokenizer import Tokenizer


@dataclass(frozen=True)
class DecodeOptions:
    max_tokens_per_chunk: int = 10  # a decoder that loops is cut off after this many pieces per chunk
    finalize_after_chunks: int = 2  # a word with no continuation for this many chunks becomes final
    lead_in_chunks: int = 0  # chunks of silence decoded before the stream's audio (times exclude them)
    emit_delay_chunks: int = 0  # the model writes a word this many chunks after it was heard (see ReaLLMConfig)
    end_silence_chunks: int = 0  # more chunks of silence decoded after the stream's end (see ReaLLMConfig)
    context_chunks: int = 64  # the decoder's context restarts when it holds this many chunks (15.4 s at 240 ms)
    carry_chunks: int = 8  # chunks (with their pieces) carried into a restarted context
    max_word_pieces: int = 32  # a word this long is final (no real word has so many; bounds the word in progress)
    chunks_ahead: int = 16  # ready chunks the decoder reads in one pass at most (``Session._decode_chunks``)

    def __post_init__(self) -> None:
        if self.carry_chunks < 0 or self.lead_in_chunks + self.carry_chunks >= self.context_chunks:
            raise ValueError(f"a restarted context ({self.lead_in_chunks} lead-in + {self.carry_chunks} carried "
                             f"chunks) must be shorter than context_chunks ({self.context_chunks})")
        if self.max_word_pieces < 1:
            raise ValueError(f"max_word_pieces must be >= 1, got {self.max_word_pieces}")
        if self.chunks_ahead < 1:
            raise ValueError(f"chunks_ahead must be >= 1, got {self.chunks_ahead}")


@dataclass
class _PendingWord:
    pieces: list[int]
    first_chunk: int
    last_chunk: int


def frontend_lookahead_ms(encoder) -> float:
    """Audio past a chunk's end that the front end needs before the encoder can finish the chunk's last
    frame: the STFT's half window past the centre of the last mel frame the encoder's stem reads, which
    lies ``stem_lookahead_ms`` after the chunk's own last mel frame (12.5 ms for Whisper's conv stem, which
    reads one mel frame ahead; 2.5 ms for a causal stem)."""
    return PAD_SAMPLES * 1000 / SAMPLE_RATE + encoder.stem_lookahead_ms - MEL_FRAME_MS


class EncoderStage:
    """Audio -> encoder frames in whole chunks: the log-mel front end, the encoder's streaming state, and the
    frames (t, C) waiting to fill a chunk (fewer than one chunk's). Each part holds a bounded amount."""

    def __init__(self, model) -> None:
        self._encoder = model.encoder
        self._frames_per_chunk = model.frames_per_chunk
        self.mel = StreamingLogMel()
        self.state = model.encoder.init_state(1)
        self._waiting: torch.Tensor | None = None  # (t < frames_per_chunk, C)

    def push(self, audio: np.ndarray) -> torch.Tensor:
        """Audio -> the encoder frames it finished ((1, t, C); empty when none)."""
        return self._encode(self.mel.push(audio))

    def flush(self, silence: np.ndarray) -> torch.Tensor:
        """End of stream: ``silence`` (what a late-writing model needs after the audio), then the front end's
        and the encoder's last frames, (1, T, C)."""
        parts = [self._encode(self.mel.push(silence)), self._encode(self.mel.flush())]
        f, self.state = self._encoder.flush(self.state)
        parts.append(f)
        return torch.cat([p.reshape(1, -1, self._encoder.out_dim) for p in parts], 1)

    def _encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel frames (t, n_mels) through the streaming encoder -> its new frames (empty when t == 0)."""
        if not mel.shape[0]:
            return torch.empty(0)
        frames, self.state = self._encoder.step(mel[None], self.state)
        return frames

    def whole_chunks(self, frames: torch.Tensor, last: bool) -> torch.Tensor:
        """New frames in; the frames of every whole chunk now complete (and of the tail when ``last``) out,
        (n, C) with n a multiple of frames_per_chunk unless ``last``; the rest waits for the next call."""
        parts = [] if self._waiting is None else [self._waiting]
        if frames.numel():
            parts.append(frames.reshape(-1, frames.shape[-1]))
        if not parts:
            return torch.empty(0)
        buf = parts[0] if len(parts) == 1 else torch.cat(parts, 0)
        k = self._frames_per_chunk
        take = buf.shape[0] if last else buf.shape[0] // k * k
        rest = buf[take:]
        self._waiting = rest.clone() if rest.shape[0] else None  # not a view that keeps the whole block alive
        return buf[:take]


class DecoderContext:
    """The decoder's KV cache and what it holds: the speech slots of each chunk in its context with the
    pieces written after them, oldest first. At ``context_chunks`` chunks it restarts (see the module
    docstring), so it never holds more than one context."""

    def __init__(self, recognizer: "Recognizer") -> None:
        self._recognizer = recognizer
        self._decoder = recognizer.model.decoder
        self._opts = recognizer.options
        self.kv = self._decoder.init_cache(1)
        self.chunks: list[tuple[torch.Tensor, list[int]]] = []  # (slots (S, D), pieces)

    def chunks_ahead(self, slots: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Feed the speech slots (n, S, D) of the next chunks, as many as may be decided in one pass (at least
        one), restarting a full context first; returns the logits (k, V) after the last slot of each of the k
        chunks fed (a chunk decides there) and whether the context restarted.

        Each chunk's logits are what feeding the chunks one at a time would give as long as the chunks
        before it write nothing: ``forget`` then drops the chunks after the first that writes a piece."""
        restart = len(self.chunks) >= self._opts.context_chunks
        if restart:
            self._restart()
        n_slots = slots.shape[1]
        k = max(1, min(slots.shape[0], self._opts.chunks_ahead, self._opts.context_chunks - len(self.chunks)))
        while k > 1 and not self._decoder.fits_in_order(self.kv, k * n_slots):
            k //= 2
        at = torch.arange(n_slots - 1, k * n_slots, n_slots)
        logits = self._decoder.step(slots[:k].reshape(1, k * n_slots, -1), self.kv, at=at)[0]
        # copies: a view would keep the whole pushed block's slots alive
        self.chunks.extend((s.clone(), []) for s in slots[:k])
        return logits, restart

    def forget(self, n: int) -> None:
        """Forget the last ``n`` chunks fed by ``chunks_ahead`` (before any piece after them): they are fed
        again once the chunk before them has written its pieces."""
        if n:
            self._decoder.rewind(self.kv, sum(slots.shape[0] for slots, _ in self.chunks[-n:]))
            del self.chunks[-n:]

    def piece(self, token: int) -> torch.Tensor:
        """Feed a piece written after the latest chunk; returns the next logits (1, 1, V)."""
        self.chunks[-1][1].append(token)
        return self._decoder.step(self._decoder.embed(torch.tensor([[token]])), self.kv)

    def _restart(self) -> None:
        """A fresh cache holding the lead-in and the last ``carry_chunks`` chunks with their pieces."""
        dec = self._decoder
        carried = self.chunks[len(self.chunks) - self._opts.carry_chunks:]
        self.chunks = [(emb, []) for emb in self._recognizer.lead_in_embeddings()] + carried
        self.kv = dec.init_cache(1)
        dec.step(torch.cat([torch.cat((emb, dec.embed(torch.tensor(pieces, dtype=torch.long))))
                            for emb, pieces in self.chunks])[None], self.kv, last_only=True)


class Emission:
    """Pieces -> words: the word being written and when it becomes final, with its times.

    A word is final when the next word begins, when ``finalize_after_chunks`` chunks passed without a piece
    of it, or at ``max_word_pieces`` pieces (a decoder that never starts a new word must not grow it)."""

    def __init__(self, model, tokenizer: Tokenizer, options: DecodeOptions, word_timer=None) -> None:
        self._tok = tokenizer
        self._opts = options
        self._lead = options.lead_in_chunks
        self._chunk_s = model.chunk_ms / 1000
        # word times from the encoder's frames (``word_times``), when the model has a word timer
        self._track = (word_timer.track(model.frames_per_chunk, self._lead, self._chunk_s / model.frames_per_chunk)
                       if word_timer is not None else None)
        # The embedding of chunk c can be computed once audio up to its end plus the encoder's wait and the
        # front end's look-ahead arrived; an encoder that finishes hops of several chunks finishes chunk c
        # with its hop.
        self._delay_s = (model.encoder.wait_ms + frontend_lookahead_ms(model.encoder)) / 1000
        self._hop = model.encoder.hop_chunks
        self.word: _PendingWord | None = None

    @property
    def partial_text(self) -> str:
        return self._tok.decode(self.word.pieces).strip() if self.word else ""

    def frames(self, frames: torch.Tensor) -> None:
        """The encoder frames (t, C) of the chunks about to be decoded, for the word timer."""
        if self._track is not None:
            self._track.push(frames)

    def piece(self, token: int, chunk: int) -> list[Word]:
        """A piece written after ``chunk``; returns the word it made final, if any."""
        w = self.word
        if w is not None and not self._tok.starts_word(token) and len(w.pieces) < self._opts.max_word_pieces:
            w.pieces.append(token)
            w.last_chunk = chunk
            return []
        self.word = _PendingWord([token], chunk, chunk)
        return [] if w is None else [self.finish_word(w, next_pieces=[token], upto_chunk=chunk)]

    def end_of_chunk(self, chunk: int) -> list[Word]:
        """After ``chunk``'s pieces: a word without a continuation for long enough becomes final."""
        w = self.word
        if w is not None and chunk - w.last_chunk >= self._opts.finalize_after_chunks:
            self.word = None
            return [self.finish_word(w, upto_chunk=chunk)]
        return []

    def end_of_stream(self, chunks: int) -> list[Word]:
        """The stream ended after ``chunks`` chunks: the word in progress is final."""
        w, self.word = self.word, None
        return [] if w is None else [self.finish_word(w, upto_chunk=chunks)]

    def finish_word(self, w: _PendingWord, next_pieces: list[int] | None = None, upto_chunk: int | None = None) -> Word:
        """The word's text and times; ``next_pieces`` begin the next word, and no frame after chunk
        ``upto_chunk`` is looked at (the word timer's answer must not depend on how far the encoder ran)."""
        # The word's whole text is on screen (as partial) once the chunk of its last piece is decoded,
        # which needs audio up to that chunk's end plus the encoder's wait.
        # (a word in the lead-in's last chunk, heard through the encoder's right context, starts at 0)
        # A model that writes words d chunks late heard them d chunks before the chunk they are written in.
        d = self._opts.emit_delay_chunks
        hop_end = -(-(w.last_chunk + 1) // self._hop) * self._hop  # chunk index just after the hop of the last piece
        shown_s = (hop_end - self._lead) * self._chunk_s + self._delay_s - (self._hop - 1) * self._chunk_s
        end_s = max(w.last_chunk + 1 - self._lead - d, 1) * self._chunk_s
        text = self._tok.decode(w.pieces).strip()
        # to the whole ms at or after it (the front end's look-ahead is 12.5 ms): shown no sooner than that
        emit_s = math.ceil(round(max(shown_s, end_s + self._delay_s) * 1000, 6)) / 1000
        start_s, end_s = round(max(w.first_chunk - self._lead - d, 0) * self._chunk_s, 3), round(end_s, 3)
        if self._track is not None:  # finer times from the frames around the word's chunks
            start_s, end_s = self._track.word_times(
                text, w.first_chunk - d, w.last_chunk - d, upto_chunk=upto_chunk,
                next_text=self._tok.decode(next_pieces) if next_pieces else "", fallback=(start_s, end_s))
        return Word(text=text, start_s=start_s, end_s=end_s, emit_s=emit_s)


@dataclass(frozen=True)
class Encoded:
    """One block of audio through the encoder (``Session.encode``), waiting for the decoder."""

    frames: torch.Tensor  # the encoder frames the block finished
    samples: int  # the block's length
    compute_s: float  # time spent encoding it


class Session:
    """One stream. ``push`` audio (float32 mono 16 kHz, any block size); ``flush`` at the end.

    Its state is four typed parts, each bounded however long the stream runs: ``encoder`` (front end,
    encoder state, frames waiting for a chunk), ``decoder`` (KV cache and context), ``emission`` (the word
    in progress) and ``stats`` (running sums and a fixed-size sample of chunk times). ``on_piece(token,
    chunk)``, when given, is called for every piece emitted after the lead-in (chunk 0 is the stream's
    first; a lead-in chunk decoded late has a negative index): a caller that wants every piece keeps them."""

    QUIET_AHEAD = 2  # chunks a decoder pass reads past those decoded since the last write

    def __init__(self, recognizer: "Recognizer", on_piece: Callable[[int, int], None] | None = None):
        self.recognizer = recognizer
        model = recognizer.model
        self._model = model
        self._opts = recognizer.options
        self._chunk_s = model.chunk_ms / 1000
        self.encoder = EncoderStage(model)
        self.decoder = (CrossDecoderContext(recognizer, self.encoder) if model.config.cross_attention
                        else DecoderContext(recognizer))
        self.emission = Emission(model, recognizer.tokenizer, self._opts, recognizer.word_timer)
        self.stats = SessionStats()
        self.chunks_done = 0  # the stream's clock: index of the next chunk to decode, lead-in included
        self._quiet = 0  # chunks decoded since the last that wrote a piece
        self._samples_in = 0
        self._closed = False
        self._lead = self._opts.lead_in_chunks
        self._on_piece = None
        if self._lead:
            self._lead_in()
        self._on_piece = on_piece

    def _lead_in(self) -> None:
        """Decode ``lead_in_chunks`` of digital silence; whatever the decoder says there is dropped."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            self._consume(self.encoder.push(self._silence(self._lead)), last=False)
        self.emission.word = None
        self.stats.pieces = 0
        self.stats.compute_s += time.perf_counter() - t0

    def _silence(self, n_chunks: int) -> np.ndarray:
        return np.zeros(round(n_chunks * self._chunk_s * SAMPLE_RATE), np.float32)

    @property
    def audio_s(self) -> float:
        return self._samples_in / SAMPLE_RATE

    def push(self, audio: np.ndarray) -> Event:
        """Feed one block of audio; returns the words that became final and the text in progress."""
        return self.decode(self.encode(audio))

    def encode(self, audio: np.ndarray) -> Encoded:
        """The first half of ``push``: one block through the front end and the encoder. It touches only the
        encoder's state, so it may run in another thread than ``decode``, one block ahead (``pipeline``);
        blocks must reach ``decode`` in the order they were encoded."""
        if self._closed:
            raise RuntimeError("session already flushed")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        t0 = time.perf_counter()
        with torch.inference_mode():
            frames = self.encoder.push(audio)
        return Encoded(frames, audio.shape[0], time.perf_counter() - t0)

    def decode(self, encoded: Encoded) -> Event:
        """The second half of ``push``: the encoded block's chunks through the decoder; returns the words
        that became final and the text in progress."""
        t0 = time.perf_counter()
        self._samples_in += encoded.samples
        with torch.inference_mode():
            final = self._consume(encoded.frames, last=False)
        self.stats.compute_s += time.perf_counter() - t0 + encoded.compute_s
        self.stats.words += len(final)
        return Event(final=tuple(final), partial=self.partial_text, audio_s=self.audio_s)

    def flush(self) -> Event:
        """End of stream: the remaining audio is decoded and every word becomes final."""
        if self._closed:
            return Event(audio_s=self.audio_s)
        t0 = time.perf_counter()
        with torch.inference_mode():
            # a model that writes words late needs that many chunks after the audio to write the last ones
            frames = self.encoder.flush(self._silence(self._opts.emit_delay_chunks + self._opts.end_silence_chunks))
            final = self._consume(frames, last=True)
            final += self.emission.end_of_stream(self.chunks_done)
        self.stats.compute_s += time.perf_counter() - t0
        self.stats.words += len(final)
        self._closed = True
        return Event(final=tuple(final), partial="", audio_s=self.audio_s)

    @property
    def partial_text(self) -> str:
        return self.emission.partial_text

    # -- internals -------------------------------------------------------------------------------

    def _consume(self, frames: torch.Tensor, last: bool) -> list[Word]:
        """Group encoder frames into chunks and decode every whole chunk (and the tail when ``last``)."""
        ready = self.encoder.whole_chunks(frames, last)
        if not ready.numel():
            return []
        self.emission.frames(ready)
        embeddings = self._model.speech_embeddings(ready[None])[0]  # (n * slots, D)
        words: list[Word] = []
        chunks = embeddings.view(-1, self._model.slots_per_chunk, embeddings.shape[-1])
        i = 0
        while i < chunks.shape[0]:
            n, new = self._decode_chunks(chunks[i:])
            words.extend(new)
            i += n
        return words

    def _decode_chunks(self, slots: torch.Tensor) -> tuple[int, list[Word]]:
        """Decode the next of the chunks whose speech slots (n, S, D) are ready: all those before the first
        that writes a piece, in one pass of the decoder, then that one's pieces. Returns how many chunks
        were decoded and the words that became final. The same pieces as one chunk at a time (where the
        decoder writes nothing, nothing but the chunks' slots follows each other).

        The chunks fed after the first writer are fed again later, so a pass reads only ``QUIET_AHEAD``
        chunks more than have passed since the last write (in continuous speech every second chunk
        writes); in a pause the passes grow, up to ``chunks_ahead``."""
        t0 = time.perf_counter()
        blank = self.recognizer.tokenizer.blank
        logits, restarted = self.decoder.chunks_ahead(slots[: self.QUIET_AHEAD + self._quiet])
        self.stats.restarts += restarted
        writes = (logits.argmax(-1) != blank).nonzero()
        k = logits.shape[0]
        wrote = bool(writes.numel()) and self._opts.max_tokens_per_chunk > 0
        n = int(writes[0]) + 1 if wrote else k
        self.decoder.forget(k - n)
        self._quiet = 0 if wrote else self._quiet + n
        words: list[Word] = []
        for i in range(n):
            c = self.chunks_done
            if i == n - 1:
                words.extend(self._write_pieces(logits[i], c))
            words.extend(self.emission.end_of_chunk(c))
            self.chunks_done += 1
        self.stats.chunks += n
        elapsed = time.perf_counter() - t0
        for _ in range(n):
            self.stats.chunk_decode_s.add(elapsed / n)
        return n, words

    def _write_pieces(self, logits: torch.Tensor, c: int) -> list[Word]:
        """Greedy pieces after chunk ``c`` from the logits (V,) at its last slot, until BLANK (or the cap)."""
        blank = self.recognizer.tokenizer.blank
        words: list[Word] = []
        emitted = 0
        while True:
            token = int(logits.reshape(-1).argmax())
            if token == blank or emitted >= self._opts.max_tokens_per_chunk:
                return words
            emitted += 1
            self.stats.pieces += 1
            if self._on_piece is not None:
                self._on_piece(token, c - self._lead)
            words.extend(self.emission.piece(token, c))
            logits = self.decoder.piece(token)


class Recognizer:
    """A loaded model plus decode options; makes one ``Session`` per stream."""

    sample_rate = SAMPLE_RATE

    def __init__(self, model, tokenizer: Tokenizer, options: DecodeOptions | None = None, precision: str = "fp32",
                 word_timer=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.word_timer = word_timer  # a ``word_times.WordTimer`` for finer word times, or None: chunk times
        self.precision = precision  # what the model's linear layers run in (``model.quantize``)
        self._lead_in_embeddings: dict[int, list[torch.Tensor]] = {}  # by lead-in length
        cfg = model.config
        self.options = options or DecodeOptions(max_tokens_per_chunk=cfg.max_tokens_per_chunk,
                                                lead_in_chunks=cfg.lead_in_ms // model.chunk_ms,
                                                emit_delay_chunks=cfg.emit_delay_chunks,
                                                end_silence_chunks=cfg.end_silence_chunks)

    @classmethod
    def load(cls, model: str | Path | None = None, precision: str = "auto", right_context_ms: int | None = None,
             **option_overrides) -> "Recognizer":
        """Load by registry name, path, or None for the embedded default model; ``precision`` is auto, fp32,
        bf16, fp16 or int8 (the linear layers converted on load, see ``model.quantize``); ``right_context_ms``
        replaces a Whisper encoder's right context (None: the model's own; see ``load_model``)."""
        from reallm_cli.model.checkpoint import load_model
        from reallm_cli.model.quantize import apply_precision, resolve_precision
        from reallm_cli.weights import resolve_model

        precision = resolve_precision(precision)
        from reallm_cli.word_times import find_word_timer

        path = resolve_model(model)
        m, tok = load_model(path, right_context_ms=right_context_ms)
        timer = find_word_timer(path, m.encoder)  # before quantisation: it checks the encoder's weights
        apply_precision(m, precision)
        rec = cls(m, tok, precision=precision, word_timer=timer)
        if option_overrides:
            rec.options = replace(rec.options, **option_overrides)
        return rec

    def lead_in_embeddings(self) -> list[torch.Tensor]:
        """The speech slots (slots, D) of each lead-in chunk of a fresh stream, pure digital silence (the
        audio the encoder waits for too): what a restarted decoder context begins with."""
        model, n = self.model, self.options.lead_in_chunks
        if n == 0:
            return []
        if n not in self._lead_in_embeddings:
            with torch.inference_mode():
                emb = model.speech_embeddings(self.lead_in_frames()[None])[0]
            self._lead_in_embeddings[n] = list(emb.view(n, model.slots_per_chunk, -1))
        return self._lead_in_embeddings[n]

    def lead_in_frames(self) -> torch.Tensor:
        """The encoder's frames (lead-in chunks * frames per chunk, C) of the lead-in's digital silence."""
        model, n = self.model, self.options.lead_in_chunks
        chunk = round(model.chunk_ms * SAMPLE_RATE / 1000)
        silence = np.zeros((n + 1) * chunk + round(model.encoder.wait_ms * SAMPLE_RATE / 1000), np.float32)
        with torch.inference_mode():
            frames, _ = model.encoder.step(StreamingLogMel().push(silence)[None], model.encoder.init_state(1))
        return frames[0, : n * model.frames_per_chunk]

    def session(self, on_piece: Callable[[int, int], None] | None = None) -> Session:
        return Session(self, on_piece)

    def transcribe_array(self, audio: np.ndarray, block_samples: int = 16000 * 8) -> list[Word]:
        """Stream a whole array through a session (the same loop a microphone uses)."""
        s = self.session()
        words: list[Word] = []
        for i in range(0, len(audio), block_samples):
            words.extend(s.push(audio[i : i + block_samples]).final)
        words.extend(s.flush().final)
        return words

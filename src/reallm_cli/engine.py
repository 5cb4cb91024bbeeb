"""The streaming recogniser: audio blocks of any size in, events out. A file and a microphone share it.

One ``Session`` per stream carries every cache: the log-mel front end, the encoder state, the frames
waiting to fill a chunk, and the decoder's KV cache. Decoding is greedy: after each chunk's speech
embedding(s) the decoder emits word pieces until BLANK, capped at ``max_tokens_per_chunk``.

A stream is endless, but no training utterance is longer than ~20 s: a decoder whose context holds
more than that is somewhere it never learned to be, and it starts dropping words. So the decoder's
context restarts every ``context_chunks`` chunks: a fresh cache is fed the lead-in silence again and
the last ``carry_chunks`` chunks with the pieces already written after them, as training utterances
begin, and decoding goes on from there. (The encoder restarts its own windows likewise.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from reallm_cli.audio.features import StreamingLogMel
from reallm_cli.results import Event, Word
from reallm_cli.timebase import SAMPLE_RATE
from reallm_cli.tokenizer import Tokenizer


@dataclass(frozen=True)
class DecodeOptions:
    max_tokens_per_chunk: int = 10  # a decoder that loops is cut off after this many pieces per chunk
    finalize_after_chunks: int = 2  # a word with no continuation for this many chunks becomes final
    lead_in_chunks: int = 0  # chunks of silence decoded before the stream's audio (times exclude them)
    emit_delay_chunks: int = 0  # the model writes a word this many chunks after it was heard (see ReaLLMConfig)
    context_chunks: int = 64  # the decoder's context restarts when it holds this many chunks (15.4 s at 240 ms)
    carry_chunks: int = 8  # chunks (with their pieces) carried into a restarted context

    def __post_init__(self) -> None:
        if self.carry_chunks < 0 or self.lead_in_chunks + self.carry_chunks >= self.context_chunks:
            raise ValueError(f"a restarted context ({self.lead_in_chunks} lead-in + {self.carry_chunks} carried "
                             f"chunks) must be shorter than context_chunks ({self.context_chunks})")


@dataclass
class _PendingWord:
    pieces: list[int]
    first_chunk: int
    last_chunk: int


class Session:
    """One stream. ``push`` audio (float32 mono 16 kHz, any block size); ``flush`` at the end."""

    def __init__(self, recognizer: "Recognizer"):
        self.recognizer = recognizer
        model = recognizer.model
        self._model = model
        self._tok = recognizer.tokenizer
        self._opts = recognizer.options
        self._mel = StreamingLogMel()
        self._enc_state = model.encoder.init_state(1)
        self._frames: list[torch.Tensor] = []  # encoder frames (t, C) not yet a whole chunk
        self._n_frames = 0
        self._kv = model.decoder.init_cache(1)
        # (speech slots, pieces written after them) of each chunk in the decoder's context, oldest first
        self._context: list[tuple[torch.Tensor, list[int]]] = []
        self.restarts = 0
        self._chunk_s = model.chunk_ms / 1000
        # The embedding of chunk c can be computed once audio up to its end plus the look-ahead arrived; an
        # encoder that finishes hops of several chunks (right-context mode) finishes chunk c with its hop.
        self._delay_s = model.encoder.lookahead_ms / 1000
        self._hop = model.encoder.hop_chunks
        self.chunks_done = 0
        self._word: _PendingWord | None = None
        self._samples_in = 0
        self.compute_s = 0.0
        self.tokens: list[tuple[int, int]] = []  # (token id, chunk index) for every piece emitted
        self.chunk_compute_s: list[float] = []  # wall time of each chunk's decode (encoder time excluded)
        self._closed = False
        self._lead = self._opts.lead_in_chunks
        # word times from the encoder's frames (``word_times``), when the model has a word timer
        timer = recognizer.word_timer
        self._track = (timer.track(model.frames_per_chunk, self._lead, self._chunk_s / model.frames_per_chunk)
                       if timer is not None else None)
        if self._lead:
            self._lead_in()

    def _lead_in(self) -> None:
        """Decode ``lead_in_chunks`` of digital silence; whatever the decoder says there is dropped."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            self._consume(self._encode(self._mel.push(self._silence(self._lead))), last=False)
        self._word = None
        self.tokens.clear()
        self.compute_s += time.perf_counter() - t0

    def _silence(self, n_chunks: int) -> np.ndarray:
        return np.zeros(round(n_chunks * self._chunk_s * SAMPLE_RATE), np.float32)

    def _encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel frames (t, n_mels) through the streaming encoder -> its new frames (empty when t == 0)."""
        if not mel.shape[0]:
            return torch.empty(0)
        frames, self._enc_state = self._model.encoder.step(mel[None], self._enc_state)
        return frames

    @property
    def audio_s(self) -> float:
        return self._samples_in / SAMPLE_RATE

    def push(self, audio: np.ndarray) -> Event:
        """Feed one block of audio; returns the words that became final and the text in progress."""
        if self._closed:
            raise RuntimeError("session already flushed")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        t0 = time.perf_counter()
        self._samples_in += audio.shape[0]
        with torch.inference_mode():
            final = self._consume(self._encode(self._mel.push(audio)), last=False)
        self.compute_s += time.perf_counter() - t0
        return Event(final=tuple(final), partial=self.partial_text, audio_s=self.audio_s)

    def flush(self) -> Event:
        """End of stream: the remaining audio is decoded and every word becomes final."""
        if self._closed:
            return Event(audio_s=self.audio_s)
        t0 = time.perf_counter()
        with torch.inference_mode():
            # a model that writes words late needs that many chunks after the audio to write the last ones
            parts = [self._encode(self._mel.push(self._silence(self._opts.emit_delay_chunks))),
                     self._encode(self._mel.flush())]
            f, self._enc_state = self._model.encoder.flush(self._enc_state)
            parts.append(f)
        self.compute_s += time.perf_counter() - t0
        return self._finish(torch.cat([p.reshape(1, -1, self._model.encoder.out_dim) for p in parts], 1),
                            self.audio_s)

    def _finish(self, frames: torch.Tensor, audio_s: float) -> Event:
        """Decode the stream's last encoder frames ((1,) T, C), the tail chunk too; every word becomes final."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            final = self._consume(frames, last=True)
            if self._word is not None:
                final.append(self._finish_word(self._word))
                self._word = None
        self.compute_s += time.perf_counter() - t0
        self._closed = True
        return Event(final=tuple(final), partial="", audio_s=audio_s)

    @property
    def partial_text(self) -> str:
        return self._tok.decode(self._word.pieces).strip() if self._word else ""

    # -- internals -------------------------------------------------------------------------------

    def _consume(self, frames: torch.Tensor, last: bool) -> list[Word]:
        """Group encoder frames into chunks and decode every whole chunk (and the tail when ``last``)."""
        if frames.numel():
            self._frames.append(frames.reshape(-1, frames.shape[-1]))
            self._n_frames += frames.shape[-2]
        k = self._model.frames_per_chunk
        n_whole = self._n_frames // k
        take = n_whole * k + (self._n_frames % k if last else 0)
        if take == 0:
            return []
        buf = torch.cat(self._frames, 0)
        ready, rest = buf[:take], buf[take:]
        self._frames = [rest] if rest.shape[0] else []
        self._n_frames = rest.shape[0]
        if self._track is not None:
            self._track.push(ready)
        embeddings = self._model.speech_embeddings(ready[None])[0]  # (n * slots, D)
        words: list[Word] = []
        for emb in embeddings.view(-1, self._model.config.slots_per_chunk, embeddings.shape[-1]):
            words.extend(self._decode_chunk(emb))
        return words

    def _restart_context(self) -> None:
        """A fresh decoder cache holding the lead-in and the last ``carry_chunks`` chunks with their pieces."""
        dec = self._model.decoder
        carried = self._context[len(self._context) - self._opts.carry_chunks:]
        self._context = [(emb, []) for emb in self.recognizer.lead_in_embeddings()] + carried
        self._kv = dec.init_cache(1)
        dec.step(torch.cat([torch.cat((emb, dec.embed(torch.tensor(pieces, dtype=torch.long))))
                            for emb, pieces in self._context])[None], self._kv, last_only=True)
        self.restarts += 1

    def _decode_chunk(self, emb: torch.Tensor) -> list[Word]:
        t0 = time.perf_counter()
        if len(self._context) >= self._opts.context_chunks:
            self._restart_context()
        c = self.chunks_done
        dec = self._model.decoder
        blank = self._tok.blank
        logits = dec.step(emb[None], self._kv, last_only=True)  # (1, 1, V): a chunk decides after its last slot
        pieces: list[int] = []
        self._context.append((emb, pieces))
        words: list[Word] = []
        emitted = 0
        while True:
            token = int(logits[0, -1].argmax())
            if token == blank or emitted >= self._opts.max_tokens_per_chunk:
                break
            emitted += 1
            pieces.append(token)
            self.tokens.append((token, c - self._lead))
            if self._tok.starts_word(token) or self._word is None:
                if self._word is not None:
                    words.append(self._finish_word(self._word, next_pieces=[token]))
                self._word = _PendingWord([token], c, c)
            else:
                self._word.pieces.append(token)
                self._word.last_chunk = c
            logits = dec.step(dec.embed(torch.tensor([[token]])), self._kv)
        if self._word is not None and c - self._word.last_chunk >= self._opts.finalize_after_chunks:
            words.append(self._finish_word(self._word))
            self._word = None
        self.chunks_done += 1
        self.chunk_compute_s.append(time.perf_counter() - t0)
        return words

    def _finish_word(self, w: _PendingWord, next_pieces: list[int] | None = None) -> Word:
        # The word's whole text is on screen (as partial) once the chunk of its last piece is decoded,
        # which needs audio up to that chunk's end plus the encoder's look-ahead.
        # (a word in the lead-in's last chunk, heard through the look-ahead, starts at 0)
        # A model that writes words d chunks late heard them d chunks before the chunk they are written in.
        d = self._opts.emit_delay_chunks
        hop_end = -(-(w.last_chunk + 1) // self._hop) * self._hop  # chunk index just after the hop of the last piece
        shown_s = (hop_end - self._lead) * self._chunk_s + self._delay_s - (self._hop - 1) * self._chunk_s
        end_s = max(w.last_chunk + 1 - self._lead - d, 1) * self._chunk_s
        text = self._tok.decode(w.pieces).strip()
        emit_s = round(max(shown_s, end_s + self._delay_s), 3)
        start_s, end_s = round(max(w.first_chunk - self._lead - d, 0) * self._chunk_s, 3), round(end_s, 3)
        if self._track is not None:  # finer times from the frames around the word's chunks
            start_s, end_s = self._track.word_times(
                text, w.first_chunk - d, w.last_chunk - d, upto_chunk=self.chunks_done,
                next_text=self._tok.decode(next_pieces) if next_pieces else "", fallback=(start_s, end_s))
        return Word(text=text, start_s=start_s, end_s=end_s, emit_s=emit_s)


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
                                                emit_delay_chunks=cfg.emit_delay_chunks)

    @classmethod
    def load(cls, model: str | Path | None = None, precision: str = "auto", lookahead_ms: int | None = None,
             **option_overrides) -> "Recognizer":
        """Load by registry name, path, or None for the embedded default model; ``precision`` is auto, fp32,
        bf16, fp16 or int8 (the linear layers converted on load, see ``model.quantize``); ``lookahead_ms``
        replaces a Whisper encoder's look-ahead (None: the model's own)."""
        from reallm_cli.model.checkpoint import load_model
        from reallm_cli.model.quantize import apply_precision, resolve_precision
        from reallm_cli.weights import resolve_model

        precision = resolve_precision(precision)
        from reallm_cli.word_times import find_word_timer

        path = resolve_model(model)
        m, tok = load_model(path, lookahead_ms=lookahead_ms)
        timer = find_word_timer(path, m.encoder)  # before quantisation: it checks the encoder's weights
        apply_precision(m, precision)
        rec = cls(m, tok, precision=precision, word_timer=timer)
        if option_overrides:
            rec.options = replace(rec.options, **option_overrides)
        return rec

    def lead_in_embeddings(self) -> list[torch.Tensor]:
        """The speech slots (slots, D) of each lead-in chunk of a fresh stream, pure digital silence (its
        look-ahead too): what a restarted decoder context begins with."""
        model, n = self.model, self.options.lead_in_chunks
        if n == 0:
            return []
        if n not in self._lead_in_embeddings:
            chunk = round(model.chunk_ms * SAMPLE_RATE / 1000)
            silence = np.zeros((n + 1) * chunk + round(model.encoder.lookahead_ms * SAMPLE_RATE / 1000), np.float32)
            with torch.inference_mode():
                mel = StreamingLogMel().push(silence)
                frames, _ = model.encoder.step(mel[None], model.encoder.init_state(1))
                emb = model.speech_embeddings(frames[:, : n * model.frames_per_chunk])[0]
            self._lead_in_embeddings[n] = list(emb.view(n, model.config.slots_per_chunk, -1))
        return self._lead_in_embeddings[n]

    def session(self) -> Session:
        return Session(self)

    def transcribe_array(self, audio: np.ndarray, block_samples: int = 16000 * 8) -> list[Word]:
        """Stream a whole array through a session (the same loop a microphone uses)."""
        s = self.session()
        words: list[Word] = []
        for i in range(0, len(audio), block_samples):
            words.extend(s.push(audio[i : i + block_samples]).final)
        words.extend(s.flush().final)
        return words

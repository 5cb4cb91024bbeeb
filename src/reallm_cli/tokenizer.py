"""Word-piece tokenizers with the BLANK token Speech ReaLLM needs, always used by name.

Two kinds satisfy one ``Tokenizer`` protocol (``blank``, ``vocab_size``, ``encode``, ``decode``, ``piece``,
``starts_word``, and ``model_proto``: bytes that ``tokenizer_from_bytes`` turns back into the tokenizer):

- ``SentencePieceTokenizer``: a SentencePiece model trained here, ``<blank>`` a user-defined symbol;
- ``WhisperBPETokenizer``: a subset of Whisper's byte-level BPE vocabulary (its ``tokenizer.json``, read
  with the ``tokenizers`` library), for a decoder initialised from Whisper's pretrained decoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import sentencepiece as spm

BLANK_PIECE = "<blank>"


@dataclass(frozen=True)
class SpecialTokens:
    blank: int
    unk: int


@runtime_checkable
class Tokenizer(Protocol):
    """What the engine, the training stages and model files need of a tokenizer."""

    @property
    def blank(self) -> int: ...  # the id of BLANK ("nothing more until more audio")

    @property
    def vocab_size(self) -> int: ...

    @property
    def model_proto(self) -> bytes: ...  # serialised: tokenizer_from_bytes(model_proto) rebuilds it

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...  # BLANK ids are skipped

    def piece(self, token_id: int) -> str: ...

    def starts_word(self, token_id: int) -> bool: ...


class SentencePieceTokenizer:
    """Wraps a SentencePiece model whose user-defined symbol ``<blank>`` is Speech ReaLLM's BLANK."""

    def __init__(self, model_proto: bytes):
        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(self.model_proto)
        blank = self.sp.PieceToId(BLANK_PIECE)
        if self.sp.IdToPiece(blank) != BLANK_PIECE:
            raise ValueError("tokenizer has no <blank> symbol; train it with reallm_cli.tokenizer.train_tokenizer")
        self.special = SpecialTokens(blank=blank, unk=self.sp.unk_id())

    @classmethod
    def load(cls, path: str | Path) -> "SentencePieceTokenizer":
        return cls(Path(path).read_bytes())

    @property
    def blank(self) -> int:
        return self.special.blank

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def encode(self, text: str) -> list[int]:
        return list(self.sp.EncodeAsIds(text))

    def decode(self, ids: list[int]) -> str:
        return self.sp.DecodeIds([i for i in ids if i != self.blank])

    def piece(self, token_id: int) -> str:
        return self.sp.IdToPiece(token_id)

    def starts_word(self, token_id: int) -> bool:
        """True when the piece begins a new word (SentencePiece marks that with U+2581)."""
        return self.sp.IdToPiece(token_id).startswith("\u2581")


class WhisperBPETokenizer:
    """Whisper's byte-level BPE cut to ``keep_ids`` (Whisper ids; ours are their indices), index 0 = BLANK.

    Text is encoded with a leading space, as Whisper writes it, so every word starts with a piece that
    begins with "Ġ" (byte-level space). A Whisper token outside the subset is spelled with the subset's
    single-character tokens, so any lowercase normalised text can be encoded.
    """

    MAGIC = b"reallm-whisper-bpe/1\n"

    def __init__(self, tokenizer_json: str, keep_ids: list[int]):
        from tokenizers import Tokenizer as HFTokenizer

        self.tokenizer_json = tokenizer_json
        self.keep_ids = [int(i) for i in keep_ids]
        self.hf = HFTokenizer.from_str(tokenizer_json)
        self._ours = {w: i for i, w in enumerate(self.keep_ids) if i}
        self.special = SpecialTokens(blank=0, unk=-1)

    @classmethod
    def from_bytes(cls, blob: bytes) -> "WhisperBPETokenizer":
        d = json.loads(blob[len(cls.MAGIC):].decode("utf-8"))
        return cls(d["tokenizer"], d["keep_ids"])

    @property
    def model_proto(self) -> bytes:
        return self.MAGIC + json.dumps({"tokenizer": self.tokenizer_json, "keep_ids": self.keep_ids}).encode("utf-8")

    @property
    def blank(self) -> int:
        return 0

    @property
    def vocab_size(self) -> int:
        return len(self.keep_ids)

    def whisper_encode(self, text: str) -> list[int]:
        return list(self.hf.encode(" " + text.strip(), add_special_tokens=False).ids)

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for w in self.whisper_encode(text):
            if w in self._ours:
                out.append(self._ours[w])
                continue
            piece = self.hf.id_to_token(w)  # byte-level characters; "Ġ" + one character is kept as one token
            parts = [piece[:2], *piece[2:]] if piece.startswith("\u0120") else list(piece)
            for ch in parts:
                ours = self._ours.get(self.hf.token_to_id(ch))
                if ours is None:
                    raise ValueError(f"cannot encode {text!r}: no piece for {ch!r} in the vocabulary subset")
                out.append(ours)
        return out

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode([self.keep_ids[i] for i in ids if i != self.blank])

    def piece(self, token_id: int) -> str:
        return "<blank>" if token_id == self.blank else self.hf.id_to_token(self.keep_ids[token_id])

    def starts_word(self, token_id: int) -> bool:
        return token_id != self.blank and self.piece(token_id).startswith("\u0120")


def whisper_bpe_subset(tokenizer_json: str, texts: list[str]) -> WhisperBPETokenizer:
    """The subset of Whisper's vocabulary that ``texts`` use, plus every single byte-level character
    (so that any text can still be spelled); ordered by Whisper id after BLANK."""
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_str(tokenizer_json)
    used: set[int] = set()
    for batch in range(0, len(texts), 4096):
        for enc in hf.encode_batch([" " + t.strip() for t in texts[batch:batch + 4096]], add_special_tokens=False):
            used.update(enc.ids)
    vocab = hf.get_vocab()
    used.update(i for tok, i in vocab.items() if len(tok) == 1 or (len(tok) == 2 and tok[0] == "\u0120"))
    special = {i for tok, i in vocab.items() if tok.startswith("<|")}
    return WhisperBPETokenizer(tokenizer_json, [-1] + sorted(used - special))


def tokenizer_from_bytes(blob: bytes) -> Tokenizer:
    """Rebuild either kind of tokenizer from its ``model_proto`` bytes."""
    if blob.startswith(WhisperBPETokenizer.MAGIC):
        return WhisperBPETokenizer.from_bytes(blob)
    return SentencePieceTokenizer(blob)


def train_tokenizer(sentences: list[str], vocab_size: int, model_type: str = "unigram") -> SentencePieceTokenizer:
    """Train a SentencePiece model in memory on normalised sentences, with BLANK reserved."""
    import io

    out = io.BytesIO()
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(sentences),
        model_writer=out,
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=1.0,
        user_defined_symbols=[BLANK_PIECE],
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        unk_id=0,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return SentencePieceTokenizer(out.getvalue())

"""SentencePiece word pieces plus the special tokens Speech ReaLLM needs, always used by name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

BLANK_PIECE = "<blank>"


@dataclass(frozen=True)
class SpecialTokens:
    blank: int
    unk: int


class Tokenizer:
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
    def load(cls, path: str | Path) -> "Tokenizer":
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


def train_tokenizer(sentences: list[str], vocab_size: int, model_type: str = "unigram") -> Tokenizer:
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
    return Tokenizer(out.getvalue())

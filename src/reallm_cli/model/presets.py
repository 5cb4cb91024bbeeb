"""Named model sizes: ``paper-80m`` (the paper's 20-layer Conformer + 2-layer decoder) and ``small``."""

from __future__ import annotations

from dataclasses import replace

from reallm_cli.errors import ReallmError
from reallm_cli.model.conformer import CONFORMER_PRESETS
from reallm_cli.model.decoder import DECODER_PRESETS
from reallm_cli.model.reallm import ReaLLMConfig

PRESET_NAMES = tuple(CONFORMER_PRESETS)


def preset_config(name: str, vocab_size: int | None = None, chunk_ms: int | None = None) -> ReaLLMConfig:
    """The ReaLLM config of a named preset (a from-scratch Conformer encoder)."""
    if name not in CONFORMER_PRESETS:
        raise ReallmError(f"unknown preset {name!r}; choose one of: {', '.join(PRESET_NAMES)}")
    enc = CONFORMER_PRESETS[name]
    if chunk_ms is not None:
        enc = replace(enc, chunk_ms=chunk_ms)
    dec = DECODER_PRESETS[name]
    if vocab_size is not None:
        dec = replace(dec, vocab_size=vocab_size)
    return ReaLLMConfig(encoder_kind="conformer", encoder=enc.to_dict(), decoder=dec)


def placeholder_tokenizer(vocab_size: int):
    """A tokenizer of the requested size for randomly initialised models (speed measurements only).

    Built directly as a SentencePiece model proto (pieces are letter strings), so it costs no training.
    """
    import itertools

    from sentencepiece import sentencepiece_model_pb2 as pb

    from reallm_cli.tokenizer import BLANK_PIECE, Tokenizer

    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    m.trainer_spec.unk_id = 0
    m.trainer_spec.bos_id = -1
    m.trainer_spec.eos_id = -1
    m.trainer_spec.pad_id = -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.escape_whitespaces = True
    specials = [("<unk>", pb.ModelProto.SentencePiece.UNKNOWN), (BLANK_PIECE, pb.ModelProto.SentencePiece.USER_DEFINED)]
    for piece, kind in specials:
        m.pieces.add(piece=piece, score=0.0, type=kind)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    candidates = itertools.chain(
        ("\u2581",), letters, ("\u2581" + c for c in letters),
        ("".join(p) for p in itertools.product(letters, repeat=2)),
        ("\u2581" + "".join(p) for p in itertools.product(letters, repeat=2)),
        ("".join(p) for p in itertools.product(letters, repeat=3)),
    )
    for i, piece in enumerate(itertools.islice(candidates, vocab_size - len(specials))):
        m.pieces.add(piece=piece, score=-float(i), type=pb.ModelProto.SentencePiece.NORMAL)
    return Tokenizer(m.SerializeToString())

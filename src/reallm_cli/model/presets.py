"""Named model sizes: ``paper-80m`` (the paper's 20-layer Conformer + 2-layer decoder), ``small``, ``tiny``."""

from __future__ import annotations

from dataclasses import replace

from reallm_cli.errors import ReallmError
from reallm_cli.model.conformer import CONFORMER_PRESETS, ConformerConfig
from reallm_cli.model.decoder import DECODER_PRESETS, DecoderConfig
from reallm_cli.model.reallm import ReaLLMConfig

# For tests and smoke runs of the training recipe: ~0.5M parameters, learns a few dozen words of
# synthetic speech in a minute or two of CPU time. Not a useful recogniser of real speech.
_SMOKE_PRESETS: dict[str, tuple[ConformerConfig, DecoderConfig]] = {
    "tiny": (
        ConformerConfig(d_model=96, n_heads=2, n_layers=2, ff_mult=2, conv_kernel=7, subsampling_channels=32,
                        left_chunks=4, dropout=0.0),
        DecoderConfig(vocab_size=4096, d_model=96, n_layers=1, n_heads=2, n_kv_heads=2, ffn_hidden=192, window=128),
    ),
}

PRESET_NAMES = tuple(CONFORMER_PRESETS) + tuple(_SMOKE_PRESETS)


def preset_config(name: str, vocab_size: int | None = None, chunk_ms: int | None = None) -> ReaLLMConfig:
    """The ReaLLM config of a named preset (a from-scratch Conformer encoder)."""
    if name in _SMOKE_PRESETS:
        enc, dec = _SMOKE_PRESETS[name]
    elif name in CONFORMER_PRESETS:
        enc, dec = CONFORMER_PRESETS[name], DECODER_PRESETS[name]
    else:
        raise ReallmError(f"unknown preset {name!r}; choose one of: {', '.join(PRESET_NAMES)}")
    if chunk_ms is not None:
        enc = replace(enc, chunk_ms=chunk_ms)
    if vocab_size is not None:
        dec = replace(dec, vocab_size=vocab_size)
    return ReaLLMConfig(encoder=enc, decoder=dec)


def placeholder_tokenizer(vocab_size: int):
    """A tokenizer of the requested size for randomly initialised models (speed measurements only).

    Built directly as a SentencePiece model proto (pieces are letter strings), so it costs no training.
    """
    import itertools

    from sentencepiece import sentencepiece_model_pb2 as pb

    from reallm_cli.tokenizer import BLANK_PIECE, SentencePieceTokenizer

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
    return SentencePieceTokenizer(m.SerializeToString())

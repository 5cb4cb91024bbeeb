"""Both tokenizer kinds: SentencePiece trained here, and Whisper's BPE cut to a subset."""

from __future__ import annotations

import pytest

from reallm_cli.errors import ModelError
from reallm_cli.model.whisper_import import find_installed_whisper
from reallm_cli.tokenizer import (
    SentencePieceTokenizer,
    Tokenizer,
    WhisperBPETokenizer,
    tokenizer_from_bytes,
    train_tokenizer,
    whisper_bpe_subset,
)

TEXTS = ["and so my fellow americans", "ask not what your country can do for you", "hello world"] * 20


@pytest.fixture(scope="module")
def tokenizer_json() -> str:
    try:
        folder = find_installed_whisper("tiny.en")[0].parent
    except ModelError as exc:
        pytest.skip(str(exc))
    return (folder / "tokenizer.json").read_text()


def test_subset_round_trips_and_marks_word_starts(tokenizer_json):
    tok = whisper_bpe_subset(tokenizer_json, TEXTS)
    assert tok.blank == 0 and tok.piece(0) == "<blank>" and not tok.starts_word(0)
    ids = tok.encode("and so my fellow americans")
    assert [tok.piece(i) for i in ids] == ["\u0120and", "\u0120so", "\u0120my", "\u0120fellow", "\u0120americ", "ans"]
    assert [tok.starts_word(i) for i in ids] == [True, True, True, True, True, False]
    assert tok.decode(ids + [tok.blank]).strip() == "and so my fellow americans"
    assert 0 not in ids and max(ids) < tok.vocab_size


def test_words_outside_the_subset_are_spelled_with_single_characters(tokenizer_json):
    tok = whisper_bpe_subset(tokenizer_json, TEXTS)
    ids = tok.encode("zebra")
    assert tok.decode(ids).strip() == "zebra"
    assert [tok.piece(i) for i in ids] == ["\u0120z", "e", "b", "r", "a"]


def test_serialised_bytes_rebuild_either_kind(tokenizer_json):
    bpe = whisper_bpe_subset(tokenizer_json, TEXTS)
    again = tokenizer_from_bytes(bpe.model_proto)
    assert isinstance(again, WhisperBPETokenizer) and again.keep_ids == bpe.keep_ids
    assert again.encode("hello world") == bpe.encode("hello world")
    sp = train_tokenizer(TEXTS, 40)
    sp_again = tokenizer_from_bytes(sp.model_proto)
    assert isinstance(sp_again, SentencePieceTokenizer) and sp_again.encode("hello world") == sp.encode("hello world")


def test_a_model_file_carries_a_bpe_tokenizer(tokenizer_json, tmp_path):
    from conftest import tiny_model

    from reallm_cli.model.checkpoint import load_model, save_model

    tok = whisper_bpe_subset(tokenizer_json, TEXTS)
    save_model(tmp_path / "m.safetensors", tiny_model(tok.vocab_size), tok)
    model, again = load_model(tmp_path / "m.safetensors")
    assert isinstance(again, WhisperBPETokenizer) and again.keep_ids == tok.keep_ids
    assert model.decoder.cfg.vocab_size == again.vocab_size


@pytest.mark.parametrize("kind", ["sentencepiece", "whisper-bpe"])
def test_both_kinds_keep_the_tokenizer_protocol(kind, request):
    """What the engine relies on, the same for either kind: BLANK by name and never a word start, decoding
    skips it, word starts marked, and model_proto rebuilds an equal tokenizer."""
    if kind == "sentencepiece":
        tok = train_tokenizer(TEXTS, 40)
    else:
        tok = whisper_bpe_subset(request.getfixturevalue("tokenizer_json"), TEXTS)
    assert isinstance(tok, Tokenizer)
    ids = tok.encode("ask not what your country can do")
    assert ids and tok.blank not in ids and max(ids) < tok.vocab_size
    assert not tok.starts_word(tok.blank) and tok.piece(tok.blank) == "<blank>"
    assert sum(tok.starts_word(i) for i in ids) == 7 and tok.starts_word(ids[0])
    assert tok.decode([tok.blank, *ids, tok.blank]).strip() == "ask not what your country can do"
    again = tokenizer_from_bytes(tok.model_proto)
    assert type(again) is type(tok) and again.encode("hello world") == tok.encode("hello world")


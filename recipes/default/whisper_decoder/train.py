"""Fine-tune Whisper base's decoder (``model.cross_decoder``, built by whisper_base.py) on the ReaLLM sequence over a training run's cached streaming
frames (train.py's WORK: feats/, alignments_bpe.jsonl, bpe_tokenizer.bin; issue 33, stage 1).

Each utterance becomes one training row: the prompt and its pieces (each reading the chunks up to its own
aligned chunk + the emit delay, and predicting the next piece of that chunk or BLANK), then one transient
question per chunk (a copy of the last token before the chunk, at its position, seeing the chunk; it
predicts the chunk's first piece or BLANK; nothing attends to it), as ``cross_context`` streams it. The
alignment is moved from the BPE pieces of tiny.en onto the English cut of Whisper base's BPE byte by byte
(``align.retokenize``). Embeddings, prompt and positions stay frozen; resumes from OUT/ckpt.pt after a
kill; OUT/trained.safetensors holds the trained parts, which export.py makes a model file of.

    python recipes/default/whisper_decoder/train.py --work runs/default/train-c --out runs/wd/run \\
        --steps 500 --lr 5e-5 [--init weights/candidates/whisper-decoder.safetensors]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import WHISPER_BASE_CT2  # noqa: E402  (recipes/default/common.py)
from whisper_base import FRAMES_PER_CHUNK, TRAINED, ascii_subset, whisper_base_decoder  # noqa: E402

from reallm_cli.align.retokenize import byte_level_bytes, transfer_chunks  # noqa: E402
from reallm_cli.tokenizer import WhisperBPETokenizer, tokenizer_from_bytes  # noqa: E402
from reallm_cli.train.pseudo_label import assemble_model_dir  # noqa: E402
from reallm_cli.train.feature_cache import FeatureStore  # noqa: E402


def sequence(ids: list[int], chunks: list[int], n_frames: int, emit_delay: int, prompt: list[int], blank: int) -> dict:
    """One utterance's training row: the ``prompt`` ids and the pieces ``ids`` (each written after its
    ``chunks`` entry), then one short-lived question per chunk. Per position: token, position, frames
    visible, target (-100: none), and for a question the index of the token it copies (-1 for the others)."""
    n_chunks = -(-n_frames // FRAMES_PER_CHUNK)
    text = list(prompt) + list(ids)
    group = [-1] * len(prompt) + [min(c, n_chunks - 1) for c in chunks]
    tokens, positions, seen, targets, copy_of = [], [], [], [], []
    for j, (tok, g) in enumerate(zip(text, group)):
        tokens.append(tok), positions.append(j), seen.append(max(g, 0)), copy_of.append(-1)
        nxt = text[j + 1] if j + 1 < len(text) and group[j + 1] == g else blank
        targets.append(-100 if j < len(prompt) else nxt)
    for c in range(n_chunks):
        k = sum(g < c for g in group) - 1  # the last token before chunk c's pieces
        first = [t for t, g in zip(text, group) if g == c]
        tokens.append(text[k]), positions.append(k), seen.append(c), copy_of.append(k)
        targets.append(first[0] if first else blank)
    visible = [min(n_frames, (s + 1 + emit_delay) * FRAMES_PER_CHUNK) for s in seen]
    return {"n": n_frames, "tokens": tokens, "positions": positions, "visible": visible, "targets": targets,
            "copy_of": copy_of, "n_text": len(text)}


def rows(work: Path, tok: WhisperBPETokenizer, emit_delay: int, n_ctx: int, prompt: list[int]) -> tuple[FeatureStore, list[dict]]:
    dec_tok = tokenizer_from_bytes((work / "bpe_tokenizer.bin").read_bytes())
    store = FeatureStore(sorted(p for p in (work / "feats").glob("*/*") if p.is_dir()))
    by_id = {u.id: i for i, u in enumerate(store.items)}
    out, dropped = [], 0
    for r in map(json.loads, (work / "alignments_bpe.jsonl").read_text().splitlines()):
        i = by_id.get(r["id"])
        if i is None:
            dropped += 1
            continue
        u = store.items[i]
        ours = dec_tok.encode(u.text)
        try:
            ids = tok.encode(u.text)
            if len(ours) != len(r["chunks"]):
                raise ValueError("token count")
            chunks = transfer_chunks(byte_level_bytes([dec_tok.piece(t) for t in ours]), r["chunks"],
                                     byte_level_bytes([tok.piece(t) for t in ids]))
        except ValueError:
            dropped += 1
            continue
        row = sequence(ids, chunks, u.n_frames, emit_delay, prompt, tok.blank)
        if len(row["tokens"]) > n_ctx:
            dropped += 1
            continue
        out.append({"i": i, "ids": ids, "chunks": chunks, **row})
    print(f"{len(out)} utterances, {dropped} dropped", flush=True)
    return store, out


def mid_start(e: dict, cut: int, lead: torch.Tensor, carry: int, emit_delay: int, prompt: list[int], blank: int) -> dict:
    """Utterance row ``e`` as a context restarted at chunk ``cut`` sees it (``cross_context``): the lead-in's
    frames, then the utterance's own from chunk cut - carry on, the carried chunks' pieces given (no loss)."""
    first, n_lead = cut - carry, lead.shape[0] // FRAMES_PER_CHUNK
    kept = [(t, c) for t, c in zip(e["ids"], e["chunks"]) if c >= first]
    chunks = [c - first + n_lead for _, c in kept]
    row = sequence([t for t, _ in kept], chunks, lead.shape[0] + e["n"] - first * FRAMES_PER_CHUNK, emit_delay,
                   prompt, blank)
    given, targets = n_lead + carry, row["targets"]
    for j, c in enumerate(chunks):
        if c < given:
            targets[len(prompt) + j] = -100
    for c in range(given):
        targets[row["n_text"] + c] = -100
    return {"i": e["i"], "start": first * FRAMES_PER_CHUNK, "lead": True, **row}


def batches(examples: list[dict], max_frames: int, rng: random.Random):
    while True:
        order = list(range(len(examples)))
        rng.shuffle(order)
        for k in range(0, len(order), 256):  # length buckets of 256
            part = sorted(order[k:k + 256], key=lambda j: examples[j]["n"])
            cur, longest = [], 0
            for j in part:
                n = examples[j]["n"]
                if cur and max(longest, n) * (len(cur) + 1) > max_frames:
                    yield cur
                    cur, longest = [], 0
                cur.append(j)
                longest = max(longest, n)
            if cur:
                yield cur


def collate(frames_of: list[torch.Tensor], ex: list[dict]):
    """Rows and their frames (n, 512) -> one padded batch: frames, tokens, positions, targets, visible, mask."""
    b, s, t = len(ex), max(e["n"] for e in ex), max(len(e["tokens"]) for e in ex)
    frames = torch.zeros(b, s, frames_of[0].shape[-1])
    tokens, positions = torch.zeros(b, t, dtype=torch.long), torch.zeros(b, t, dtype=torch.long)
    targets, visible = torch.full((b, t), -100, dtype=torch.long), torch.ones(b, t, dtype=torch.long)
    mask = torch.eye(t, dtype=torch.bool).repeat(b, 1, 1, 1)  # padding rows see themselves
    for r, e in enumerate(ex):
        n, m = len(e["tokens"]), e["n_text"]
        frames[r, :e["n"]] = frames_of[r]
        tokens[r, :n], positions[r, :n] = torch.tensor(e["tokens"]), torch.tensor(e["positions"])
        targets[r, :n], visible[r, :n] = torch.tensor(e["targets"]), torch.tensor(e["visible"])
        mask[r, 0, :m, :m] = torch.tril(torch.ones(m, m, dtype=torch.bool))
        for q in range(m, n):
            mask[r, 0, q, :e["copy_of"][q]] = True
    return frames, tokens, positions, targets, visible, mask


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--ct2", type=Path, default=WHISPER_BASE_CT2 / "model.bin", help="Whisper base's CTranslate2 model.bin")
    ap.add_argument("--init", type=Path, default=None, help="start from these trained parts (.pt or .safetensors)")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--max-frames", type=int, default=3000, help="padded frames per batch (60 s)")
    ap.add_argument("--emit-delay", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--short-boost", type=int, default=1, help="draw utterances of at most two words this often")
    ap.add_argument("--mid-starts", type=float, default=0.0,
                    help="add this many rows per utterance that begin mid-utterance, as a restarted context does")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    assemble_model_dir(args.ct2.parent)
    tok = ascii_subset((args.ct2.parent / "tokenizer.json").read_text())
    m = whisper_base_decoder(args.ct2, tok, args.init)
    prompt = list(range(tok.vocab_size, tok.vocab_size + m.cfg.prompt_tokens))  # CrossAttentionDecoder.embed
    store, examples = rows(args.work, tok, args.emit_delay, m.cfg.n_ctx, prompt)
    short = [e for e in examples if len(store.items[e["i"]].text.split()) <= 2]
    examples += short * (args.short_boost - 1)
    print(f"{len(short)} utterances of at most two words, drawn {args.short_boost} times as often", flush=True)
    if args.mid_starts:
        from reallm_cli.engine import Recognizer

        # the shipped encoder's frames of the engine's lead-in, and the chunks its restarts carry
        lead, rng, carry = Recognizer.load(None, precision="fp32").lead_in_frames(), random.Random(args.seed), 8
        long_enough = [e for e in examples if e["n"] >= (carry + 4) * FRAMES_PER_CHUNK]
        drawn = rng.choices(long_enough, k=round(args.mid_starts * len(examples))) if long_enough else []
        mids = [mid_start(e, rng.randrange(carry, -(-e["n"] // FRAMES_PER_CHUNK) - 2), lead, carry, args.emit_delay,
                          prompt, tok.blank) for e in drawn]
        examples += mids
        print(f"{len(mids)} rows that begin mid-utterance", flush=True)
    params = [p for name, p in m.named_parameters() if name.startswith(TRAINED)]
    for name, p in m.named_parameters():
        p.requires_grad_(name.startswith(TRAINED))
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    step, ckpt = 0, args.out / "ckpt.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu")
        m.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        print(f"resumed at step {step}", flush=True)
    it = batches(examples, args.max_frames, random.Random(args.seed + step))
    m.train()
    t0, audio, loss_sum, n_loss = time.time(), 0.0, 0.0, 0
    while step < args.steps:
        batch = [examples[j] for j in next(it)]
        frames_of = [torch.from_numpy(np.asarray(store.frames(e["i"]), dtype=np.float32)) for e in batch]
        frames_of = [torch.cat([lead, f[e["start"]:]]) if e.get("lead") else f for f, e in zip(frames_of, batch)]
        frames, tokens, positions, targets, visible, mask = collate(frames_of, batch)
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        logits = m(tokens, positions, visible, frames, mask)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        audio += sum(e["n"] for e in batch) * 0.02
        loss_sum, n_loss = loss_sum + loss.item(), n_loss + 1
        if step % 10 == 0:
            print(f"step {step} loss {loss_sum / n_loss:.3f} lr {lr:.2e} audio-s/s {audio / (time.time() - t0):.1f}",
                  flush=True)
            loss_sum, n_loss = 0.0, 0
        if step % 100 == 0 or step == args.steps:
            torch.save({"model": m.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt.with_suffix(".tmp"))
            os.replace(ckpt.with_suffix(".tmp"), ckpt)
    from safetensors.torch import save_file
    save_file({k: v.detach().half().contiguous() for k, v in m.state_dict().items() if k.startswith(TRAINED)},
              str(args.out / "trained.safetensors"))
    print(f"wrote {args.out / 'trained.safetensors'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the default model's projector and decoder over the frozen Whisper base encoder streaming in
right-context mode (each layer sees --right-context-ms ahead, --hop-ms finished per step, as shipped).

With ``--decoder-init whisper-tiny.en`` (what base_synthetic.sh uses) the decoder starts from Whisper tiny.en's
pretrained decoder, as the paper fine-tunes a pre-trained Llama: its self-attention and MLP layers and
its token embeddings, on Whisper's BPE vocabulary cut to the tokens of the text corpus. The CTC teacher
stays on a small SentencePiece vocabulary; its alignment is moved onto the BPE tokens (``retokenize``).
With ``--init-model`` (what run.sh uses) a trained model is fine-tuned: its encoder, vocabulary and config.

Stages (each skipped when its output exists, each resumable after a kill):
  features  encode every training utterance once with the frozen streaming encoder
  tokenizer SentencePiece on the decoder's text corpus (see decoder_texts), with BLANK reserved; with
            --decoder-init or --init-model, also the decoder's BPE vocabulary (bpe_tokenizer.bin)
  teacher   CTC head on the cached frames (the alignment teacher)
  align     Viterbi forced alignment -> per-piece chunk indices
  retokenize (with a BPE decoder) the alignment moved to Whisper's BPE tokens, byte by byte
  reallm    projector + decoder trained with cross-entropy on the interleaved sequence
  export    one fp16 safetensors file (encoder + projector + decoder + config + tokenizer)

From the repository's root (relative paths are the caller's; run.sh stage 0 imports the encoder):

    nohup python recipes/default/train.py --data runs/default/data --work runs/default/train \
        --encoder runs/default/whisper-base-encoder.safetensors > runs/default/train.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from reallm_cli.align.ctc import AlignmentError, ctc_forced_align
from reallm_cli.align.retokenize import byte_level_bytes, sentencepiece_bytes, transfer_chunks
from reallm_cli.model.checkpoint import is_model_file, load_model, save_model
from reallm_cli.model.decoder import DecoderConfig
from reallm_cli.model.reallm import ReaLLM, ReaLLMConfig
from reallm_cli.model.whisper_encoder import WhisperStreamingEncoder
from reallm_cli.model.whisper_file import load_whisper_encoder
from reallm_cli.model.whisper_import import find_installed_whisper, import_whisper_decoder
from reallm_cli.text import normalize_text
from reallm_cli.tokenizer import (SentencePieceTokenizer, Tokenizer, tokenizer_from_bytes, train_tokenizer,
                                  whisper_bpe_subset)
from reallm_cli.train.batching import DurationBatchSampler
from reallm_cli.train.cached_data import make_batch, time_mask
from reallm_cli.train.ctc_head import CTCHead, ctc_loss
from reallm_cli.train.feature_cache import FeatureStore, build_cache
from reallm_cli.train.loop import LoopConfig, run_loop
from reallm_cli.train.reallm_loss import reallm_loss
from reallm_cli.writers import atomic_write_text

from common import log, read_jsonl  # recipes/default/common.py
from make_data import PLAN_SEED, read_lj, short_texts, split_lj  # recipes/default/make_data.py

STAGES = ("features", "tokenizer", "teacher", "align", "retokenize", "reallm", "export")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a folder of train*.jsonl manifests")
    ap.add_argument("--work", type=Path, required=True, help="the run's folder: caches, checkpoints, alignments")
    ap.add_argument("--encoder", type=Path, default=None,
                    help="an imported encoder file (scripts/import_whisper.py), streamed in right-context mode, "
                         "or a reallm model file whose encoder to reuse as it streams there")
    ap.add_argument("--out", type=Path, default=None, help="the model file (default: WORK/model.safetensors)")
    ap.add_argument("--chunk-ms", type=int, default=240, help="an imported --encoder's chunk")
    ap.add_argument("--right-context-ms", type=int, default=720,
                    help="audio every encoder layer of an imported --encoder sees ahead, recomputed at each step")
    ap.add_argument("--hop-ms", type=int, default=480, help="an imported --encoder's audio finished per step")
    ap.add_argument("--mixed-right-context", action="store_true",
                    help="cache each utterance's frames with the right context its manifest line names "
                         "(right_context_ms, drawn by real_data.py), so one decoder serves several right "
                         "contexts; needs --init-model of a right-context model")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--teacher-steps", type=int, default=3000)
    ap.add_argument("--reallm-steps", type=int, default=8000)
    ap.add_argument("--max-frames", type=int, default=6000, help="frames per batch (20 ms each)")
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--dropout", type=float, default=0.1, help="decoder dropout (training only)")
    ap.add_argument("--lead-in-ms", type=int, default=480, help="silence the engine decodes before each stream")
    ap.add_argument("--feat-dropout", type=float, default=0.1, help="dropout on the cached encoder frames")
    ap.add_argument("--decoder-init", choices=["none", "whisper-tiny.en"], default="none",
                    help="start the decoder from Whisper tiny.en's pretrained decoder (its BPE vocabulary, cut "
                         "to the tokens the text corpus uses; cross-attention dropped, RoPE for positions)")
    ap.add_argument("--reallm-lr", type=float, default=1e-3)
    ap.add_argument("--reallm-warmup", type=int, default=500, help="ReaLLM steps of linear lr warm-up")
    ap.add_argument("--emit-delay-chunks", type=int, default=None,
                    help="write each token this many chunks late: more context, more latency (the model's config "
                         "records it; default 0, or --init-model's own)")
    ap.add_argument("--slots-per-chunk", type=int, default=1,
                    help="speech embeddings per chunk, each from an equal slice of its frames (the paper: 1)")
    ap.add_argument("--reallm-seed", type=int, default=0,
                    help="another seed for the ReaLLM stage's data order, dropout and masks (to measure run-to-run noise)")
    ap.add_argument("--projector-hidden", type=int, default=0,
                    help="a hidden GELU layer of this width in the projector (0: one linear map, the paper's)")
    ap.add_argument("--stages", default=",".join(STAGES), help="the stages to run, comma-separated")
    ap.add_argument("--init-model", type=Path, default=None,
                    help="fine-tune this reallm model file: its encoder makes the features (--encoder is not read), "
                         "its tokenizer, config and projector + decoder weights start the reallm stage")
    ap.add_argument("--train-only", default="",
                    help="comma-separated name prefixes of the projector and decoder parameters to train, the rest "
                         "frozen (e.g. 'projector,decoder.layers.0': adapt to the speech, keep the upper layers' "
                         "language); empty: all of them")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true",
                    help="bf16 autocast in the features, teacher and ReaLLM stages (encoder 2.7x and ReaLLM steps 1.7x "
                         "faster on a CPU with AVX512-BF16 or AMX, where `--precision auto` also runs bf16)")
    args = ap.parse_args(argv)
    if args.init_model is None and args.encoder is None:
        ap.error("give --encoder (an imported encoder or a model file) or --init-model")
    if args.mixed_right_context and args.init_model is None:
        ap.error("--mixed-right-context needs --init-model (a right-context model whose encoder to vary)")
    if unknown := set(args.stages.split(",")) - set(STAGES):
        ap.error(f"unknown stage {', '.join(sorted(unknown))} (stages: {', '.join(STAGES)})")
    args.train_only = [p for p in args.train_only.split(",") if p]
    if bad := [p for p in args.train_only if not p.startswith(("projector", "decoder"))]:
        ap.error(f"--train-only {','.join(bad)}: only projector and decoder parameters train (the encoder is frozen)")
    args.out = args.out or args.work / "model.safetensors"
    return args


@dataclass
class Run:
    """What the stages share: the options, the frozen encoder and, with --init-model, the model to fine-tune."""

    args: argparse.Namespace
    encoder: WhisperStreamingEncoder
    init_model: ReaLLM | None = None
    init_tok: Tokenizer | None = None
    times: dict[str, float] = field(default_factory=dict)  # seconds spent per stage, over every session

    @property
    def work(self) -> Path:
        return self.args.work

    @property
    def pretrained(self) -> bool:
        """Whether the decoder reads a BPE vocabulary (Whisper's, or the fine-tuned model's)."""
        return self.args.decoder_init != "none" or self.init_model is not None

    @property
    def feats(self) -> Path:
        """The feature caches of this encoder setting (a rerun with another setting keeps these)."""
        c = self.encoder.config
        rc = "rcmix" if self.args.mixed_right_context else f"rc{c.right_context_ms}"
        return self.work / "feats" / f"c{c.chunk_ms}_{rc}_hop{c.hop_ms}"

    @property
    def frames_per_chunk(self) -> int:
        return self.encoder.config.chunk_ms // self.encoder.frame_ms

    @property
    def frame_s(self) -> float:
        return self.encoder.frame_ms / 1000

    def batches(self, store: FeatureStore, subset: list[int], seed: int):
        """Epoch -> batches of store indices, by duration (--max-frames frames per batch)."""
        s = DurationBatchSampler([store.items[i].duration for i in subset], self.args.max_frames * self.frame_s,
                                 seed=seed)
        return lambda epoch: [[subset[j] for j in b] for b in s.batches(epoch)]

    def stage(self, name: str, fn, made: tuple[Path, ...] = (), sources: tuple[Path, ...] = ()) -> None:
        """Run stage ``name`` if asked for, unless every file it ``made`` is newer than all its ``sources``
        (a rerun after a kill then skips it; a retrained teacher or tokenizer makes it run again)."""
        if name not in self.args.stages.split(","):
            return
        if up_to_date(made, sources):
            log(f"== {name}: up to date ({', '.join(p.name for p in made)}), skipped")
            return
        t0 = time.perf_counter()
        log(f"== {name}")
        fn()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0
        (self.work / "times.json").write_text(json.dumps(self.times, indent=1))


def up_to_date(made: tuple[Path, ...], sources: tuple[Path, ...]) -> bool:
    """True if every file in ``made`` exists and none of the ``sources`` that exist is newer than the oldest."""
    if not made or not all(p.exists() for p in made):
        return False
    oldest = min(p.stat().st_mtime_ns for p in made)
    return all(p.stat().st_mtime_ns <= oldest for p in sources if p.exists())


def whisper_encoder_of(model: ReaLLM, path: Path) -> WhisperStreamingEncoder:
    if model.config.encoder_kind != "whisper":
        sys.exit(f"{path}: not a Whisper-encoder model")
    return model.encoder


def start(args: argparse.Namespace) -> Run:
    """Threads, the work folder, the stage times so far and the frozen encoder: --init-model's, a model
    file's (--encoder MODEL), or an imported encoder file in right-context mode."""
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    times_path = args.work / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}
    if args.init_model is not None:
        model, tok = load_model(args.init_model)
        if model.config.cross_attention:
            sys.exit(f"train.py: {args.init_model} has a cross-attention decoder; recipes/default/whisper_decoder/ "
                     "trains that kind")
        log(f"fine-tuning {args.init_model}: its encoder, tokenizer ({tok.vocab_size} tokens) and config")
        return Run(args, whisper_encoder_of(model, args.init_model), model, tok, times=times)
    if is_model_file(args.encoder):
        encoder = whisper_encoder_of(load_model(args.encoder)[0], args.encoder)
        c = encoder.config
        log(f"the encoder of {args.encoder}: chunk {c.chunk_ms} ms, right context {c.right_context_ms} ms, "
            f"hop {c.hop_ms} ms")
    else:
        encoder = load_whisper_encoder(args.encoder, chunk_ms=args.chunk_ms, right_context_ms=args.right_context_ms,
                                       hop_ms=args.hop_ms)
    return Run(args, encoder.eval(), times=times)


def features(run: Run) -> None:
    """Every train*.jsonl of --data through the frozen encoder into a cache folder of the same name; with
    --mixed-right-context one folder per right context the manifest names (NAME_rcR)."""
    args = run.args
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.bf16)):
        for manifest in sorted(args.data.glob("train*.jsonl")):
            lines, out = read_jsonl(manifest), run.feats / manifest.stem
            if not args.mixed_right_context:
                log(f"encoding {manifest.name} -> {out}")
                build_cache(lines, run.encoder, out, log=log)
                continue
            for rc in sorted({e["right_context_ms"] for e in lines}):
                encoder = load_model(args.init_model, right_context_ms=rc)[0].encoder.eval()
                log(f"encoding {manifest.name} (right context {rc} ms) -> {out}_rc{rc}")
                subset = [e for e in lines if e["right_context_ms"] == rc]
                build_cache(subset, encoder, out.parent / f"{out.name}_rc{rc}", log=log)


def decoder_texts(data: Path) -> list[str]:
    """The decoder's text corpus, normalised and de-duplicated: training transcripts (synthetic and
    pseudo-labelled real), every LJ Speech sentence not held out, and 20000 generated short texts.
    Sentences of the held-out manifests are removed, whatever their source."""
    held = {e["text"] for f in ("heldout_voice.jsonl", "heldout_text.jsonl") if (data / f).exists()
            for e in read_jsonl(data / f)}
    lj_train, lj_held = split_lj(read_lj())
    held |= {normalize_text(t) for _, t in lj_held}
    texts = [e["text"] for e in read_jsonl(data / "train.jsonl")] if (data / "train.jsonl").exists() else []
    texts += [normalize_text(t) for _, t in lj_train]
    texts += [normalize_text(t) for _, t in short_texts(20000, random.Random(PLAN_SEED + 1))]
    return sorted({t for t in texts if t and t not in held})


def tokenizers(run: Run) -> None:
    """The teacher's SentencePiece on the decoder's whole text corpus (a superset of the transcripts, so
    pieces fit the text it will read), and the decoder's BPE vocabulary where it has one."""
    texts = decoder_texts(run.args.data)
    (run.work / "tokenizer.model").write_bytes(train_tokenizer(texts, run.args.vocab).model_proto)
    if run.init_tok is not None:
        bpe = run.init_tok.model_proto  # the model's vocabulary is kept; new words are spelled
    elif run.pretrained:
        tokenizer_json = (find_installed_whisper("tiny.en")[0].parent / "tokenizer.json").read_text()
        bpe = whisper_bpe_subset(tokenizer_json, texts).model_proto
    else:
        return
    (run.work / "bpe_tokenizer.bin").write_bytes(bpe)


@dataclass
class Pieces:
    """Every cached utterance's transcript in the teacher's pieces and in the decoder's."""

    tok: SentencePieceTokenizer
    token_lists: list[list[int]]
    dec_tok: Tokenizer  # the teacher's SentencePiece again, or a BPE vocabulary (bpe_tokenizer.bin)
    dec_token_lists: list[list[int]]
    keep: list[int]  # the utterances the teacher can align


def read_pieces(run: Run, store: FeatureStore) -> Pieces:
    tok = SentencePieceTokenizer.load(run.work / "tokenizer.model")
    token_lists = [tok.encode(u.text) for u in store.items]
    # a transcript needs at least one frame per piece plus blanks between repeats to be alignable
    keep = [i for i, u in enumerate(store.items) if 0 < len(token_lists[i]) <= u.n_frames // 2]
    log(f"{len(keep)}/{len(store)} utterances usable (vocab {tok.vocab_size})")
    if not run.pretrained:
        return Pieces(tok, token_lists, tok, token_lists, keep)
    dec_tok = tokenizer_from_bytes((run.work / "bpe_tokenizer.bin").read_bytes())
    return Pieces(tok, token_lists, dec_tok, [dec_tok.encode(u.text) for u in store.items], keep)


def teacher(run: Run, store: FeatureStore, pieces: Pieces, head: CTCHead) -> None:
    """``head`` trained by CTC over the cached frames, with time masking: the alignment teacher."""

    def loss_fn(batch, gen):
        frames = time_mask(batch.frames, batch.frame_lengths, gen)
        loss = ctc_loss(head(frames), batch.frame_lengths, batch.tokens, pieces.tok.blank)
        return loss, {"audio_s": float(batch.frame_lengths.sum()) * run.frame_s}

    run_loop(head, loss_fn, run.batches(store, pieces.keep, seed=1),
             lambda idx: make_batch(store, idx, pieces.token_lists),
             LoopConfig(total_steps=run.args.teacher_steps, lr=1e-3, warmup_steps=200, bf16=run.args.bf16 or None),
             run.work / "teacher.pt", log)


def align(run: Run, store: FeatureStore, pieces: Pieces, head: CTCHead) -> None:
    """Each piece's chunk by Viterbi forced alignment under the teacher (alignments.jsonl), and a report
    of failures and the mean wait from a piece's frame to its chunk's end (align_report.json, written last)."""
    head.load_state_dict(torch.load(run.work / "teacher.pt", weights_only=False)["model"])
    head.eval()
    fpc = run.frames_per_chunk
    n_fail, delays, lines = 0, [], []
    with torch.inference_mode():
        for i in pieces.keep:
            fr = torch.from_numpy(store.frames(i).astype("float32"))[None]
            try:
                res = ctc_forced_align(head(fr)[0], pieces.token_lists[i], pieces.tok.blank)
            except AlignmentError:
                n_fail += 1
                continue
            chunks = [min(int(fi) // fpc, (fr.shape[1] - 1) // fpc) for fi in res.token_frames]
            lines.append(json.dumps({"i": i, "id": store.items[i].id, "chunks": chunks}) + "\n")
            delays.extend((c + 1) * fpc - fi for c, fi in zip(chunks, res.token_frames))
    atomic_write_text(run.work / "alignments.jsonl", "".join(lines))
    n = len(pieces.keep)
    report = {"utterances": n, "failed": n_fail, "failed_share": n_fail / max(1, n),
              "mean_wait_to_chunk_end_ms": float(sum(delays) / max(1, len(delays))) * run.encoder.frame_ms}
    (run.work / "align_report.json").write_text(json.dumps(report, indent=1))
    log(f"alignment report: {report}")


def retokenize(run: Run, pieces: Pieces) -> None:
    """The alignment moved from the teacher's pieces onto the decoder's BPE tokens, byte by byte."""
    n_fail, lines = 0, []
    for r in map(json.loads, (run.work / "alignments.jsonl").read_text().splitlines()):
        src = sentencepiece_bytes([pieces.tok.piece(t) for t in pieces.token_lists[r["i"]]])
        dst = byte_level_bytes([pieces.dec_tok.piece(t) for t in pieces.dec_token_lists[r["i"]]])
        try:
            chunks = transfer_chunks(src, r["chunks"], dst)
        except ValueError:
            n_fail += 1
            continue
        lines.append(json.dumps({"i": r["i"], "id": r["id"], "chunks": chunks}) + "\n")
    atomic_write_text(run.work / "alignments_bpe.jsonl", "".join(lines))
    log(f"retokenized alignments: {n_fail} utterances whose tokenizations disagree were dropped")


def dec_alignments(run: Run) -> Path:
    return run.work / ("alignments_bpe.jsonl" if run.pretrained else "alignments.jsonl")


def build_reallm(run: Run, dec_tok: Tokenizer) -> ReaLLM:
    """The model to train: --init-model's config and weights with this run's decoder dropout, or a new
    projector and decoder (from Whisper tiny.en's with --decoder-init) over the frozen encoder."""
    args, encoder = run.args, run.encoder
    if run.init_model is not None:
        old = run.init_model.config
        delay = old.emit_delay_chunks if args.emit_delay_chunks is None else args.emit_delay_chunks
        config = replace(old, decoder=replace(old.decoder, dropout=args.dropout), encoder=encoder.config,
                         emit_delay_chunks=delay)
        model = ReaLLM(config, encoder)
        res = model.load_state_dict({k: v for k, v in run.init_model.state_dict().items()
                                     if not k.startswith("encoder.")}, strict=False)
        if res.unexpected_keys or any(not k.startswith("encoder.") for k in res.missing_keys):
            sys.exit(f"--init-model {args.init_model} does not fit: {res.unexpected_keys or res.missing_keys}")
        return model
    dec_cfg = DecoderConfig(vocab_size=dec_tok.vocab_size, d_model=args.d_model, n_layers=args.layers,
                            n_heads=args.d_model // 64, n_kv_heads=args.d_model // 64,
                            ffn_hidden=int(args.d_model * 8 / 3) // 64 * 64, window=512, dropout=args.dropout)
    init_state = None
    if run.pretrained:
        dec_cfg, init_state = import_whisper_decoder(find_installed_whisper("tiny.en"), dec_tok.keep_ids,
                                                     blank_from=50256, window=512, dropout=args.dropout)
    config = ReaLLMConfig(encoder=encoder.config, decoder=dec_cfg,
                          lead_in_ms=args.lead_in_ms, emit_delay_chunks=args.emit_delay_chunks or 0,
                          slots_per_chunk=args.slots_per_chunk, projector_hidden=args.projector_hidden)
    model = ReaLLM(config, encoder)
    if init_state is not None and not (run.work / "reallm.pt").exists():
        model.decoder.load_state_dict(init_state)
        log(f"decoder initialised from Whisper tiny.en ({dec_cfg.n_layers} layers, {dec_cfg.vocab_size} tokens)")
    return model


def emission_chunks(run: Run, store: FeatureStore, model: ReaLLM) -> dict[int, list[int]]:
    """Store index -> the chunk each decoder piece is written in: its aligned chunk plus the model's
    emit delay d, capped at the last (so the decoder hears d more chunks before it commits)."""
    by_id = {r["id"]: r["chunks"] for r in map(json.loads, dec_alignments(run).read_text().splitlines())}
    delay, fpc = model.config.emit_delay_chunks, run.frames_per_chunk
    chunks = {i: [min(c + delay, (u.n_frames - 1) // fpc) for c in by_id[u.id]]
              for i, u in enumerate(store.items) if u.id in by_id}
    log(f"{len(chunks)} aligned utterances in the store")
    return chunks


def trainable(model: ReaLLM) -> torch.nn.ModuleDict:
    return torch.nn.ModuleDict({"projector": model.projector, "decoder": model.decoder})


def freeze_all_but(parts: torch.nn.Module, prefixes: list[str]) -> None:
    """Freeze every parameter of ``parts`` whose name starts with none of ``prefixes`` (none given: train them
    all); refuse prefixes that name nothing."""
    if not prefixes:
        return
    params = dict(parts.named_parameters())
    if unknown := [w for w in prefixes if not any(n.startswith(w) for n in params)]:
        sys.exit(f"--train-only {','.join(unknown)}: no such parameters (e.g. projector, decoder.layers.0)")
    for name, p in params.items():
        p.requires_grad_(name.startswith(tuple(prefixes)))
    kept = sum(p.numel() for p in params.values() if p.requires_grad)
    log(f"training {kept / 1e6:.2f} M of {sum(p.numel() for p in params.values()) / 1e6:.2f} M parameters "
        f"({','.join(prefixes)}); the rest frozen")


def train_reallm(run: Run, store: FeatureStore, pieces: Pieces, model: ReaLLM, chunks: dict[int, list[int]]) -> None:
    """Projector and decoder (the encoder frozen) by cross-entropy on the interleaved sequences, with time
    masks and dropout on the cached frames."""
    args = run.args
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    freeze_all_but(trainable(model), args.train_only)

    def loss_fn(batch, gen):
        frames = time_mask(batch.frames, batch.frame_lengths, gen)
        frames = torch.nn.functional.dropout(frames, args.feat_dropout)
        loss, stats = reallm_loss(model, frames, batch.frame_lengths, batch.tokens,
                                  [chunks[i] for i in batch.indices], pieces.dec_tok.blank)
        stats["audio_s"] = float(batch.frame_lengths.sum()) * run.frame_s
        return loss, stats

    run_loop(trainable(model), loss_fn, run.batches(store, sorted(chunks), seed=2 + args.reallm_seed),
             lambda idx: make_batch(store, idx, pieces.dec_token_lists),
             LoopConfig(total_steps=args.reallm_steps, lr=args.reallm_lr, warmup_steps=args.reallm_warmup,
                        bf16=args.bf16 or None, seed=args.reallm_seed),
             run.work / "reallm.pt", log)


def export(run: Run, store: FeatureStore, model: ReaLLM, dec_tok: Tokenizer, aligned: list[int]) -> None:
    """The last ReaLLM checkpoint into one fp16 model file, with the hours trained on and the stage times."""
    ck = torch.load(run.work / "reallm.pt", weights_only=False)
    trainable(model).load_state_dict(ck["model"])
    extra = {"train_hours": sum(store.items[i].duration for i in aligned) / 3600,
             "stage_seconds": run.times, "steps": ck["step"]}
    save_model(run.args.out, model, dec_tok, dtype=torch.float16, extra=extra)
    log(f"wrote {run.args.out}")


def main(argv: list[str] | None = None) -> None:
    run = start(parse_args(argv))
    asked, work, data = set(run.args.stages.split(",")), run.work, run.args.data
    run.stage("features", lambda: features(run))
    # every cache folder of this encoder setting whose name starts with "train" (a run may add more)
    store = FeatureStore(sorted(run.feats.glob("train*")))
    log(f"train store: {len(store)} utterances, {sum(u.duration for u in store.items) / 3600:.2f} h")
    tok_path, bpe_path = work / "tokenizer.model", work / "bpe_tokenizer.bin"
    run.stage("tokenizer", lambda: tokenizers(run), made=(tok_path, bpe_path) if run.pretrained else (tok_path,),
              sources=(data / "train.jsonl",))
    if not asked & {"teacher", "align", "retokenize", "reallm", "export"}:
        return
    pieces = read_pieces(run, store)
    head = CTCHead(store.dim, pieces.tok.vocab_size)
    run.stage("teacher", lambda: teacher(run, store, pieces, head))
    align_path = work / "alignments.jsonl"
    run.stage("align", lambda: align(run, store, pieces, head), made=(align_path, work / "align_report.json"),
              sources=(work / "teacher.pt", tok_path, *sorted(data.glob("train*.jsonl"))))
    if run.pretrained:
        run.stage("retokenize", lambda: retokenize(run, pieces), made=(dec_alignments(run),),
                  sources=(align_path, bpe_path))
    if not asked & {"reallm", "export"}:
        return
    model = build_reallm(run, pieces.dec_tok)
    chunks = emission_chunks(run, store, model)
    run.stage("reallm", lambda: train_reallm(run, store, pieces, model, chunks))
    run.stage("export", lambda: export(run, store, model, pieces.dec_tok, sorted(chunks)))


if __name__ == "__main__":
    sys.exit(main())

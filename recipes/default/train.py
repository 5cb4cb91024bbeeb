"""Train the embedded default model: chunk-causal Whisper base encoder + Speech ReaLLM decoder.

With ``--decoder-init whisper-tiny.en`` (what base_synthetic.sh uses) the decoder starts from Whisper tiny.en's
pretrained decoder, as the paper fine-tunes a pre-trained Llama: its self-attention and MLP layers and
its token embeddings, on Whisper's BPE vocabulary cut to the tokens of the text corpus. The CTC teacher
stays on a small SentencePiece vocabulary; its alignment is moved onto the BPE tokens (``retokenize``).

Stages (each skipped when its output exists, each resumable after a kill):
  features  encode every training/held-out utterance once with the frozen streaming encoder
  tokenizer SentencePiece on the decoder's text corpus (see lm_texts), with BLANK reserved; with
            --decoder-init, also the Whisper BPE subset (bpe_tokenizer.bin)
  lm        (with --lm-steps N) the decoder warm-started as a language model on text alone (recipes/default/text_lm.py):
            the training transcripts, every LJ Speech sentence not held out, and the generated short texts
  teacher   CTC head on the cached frames (the alignment teacher)
  align     Viterbi forced alignment -> per-piece chunk indices
  retokenize (with --decoder-init whisper-tiny.en) the alignment moved to Whisper's BPE tokens, byte by byte
  softlabels (with --kd-weight w > 0) offline Whisper tiny.en's distribution at every transcript piece
            (recipes/default/whisper_teacher.py); the reallm stage then trains each piece toward
            (1 - w) * the piece + w * that distribution (knowledge distillation)
  reallm    projector + decoder trained with cross-entropy on the interleaved sequence
  export    one fp16 safetensors file (encoder + projector + decoder + config + tokenizer)

    nohup python recipes/default/train.py --data /work/data --work /work/runs/default \
        --out weights/reallm-default.safetensors > /work/runs/default.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from reallm_cli.align.ctc import AlignmentError, ctc_forced_align
from reallm_cli.align.retokenize import byte_level_bytes, sentencepiece_bytes, transfer_chunks
from reallm_cli.model.checkpoint import is_model_file, load_model, save_model
from reallm_cli.model.decoder import DecoderConfig, LlamaDecoder
from reallm_cli.model.reallm import ReaLLM, ReaLLMConfig
from reallm_cli.model.whisper_file import load_whisper_encoder
from reallm_cli.model.whisper_import import find_installed_whisper, import_whisper_decoder
from reallm_cli.text import normalize_text
from reallm_cli.tokenizer import SentencePieceTokenizer, tokenizer_from_bytes, train_tokenizer, whisper_bpe_subset
from reallm_cli.train.batching import DurationBatchSampler
from reallm_cli.train.cached_data import make_batch, time_mask
from reallm_cli.train.ctc_head import CTCHead, ctc_loss
from reallm_cli.train.feature_cache import FeatureStore, build_cache, encode_audio
from reallm_cli.train.loop import LoopConfig, run_loop
from reallm_cli.train.reallm_loss import SoftLabels, reallm_loss
from reallm_cli.writers import atomic_write_text

from common import log, read_jsonl, start_run, up_to_date  # recipes/default/common.py
from text_lm import text_batches, text_lm_loss  # recipes/default/text_lm.py
from make_data import PLAN_SEED, read_lj, short_texts, split_lj  # recipes/default/make_data.py


def lm_texts(data: Path) -> list[str]:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/data"))
    ap.add_argument("--work", type=Path, default=Path("/work/runs/default"))
    ap.add_argument("--encoder", type=Path, default=Path("/work/cache/whisper-base-encoder.safetensors"),
                    help="an imported (scripts/import_whisper.py) or adapted (adapt_encoder.py) encoder file, or a "
                         "reallm model file whose encoder to reuse (its chunk and look-ahead then win)")
    ap.add_argument("--out", type=Path, default=Path("weights/reallm-default.safetensors"))
    ap.add_argument("--chunk-ms", type=int, default=240)
    ap.add_argument("--right-context-ms", type=int, default=0,
                    help="every encoder layer sees this much audio ahead, recomputed at each step (0 with --hop-ms 0: "
                         "chunk-causal; with --init-model, the imported --encoder replaces the model's)")
    ap.add_argument("--hop-ms", type=int, default=0, help="right-context mode: audio finished per encoder step")
    ap.add_argument("--features-full-attention", action="store_true",
                    help="cache frames of the encoder seeing each whole utterance (one fast pass) instead of its "
                         "streaming schedule; the decoder then trains on frames near what right-context mode gives")
    ap.add_argument("--mixed-right-context", action="store_true",
                    help="cache each utterance's frames with the right context its manifest line names "
                         "(right_context_ms, drawn by real_data.py), so one decoder serves every --right-context-ms; "
                         "needs --init-model of a right-context model")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--teacher-steps", type=int, default=3000)
    ap.add_argument("--reallm-steps", type=int, default=8000)
    ap.add_argument("--max-frames", type=int, default=6000, help="frames per batch (20 ms each)")
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--dropout", type=float, default=0.1, help="decoder dropout (training only)")
    ap.add_argument("--lead-in-ms", type=int, default=480, help="silence the engine decodes before each stream")
    ap.add_argument("--feat-dropout", type=float, default=0.1, help="dropout on the cached encoder frames")
    # Measured here: 100 steps of 4096 pieces (1 loaded core, 25 min) only took the loss from 6.3 to 5.18 nats,
    # against 5.37 for a unigram model of the corpus; too slow to pay off on 2 cores, so it is off by default.
    ap.add_argument("--lm-steps", type=int, default=0, help="text-only decoder warm-up steps (0: none)")
    ap.add_argument("--lm-max-pieces", type=int, default=8192, help="padded word pieces per text batch")
    ap.add_argument("--decoder-init", choices=["none", "whisper-tiny.en"], default="none",
                    help="start the decoder from Whisper tiny.en's pretrained decoder (its BPE vocabulary, cut "
                         "to the tokens the text corpus uses; cross-attention dropped, RoPE for positions)")
    ap.add_argument("--reallm-lr", type=float, default=1e-3)
    ap.add_argument("--reallm-warmup", type=int, default=500, help="ReaLLM steps of linear lr warm-up")
    ap.add_argument("--emit-delay-chunks", type=int, default=0,
                    help="write each token this many chunks late: more context, more latency (the model's config records it)")
    ap.add_argument("--slots-per-chunk", type=int, default=1,
                    help="speech embeddings per chunk, each from an equal slice of its frames (the paper: 1)")
    ap.add_argument("--reallm-seed", type=int, default=0,
                    help="another seed for the ReaLLM stage's data order, dropout and masks (to measure run-to-run noise)")
    ap.add_argument("--projector-hidden", type=int, default=0,
                    help="a hidden GELU layer of this width in the projector (0: one linear map, the paper's)")
    ap.add_argument("--kd-weight", type=float, default=0.0,
                    help="weight of offline Whisper tiny.en's soft labels in each piece's target (0: none; needs "
                         "--decoder-init whisper-tiny.en or --init-model, whose vocabulary is Whisper's)")
    ap.add_argument("--kd-top-k", type=int, default=8, help="pieces kept of the teacher's distribution at each piece")
    ap.add_argument("--stages", default="features,tokenizer,lm,teacher,align,retokenize,softlabels,reallm,export")
    ap.add_argument("--init-model", type=Path, default=None,
                    help="fine-tune this reallm model file: its encoder makes the features (--encoder is not read), "
                         "its tokenizer, config and projector + decoder weights start the reallm stage")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true",
                    help="bf16 autocast in the features, LM, teacher and ReaLLM stages (encoder 2.7x and ReaLLM steps 1.7x "
                         "faster on a CPU with AVX512-BF16 or AMX, where `--precision auto` also runs bf16)")
    args = ap.parse_args()
    if args.mixed_right_context and args.init_model is None:
        ap.error("--mixed-right-context needs --init-model (a right-context model whose encoder to vary)")
    if args.kd_weight > 0 and args.decoder_init == "none" and args.init_model is None:
        ap.error("--kd-weight needs Whisper's vocabulary: --decoder-init whisper-tiny.en or --init-model")
    bf16 = args.bf16 or None  # None: LoopConfig's own default (autocast only where native on a GPU)
    stages, work = start_run(args)
    t_stage: dict[str, float] = json.loads((work / "times.json").read_text()) if (work / "times.json").exists() else {}

    def timed(name, fn, made=(), sources=()):
        """Run stage ``name`` if asked for, unless every file it ``made`` is newer than all its ``sources``
        (a rerun after a kill then skips it; a retrained teacher or tokenizer makes it run again)."""
        if name not in stages:
            return
        if up_to_date(made, sources):
            log(f"== {name}: up to date ({', '.join(p.name for p in made)}), skipped")
            return
        t0 = time.perf_counter()
        log(f"== {name}")
        fn()
        t_stage[name] = t_stage.get(name, 0.0) + time.perf_counter() - t0
        (work / "times.json").write_text(json.dumps(t_stage, indent=1))

    def right_context_encoder():
        """The imported --encoder in right-context mode (--right-context-ms, --hop-ms)."""
        return load_whisper_encoder(args.encoder, chunk_ms=args.chunk_ms, right_context_ms=args.right_context_ms,
                                    hop_ms=args.hop_ms)

    init_model = init_tok = None
    if args.init_model is not None:
        init_model, init_tok = load_model(args.init_model)
        if init_model.config.encoder_kind != "whisper":
            sys.exit(f"--init-model {args.init_model}: not a Whisper-encoder model")
        encoder = init_model.encoder
        args.chunk_ms = encoder.config.chunk_ms
        if args.right_context_ms:  # the model's projector and decoder on another encoder, in right-context mode
            encoder = right_context_encoder()
            log(f"fine-tuning {args.init_model}'s projector and decoder on {args.encoder}, right context "
                f"{args.right_context_ms} ms, hop {encoder.config.hop_ms} ms")
        else:
            args.right_context_ms, args.hop_ms = encoder.config.right_context_ms, encoder.config.hop_ms
            log(f"fine-tuning {args.init_model}: its encoder, tokenizer ({init_tok.vocab_size} tokens) and config")
    elif is_model_file(args.encoder):  # a trained model's (adapted) encoder, streaming as in that model
        source = load_model(args.encoder)[0]
        if source.config.encoder_kind != "whisper":
            sys.exit(f"--encoder {args.encoder}: not a Whisper-encoder model")
        encoder = source.encoder
        c = encoder.config
        args.chunk_ms, args.right_context_ms, args.hop_ms = c.chunk_ms, c.right_context_ms, c.hop_ms
        log(f"the encoder of {args.encoder}: chunk {args.chunk_ms} ms, right context {c.right_context_ms} ms, "
            f"hop {c.hop_ms} ms")
    else:
        encoder = right_context_encoder()
    encoder.eval()
    feat_tag = f"c{args.chunk_ms}_rc{args.right_context_ms}_hop{encoder.config.hop_ms}"
    if args.features_full_attention:
        feat_tag = f"c{args.chunk_ms}_full"
    elif args.mixed_right_context:
        feat_tag = f"c{args.chunk_ms}_rcmix_hop{encoder.config.hop_ms}"
    # every train*.jsonl of --data (real_data.py: train.jsonl, synthetic_data.py: train_synthetic.jsonl);
    # held-out sets are evaluated from audio, through the engine
    sets = {"train": sorted(p.name for p in args.data.glob("train*.jsonl")) or ["train.jsonl"]}
    feat_dirs = {name: [work / "feats" / feat_tag / Path(f).stem for f in files] for name, files in sets.items()}

    def features():
        for files, dirs in zip(sets.values(), feat_dirs.values()):
            for f, d in zip(files, dirs):
                if (args.data / f).exists():
                    if args.mixed_right_context:
                        lines = read_jsonl(args.data / f)
                        for rc in sorted({e["right_context_ms"] for e in lines}):
                            enc_rc = load_model(args.init_model, right_context_ms=rc)[0].encoder.eval()
                            log(f"encoding {f} (right context {rc} ms) -> {d}_rc{rc}")
                            build_cache([e for e in lines if e["right_context_ms"] == rc], enc_rc,
                                        d.parent / f"{d.name}_rc{rc}", log=log)
                        continue
                    log(f"encoding {f} -> {d}")
                    encode = None
                    if args.features_full_attention:
                        def encode(audio):
                            return encode_audio(encoder, audio, full_attention=True)
                    build_cache(read_jsonl(args.data / f), encoder, d, log=log, encode=encode)

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.bf16)):
        timed("features", features)
    # every cache folder of this encoder setting whose name starts with "train" (a run may add more)
    train_store = FeatureStore(sorted((work / "feats" / feat_tag).glob("train*")))
    log(f"train store: {len(train_store)} utterances, {sum(u.duration for u in train_store.items) / 3600:.2f} h")
    if stages <= {"features"}:
        return

    tok_path = work / "tokenizer.model"

    pretrained = args.decoder_init != "none" or init_model is not None
    bpe_path = work / "bpe_tokenizer.bin"

    def tokenizer():
        # the decoder's whole text corpus (a superset of the transcripts): pieces fit the text it will read
        texts = lm_texts(args.data)
        tok_path.write_bytes(train_tokenizer(texts, args.vocab).model_proto)
        if init_model is not None:
            bpe_path.write_bytes(init_tok.model_proto)  # the model's vocabulary is kept; new words are spelled
        elif pretrained:
            tokenizer_json = (find_installed_whisper("tiny.en")[0].parent / "tokenizer.json").read_text()
            bpe_path.write_bytes(whisper_bpe_subset(tokenizer_json, texts).model_proto)

    train_manifest = args.data / "train.jsonl"
    timed("tokenizer", tokenizer, made=(tok_path, bpe_path) if pretrained else (tok_path,), sources=(train_manifest,))
    tok = SentencePieceTokenizer.load(tok_path)
    blank = tok.blank
    token_lists = [tok.encode(u.text) for u in train_store.items]
    # a transcript needs at least one frame per piece plus blanks between repeats to be alignable
    keep = [i for i, u in enumerate(train_store.items) if 0 < len(token_lists[i]) <= u.n_frames // 2]
    log(f"{len(keep)}/{len(train_store)} utterances usable (vocab {tok.vocab_size})")

    dec_cfg = DecoderConfig(vocab_size=tok.vocab_size, d_model=args.d_model, n_layers=args.layers,
                            n_heads=args.d_model // 64, n_kv_heads=args.d_model // 64,
                            ffn_hidden=int(args.d_model * 8 / 3) // 64 * 64, window=512,
                            dropout=args.dropout)
    lm_path = work / "lm.pt"

    def lm():
        texts = lm_texts(args.data)
        lm_tokens = [t for t in (tok.encode(x) for x in texts) if t]
        n_pieces = sum(map(len, lm_tokens))
        log(f"text corpus: {len(lm_tokens)} texts, {n_pieces} pieces")
        decoder = LlamaDecoder(dec_cfg)
        lengths = [len(t) for t in lm_tokens]

        def loss_fn(idx, gen):
            rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=gen)))
            loss, stats = text_lm_loss(decoder, [lm_tokens[i] for i in idx], blank, rng, slot_std=0.5)
            return loss, {"audio_s": stats["pieces"]}  # throughput reads as pieces/s here

        run_loop(decoder, loss_fn, lambda epoch: text_batches(lengths, args.lm_max_pieces, 3, epoch), lambda b: b,
                 LoopConfig(total_steps=args.lm_steps, lr=1e-3, warmup_steps=min(200, args.lm_steps // 5), log_every=10,
                            bf16=bf16), lm_path, log)

    if args.lm_steps > 0:
        timed("lm", lm)
    if not stages & {"teacher", "align", "retokenize", "reallm", "export"}:
        return
    head = CTCHead(train_store.dim, tok.vocab_size)

    def sampler(subset: list[int], seed: int):
        """Epoch -> batches of store indices, by duration (max_frames of 20 ms per batch)."""
        s = DurationBatchSampler([train_store.items[i].duration for i in subset], args.max_frames * 0.02, seed=seed)
        return lambda epoch: [[subset[j] for j in b] for b in s.batches(epoch)]

    def teacher():
        def loss_fn(batch, gen):
            frames = time_mask(batch.frames, batch.frame_lengths, gen)
            loss = ctc_loss(head(frames), batch.frame_lengths, batch.tokens, blank)
            return loss, {"audio_s": float(batch.frame_lengths.sum()) * 0.02}

        run_loop(head, loss_fn, sampler(keep, seed=1),
                 lambda idx: make_batch(train_store, idx, token_lists),
                 LoopConfig(total_steps=args.teacher_steps, lr=1e-3, warmup_steps=200, bf16=bf16), work / "teacher.pt", log)

    timed("teacher", teacher)
    head.load_state_dict(torch.load(work / "teacher.pt", weights_only=False)["model"])
    head.eval()
    frames_per_chunk = args.chunk_ms // encoder.frame_ms
    align_path = work / "alignments.jsonl"

    def align():
        n_fail, delays, lines = 0, [], []
        with torch.inference_mode():
            for i in keep:
                fr = torch.from_numpy(train_store.frames(i).astype("float32"))[None]
                logp = head(fr)[0]
                try:
                    res = ctc_forced_align(logp, token_lists[i], blank)
                except AlignmentError:
                    n_fail += 1
                    continue
                chunks = [min(int(fi) // frames_per_chunk, (fr.shape[1] - 1) // frames_per_chunk) for fi in res.token_frames]
                lines.append(json.dumps({"i": i, "id": train_store.items[i].id, "chunks": chunks}) + "\n")
                delays.extend((c + 1) * frames_per_chunk - fi for c, fi in zip(chunks, res.token_frames))
        atomic_write_text(align_path, "".join(lines))
        report = {"utterances": len(keep), "failed": n_fail, "failed_share": n_fail / max(1, len(keep)),
                  "mean_wait_to_chunk_end_ms": float(sum(delays) / max(1, len(delays))) * encoder.frame_ms}
        (work / "align_report.json").write_text(json.dumps(report, indent=1))
        log(f"alignment report: {report}")

    align_report = work / "align_report.json"  # written last: its presence means the alignments are whole
    timed("align", align, made=(align_path, align_report), sources=(work / "teacher.pt", tok_path, *(args.data / f for f in sets["train"])))
    # The decoder's tokenizer: the teacher's SentencePiece, or Whisper's BPE with the alignment moved onto it.
    dec_tok, dec_align_path, dec_token_lists = tok, align_path, token_lists
    if pretrained:
        dec_tok, dec_align_path = tokenizer_from_bytes(bpe_path.read_bytes()), work / "alignments_bpe.jsonl"
        dec_token_lists = [dec_tok.encode(u.text) for u in train_store.items]

    def retokenize():
        n_fail, lines = 0, []
        for r in map(json.loads, align_path.read_text().splitlines()):
            src = sentencepiece_bytes([tok.piece(t) for t in token_lists[r["i"]]])
            dst = byte_level_bytes([dec_tok.piece(t) for t in dec_token_lists[r["i"]]])
            try:
                chunks = transfer_chunks(src, r["chunks"], dst)
            except ValueError:
                n_fail += 1
                continue
            lines.append(json.dumps({"i": r["i"], "id": r["id"], "chunks": chunks}) + "\n")
        atomic_write_text(dec_align_path, "".join(lines))
        log(f"retokenized alignments: {n_fail} utterances whose tokenizations disagree were dropped")

    if pretrained:
        timed("retokenize", retokenize, made=(dec_align_path,), sources=(align_path, bpe_path))
    soft_dir = work / f"softlabels_k{args.kd_top_k}"

    def softlabels():
        """Offline Whisper tiny.en's distribution at every piece of every transcript (whisper_teacher.py),
        several utterances to one 30 s window; written in parts, so a killed run goes on where it stopped."""
        from reallm_cli.audio.source import load_audio
        from reallm_cli.model.whisper_import import convert_installed_whisper
        from whisper_teacher import WhisperTeacher, load_whisper_decoder, pack

        enc_path = work / "whisper-tiny.en-encoder.safetensors"
        if not enc_path.exists():
            convert_installed_whisper("tiny.en", enc_path)
        allowed = [t for t in range(1, dec_tok.vocab_size) if re.fullmatch(r"[ a-z0-9']+", dec_tok.decode([t]))]
        teacher = WhisperTeacher(load_whisper_encoder(enc_path), load_whisper_decoder(find_installed_whisper("tiny.en")),
                                 dec_tok.keep_ids, allowed, k=args.kd_top_k)
        audio_of = {r["id"]: r["audio"] for f in sets["train"] for r in read_jsonl(args.data / f)}
        items = train_store.items
        groups = pack([u.duration for u in items], [len(t) for t in dec_token_lists])
        log(f"soft labels: {len(items)} utterances in {len(groups)} windows, {len(allowed)} pieces allowed")
        soft_dir.mkdir(exist_ok=True)
        per_part = 50
        for first in range(0, len(groups), per_part):
            part = soft_dir / f"part_{first // per_part:05d}.pt"
            if part.exists():
                continue
            labels = {}
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(args.bf16)):
                for g in groups[first : first + per_part]:
                    utts = [(load_audio(audio_of[items[i].id]), dec_token_lists[i]) for i in g]
                    for i, sl in zip(g, teacher.soft_labels(utts)):
                        labels[items[i].id] = (sl.ids, sl.probs)
            tmp = part.with_suffix(".tmp")
            torch.save(labels, tmp)
            tmp.replace(part)
            log(f"soft labels: {min(first + per_part, len(groups))}/{len(groups)} windows")

    if args.kd_weight > 0:
        timed("softlabels", softlabels)
    if not stages & {"reallm", "export"}:
        return
    soft = None
    if args.kd_weight > 0:

        by_uid = {}
        for part in sorted(soft_dir.glob("part_*.pt")):
            by_uid.update(torch.load(part, weights_only=False))
        soft = [SoftLabels(*by_uid[u.id]) if u.id in by_uid else None for u in train_store.items]
        log(f"soft labels for {sum(s is not None for s in soft)}/{len(soft)} utterances, weight {args.kd_weight}")
    by_id = {r["id"]: r["chunks"] for r in map(json.loads, dec_align_path.read_text().splitlines())}
    alignments = {i: by_id[u.id] for i, u in enumerate(train_store.items) if u.id in by_id}
    aligned = sorted(alignments)
    log(f"{len(aligned)} aligned utterances in the store")

    init_state = None
    if init_model is not None:
        # the model's own config (slots, delay, lead-in), its weights, this run's decoder dropout
        config = replace(init_model.config, decoder=replace(init_model.config.decoder, dropout=args.dropout),
                         encoder=encoder.config)
        model = ReaLLM(config, encoder)
        res = model.load_state_dict({k: v for k, v in init_model.state_dict().items()
                                     if not k.startswith("encoder.")}, strict=False)
        if res.unexpected_keys or any(not k.startswith("encoder.") for k in res.missing_keys):
            sys.exit(f"--init-model {args.init_model} does not fit: {res.unexpected_keys or res.missing_keys}")
        args.emit_delay_chunks = config.emit_delay_chunks
    else:
        if pretrained:
            dec_cfg, init_state = import_whisper_decoder(find_installed_whisper("tiny.en"), dec_tok.keep_ids,
                                                         blank_from=50256, window=512, dropout=args.dropout)
        config = ReaLLMConfig(encoder=encoder.config, decoder=dec_cfg,
                              lead_in_ms=args.lead_in_ms, emit_delay_chunks=args.emit_delay_chunks,
                              slots_per_chunk=args.slots_per_chunk, projector_hidden=args.projector_hidden)
        model = ReaLLM(config, encoder)
    if init_state is not None and not (work / "reallm.pt").exists():
        model.decoder.load_state_dict(init_state)
        log(f"decoder initialised from Whisper tiny.en ({dec_cfg.n_layers} layers, {dec_cfg.vocab_size} tokens)")
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    # --emit-delay-chunks d: each token is written d chunks after the teacher's chunk (capped at the last),
    # so the decoder hears d more chunks before it commits; words appear d x 240 ms later.
    last_chunk = [(u.n_frames - 1) // frames_per_chunk for u in train_store.items]
    chunk_lists = [[min(c + args.emit_delay_chunks, last_chunk[i]) for c in alignments.get(i, [])]
                   for i in range(len(train_store))]

    def reallm():
        def loss_fn(batch, gen):
            frames = time_mask(batch.frames, batch.frame_lengths, gen)
            frames = torch.nn.functional.dropout(frames, args.feat_dropout)
            loss, stats = reallm_loss(model, frames, batch.frame_lengths, batch.tokens,
                                      [chunk_lists[i] for i in batch.indices], dec_tok.blank,
                                      soft=None if soft is None else [soft[i] for i in batch.indices],
                                      soft_weight=args.kd_weight)
            stats["audio_s"] = float(batch.frame_lengths.sum()) * 0.02
            return loss, stats

        trainable = torch.nn.ModuleDict({"projector": model.projector, "decoder": model.decoder})
        if args.lm_steps > 0 and not (work / "reallm.pt").exists():
            model.decoder.load_state_dict(torch.load(lm_path, weights_only=False)["model"])
            log(f"decoder warm-started from {lm_path}")
        run_loop(trainable, loss_fn, sampler(aligned, seed=2 + args.reallm_seed),
                 lambda idx: make_batch(train_store, idx, dec_token_lists),
                 LoopConfig(total_steps=args.reallm_steps, lr=args.reallm_lr, warmup_steps=args.reallm_warmup,
                            bf16=bf16, seed=args.reallm_seed),
                 work / "reallm.pt", log)

    timed("reallm", reallm)

    def export():
        ck = torch.load(work / "reallm.pt", weights_only=False)
        trainable = torch.nn.ModuleDict({"projector": model.projector, "decoder": model.decoder})
        trainable.load_state_dict(ck["model"])
        extra = {"train_hours": sum(train_store.items[i].duration for i in aligned) / 3600,
                 "stage_seconds": t_stage, "steps": ck["step"]}
        save_model(args.out, model, dec_tok, dtype=torch.float16, extra=extra)
        log(f"wrote {args.out}")

    timed("export", export)


if __name__ == "__main__":
    sys.exit(main())

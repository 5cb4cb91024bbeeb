"""The CTC alignment teacher trained from audio: a streaming Conformer plus a CTC head, in one file.

Its job is to say *when* each word piece is spoken (the frame of its CTC spike); ``align_manifest``
turns that into the alignment file the Speech ReaLLM stage trains on. The teacher's encoder is a
preset's own encoder, so the ReaLLM stage can start from it (``--init-encoder``). The tokenizer's
BLANK doubles as the CTC blank. The model and its file format are in ``ctc_teacher.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from reallm_cli.align.alignment_file import AlignmentRecord, AlignmentReport, alignment_report, write_alignments
from reallm_cli.align.ctc import AlignmentImpossibleError, ctc_forced_align_batch, ctc_greedy_decode, token_chunks_from_frames
from reallm_cli.errors import ModelError
from reallm_cli.text import normalize_text
from reallm_cli.train.audio_data import NO_AUGMENT, AudioDataError, AudioDataset, AugmentConfig, Utterance, collate
from reallm_cli.train.ctc_head import ctc_loss
from reallm_cli.train.ctc_teacher import CTCTeacher, TeacherConfig, load_teacher, save_teacher
from reallm_cli.train.distributed import DistInfo
from reallm_cli.train.trainer import (
    Log,
    OnError,
    TrainOptions,
    TrainSummary,
    load_tokenizer,
    log_stderr,
    training_device,
    read_training_manifest,
    run_stage,
    summarize,
)


def train_teacher(
    manifest: str | Path,
    tokenizer: str | Path,
    out: str | Path,
    *,
    preset: str = "small",
    head_hidden: int | None = None,
    options: TrainOptions = TrainOptions(),
    augment: AugmentConfig | None = None,
    log: Log = log_stderr,
) -> TrainSummary:
    """Train a CTC teacher (the preset's Conformer + a CTC head) from audio; writes one teacher file."""
    from reallm_cli.model.presets import preset_config
    from reallm_cli.train.distributed import barrier, cleanup, init_distributed

    info = init_distributed()
    say = log if info.is_main else (lambda _m: None)
    out = Path(out)
    tok = load_tokenizer(tokenizer)
    rcfg = preset_config(preset, vocab_size=tok.vocab_size)
    d_model = rcfg.encoder.d_model
    config = TeacherConfig(encoder=rcfg.encoder, vocab_size=tok.vocab_size,
                           head_hidden=head_hidden or max(2 * d_model, 256))
    torch.manual_seed(options.seed)
    teacher = CTCTeacher(config)
    chunk_ms = teacher.encoder.chunk_ms
    entries, tokens, skipped = read_training_manifest(manifest, options.on_error, say, tokenizer=tok, chunk_ms=chunk_ms)
    aug = augment if augment is not None else (AugmentConfig() if options.augment else NO_AUGMENT)
    dataset = AudioDataset([Utterance(e, tuple(t)) for e, t in zip(entries, tokens)], aug, seed=options.seed,
                           encoder_frame_ms=teacher.frame_ms)
    n_params = sum(p.numel() for p in teacher.parameters())
    say(f"CTC teacher {preset}: {n_params / 1e6:.1f}M parameters, {len(dataset)} utterances "
        f"({sum(dataset.durations_s) / 3600:.2f} h), {info.world_size} process(es)")

    device = training_device(info)
    teacher.to(device)

    def loss_fn(batch, gen):
        logp, lengths = teacher(batch.mel.to(device), batch.mel_lengths.to(device))
        return ctc_loss(logp.float(), lengths, batch.tokens, tok.blank), {"audio_s": batch.audio_s}

    configs = {"kind": "ctc-teacher", "teacher": config.to_dict()}
    result = run_stage(model=teacher, loss_fn=loss_fn, dataset=dataset, options=options, out=out, tokenizer=tok,
                       configs=configs, info=info, log=say, description="teacher")
    summary = summarize(out, result, dataset, skipped, teacher)
    if info.is_main:
        save_teacher(out, teacher.cpu().eval(), tok, extra={"preset": preset, "steps": result["steps"]})
        say(f"wrote {out} ({result['steps']} steps, CTC loss {summary.loss:.3f}, {summary.audio_s_per_s:.1f} audio-s/s)")
    barrier(info)
    cleanup(info)
    return summary


def _batches_by_duration(durations_s: list[float], max_batch_s: float) -> list[list[int]]:
    """Indices sorted by duration, packed while batch size x longest <= max_batch_s (no shuffling)."""
    order = sorted(range(len(durations_s)), key=lambda i: durations_s[i])
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * durations_s[i] > max_batch_s:
            batches.append(cur)
            cur = []
        cur.append(i)
    return batches + ([cur] if cur else [])


@torch.inference_mode()
def teacher_posteriors(teacher: CTCTeacher, dataset: AudioDataset, batch: list[int]):
    """Log-posteriors (B, T, V) and frame lengths for some utterances of a dataset (no augmentation)."""
    b = collate([dataset._item((0, i)) for i in batch])  # raises AudioDataError on unreadable audio
    device = next(teacher.parameters()).device
    logp, lengths = teacher(b.mel.to(device), b.mel_lengths.to(device))
    return logp.float().cpu(), lengths.cpu()


def align_manifest(
    teacher_path: str | Path,
    manifest: str | Path,
    out: str | Path,
    *,
    chunk_ms: int | None = None,
    on_error: OnError = "skip",
    max_batch_s: float = 120.0,
    log: Log = log_stderr,
) -> AlignmentReport:
    """Force-align every usable utterance with the teacher; writes the alignment file, returns its report.

    ``chunk_ms`` (default: the teacher encoder's) is the chunk of the ReaLLM to be trained; the file
    also keeps each piece's spike frame, from which the trainer recomputes chunks for sped-up audio.
    """
    teacher, tok = load_teacher(teacher_path)
    teacher.to(training_device(DistInfo()))
    chunk_ms = chunk_ms or teacher.encoder.chunk_ms
    if chunk_ms % teacher.frame_ms:
        raise ModelError(f"chunk_ms {chunk_ms} is not a multiple of the teacher's {teacher.frame_ms} ms frames")
    entries, tokens, _ = read_training_manifest(manifest, on_error, log, tokenizer=tok, chunk_ms=chunk_ms)
    dataset = AudioDataset([Utterance(e, tuple(t)) for e, t in zip(entries, tokens)], NO_AUGMENT, cache_audio=False)
    records: list[AlignmentRecord | None] = [None] * len(entries)
    for batch in _batches_by_duration(dataset.durations_s, max_batch_s):
        try:
            logp, lengths = teacher_posteriors(teacher, dataset, batch)
        except AudioDataError:
            # One unreadable file: align this batch one by one so only that utterance fails.
            for i in batch:
                try:
                    lp, ln = teacher_posteriors(teacher, dataset, [i])
                except AudioDataError as exc:
                    records[i] = AlignmentRecord(id=entries[i].id, tokens=tuple(tokens[i]), error=str(exc))
                    continue
                res = ctc_forced_align_batch(lp, ln.tolist(), [tokens[i]], tok.blank)[0]
                records[i] = _record(entries[i].id, tokens[i], res, int(ln[0]), teacher.frame_ms, chunk_ms)
            continue
        results = ctc_forced_align_batch(logp, lengths.tolist(), [tokens[i] for i in batch], tok.blank)
        for i, n, res in zip(batch, lengths.tolist(), results):
            records[i] = _record(entries[i].id, tokens[i], res, n, teacher.frame_ms, chunk_ms)
    done = [r for r in records if r is not None]
    write_alignments(out, done)
    return alignment_report(done, frame_ms=teacher.frame_ms, chunk_ms=chunk_ms, wait_ms=teacher.encoder.wait_ms)


def _record(utt_id: str, tokens: list[int], res, n_frames: int, frame_ms: int, chunk_ms: int) -> AlignmentRecord:
    """An alignment file line from a forced-alignment result (or its failure)."""
    if isinstance(res, AlignmentImpossibleError):
        return AlignmentRecord(id=utt_id, tokens=tuple(tokens), error=str(res))
    n_chunks = max(1, math.ceil(n_frames / (chunk_ms // frame_ms)))
    chunks = token_chunks_from_frames(res.token_frames, frame_ms, chunk_ms, n_chunks=n_chunks)
    return AlignmentRecord(id=utt_id, tokens=res.tokens, token_chunks=tuple(chunks), score=round(res.score, 3),
                           token_frames=res.token_frames)


def teacher_wer(teacher_path: str | Path, manifest: str | Path, *, log: Log = log_stderr) -> tuple[float, list[dict]]:
    """WER of the teacher's own greedy CTC transcripts (offline, whole utterances) on a manifest."""
    import jiwer

    teacher, tok = load_teacher(teacher_path)
    entries, tokens, _ = read_training_manifest(manifest, "skip", log)
    dataset = AudioDataset([Utterance(e, ()) for e in entries], NO_AUGMENT, cache_audio=False)
    rows = []
    for i, e in enumerate(entries):
        logp, lengths = teacher_posteriors(teacher, dataset, [i])
        hyp = normalize_text(tok.decode(ctc_greedy_decode(logp[0, : int(lengths[0])], tok.blank)))
        rows.append({"id": e.id, "ref": normalize_text(e.text), "hyp": hyp})
    out = jiwer.process_words([r["ref"] for r in rows], [r["hyp"] for r in rows])
    n = out.hits + out.substitutions + out.deletions
    return (out.substitutions + out.deletions + out.insertions) / max(1, n), rows

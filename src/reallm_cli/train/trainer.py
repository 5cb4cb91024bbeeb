"""Training from audio: the tokenizer, the shared stage runner, and the Speech ReaLLM stage.

Every stage (CTC teacher in ``teacher.py``, ReaLLM here) reads a manifest, reports each bad line
with its line number (then skips it or refuses, per ``on_error``), feeds augmented log-mels through
``run_loop`` (AdamW, warm-up + cosine, clipping, bf16 where native, timed checkpoints, exact resume,
data parallel under torchrun) and ends, on rank 0, with one self-contained file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from reallm_cli.align.alignment_file import read_alignments
from reallm_cli.errors import ReallmError
from reallm_cli.text import normalize_text
from reallm_cli.tokenizer import SentencePieceTokenizer, Tokenizer, train_tokenizer
from reallm_cli.train.audio_data import NO_AUGMENT, AudioDataset, AugmentConfig, Utterance, make_batch_iter
from reallm_cli.train.batching import DurationBatchSampler
from reallm_cli.train.checkpoint import CheckpointError
from reallm_cli.train.ctc_teacher import load_teacher
from reallm_cli.train.distributed import DistInfo, barrier, init_distributed
from reallm_cli.train.loop import LoopConfig, load_loop_checkpoint, run_loop
from reallm_cli.train.manifest import ManifestEntry, ManifestError, read_manifest

Log = Callable[[str], None]
OnError = Literal["skip", "refuse"]
MAX_LISTED_PROBLEMS = 20


class TrainError(ReallmError):
    """Training input or settings that cannot work (names the file and what is wrong)."""


def training_device(info: DistInfo) -> torch.device:
    """Each rank's own GPU under torchrun with NCCL, else the one GPU if there is one, else the CPU."""
    if info.enabled:
        return info.device
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class TrainOptions:
    """What every training stage shares; the CLI's options map one to one onto these."""

    steps: int = 20_000
    max_batch_s: float = 200.0  # padded seconds of audio per batch (per process)
    max_batch_size: int | None = None
    lr: float = 1e-3
    warmup_steps: int | None = None  # default: 10% of the steps, at most 1000
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    checkpoint_minutes: float = 10.0
    checkpoint: Path | None = None  # default: <output>.ckpt
    resume: bool = True  # continue from the checkpoint when it exists
    seed: int = 0
    bf16: bool | None = None  # None: where native (CUDA); CPU runs fp32
    on_error: OnError = "skip"
    augment: bool = True
    workers: int = 0  # DataLoader worker processes
    log_every: int = 50
    progress: bool | None = None  # None: when stderr is a terminal

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise TrainError(f"steps must be at least 1, got {self.steps}")
        if self.max_batch_s <= 0:
            raise TrainError(f"max_batch_s must be positive, got {self.max_batch_s}")
        if self.lr <= 0:
            raise TrainError(f"learning rate must be positive, got {self.lr}")
        if self.checkpoint_minutes <= 0:
            raise TrainError(f"checkpoint_minutes must be positive, got {self.checkpoint_minutes}")
        if self.on_error not in ("skip", "refuse"):
            raise TrainError(f"on_error must be skip or refuse, got {self.on_error!r}")

    def loop_config(self) -> LoopConfig:
        warmup = self.warmup_steps if self.warmup_steps is not None else min(1000, max(1, self.steps // 10))
        return LoopConfig(total_steps=self.steps, lr=self.lr, warmup_steps=warmup, weight_decay=self.weight_decay,
                          grad_clip=self.grad_clip, checkpoint_minutes=self.checkpoint_minutes,
                          log_every=self.log_every, seed=self.seed, bf16=self.bf16, progress=self.progress)

    def checkpoint_path(self, out: Path) -> Path:
        return Path(self.checkpoint) if self.checkpoint is not None else out.with_name(out.name + ".ckpt")


@dataclass(frozen=True)
class TrainSummary:
    output: str
    steps: int
    epochs: int
    loss: float
    utterances: int
    skipped: int
    train_audio_s: float  # one pass over the usable manifest
    audio_s: float  # audio seconds processed by this run (all ranks)
    wall_s: float
    audio_s_per_s: float
    weights_digest: str  # SHA-256 of the final weights: equal on every rank of a data-parallel run

    def to_dict(self) -> dict:
        return asdict(self)


# --- tokenizer and manifests --------------------------------------------------------------------


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: no such tokenizer file (make one with `reallm train tokenizer`)")
    try:
        return SentencePieceTokenizer.load(path)
    except (RuntimeError, ValueError) as exc:
        raise TrainError(f"{path}: not a reallm tokenizer ({str(exc).splitlines()[0]})") from None


def report_problems(what: str, problems: list[str], log: Log) -> None:
    if not problems:
        return
    log(f"{what}: skipped {len(problems)} line{'s' if len(problems) != 1 else ''}:")
    for p in problems[:MAX_LISTED_PROBLEMS]:
        log(f"  {p}")
    if len(problems) > MAX_LISTED_PROBLEMS:
        log(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")


def _line_numbers(path: Path) -> dict[str, int]:
    """Utterance id and resolved audio path -> manifest line, for entries found bad after parsing."""
    import json

    out = {}
    base = path.resolve().parent
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            if not isinstance(d, dict):
                continue
            if isinstance(d.get("id"), str):
                out[d["id"]] = n
            if isinstance(d.get("audio"), str) and d["audio"]:
                out.setdefault(str((base / d["audio"]).resolve()), n)
    return out


def _audio_problem(entry: ManifestEntry) -> str | None:
    """What is wrong with an entry's audio file, judged from its header alone (None when nothing)."""
    import soundfile as sf

    try:
        info = sf.info(str(entry.audio))
    except (RuntimeError, sf.LibsndfileError) as exc:
        return f"unreadable audio file {entry.audio}: {str(exc).splitlines()[0]}"
    if info.frames <= 0:
        return f"audio file {entry.audio} holds no samples"
    actual_s = info.frames / info.samplerate
    # A duration far from the file's is a line paired with the wrong file (or a stale manifest):
    # batching, the length checks and the alignment would all be off.
    if abs(actual_s - entry.duration_s) > 0.25 + 0.1 * actual_s:
        return f"'duration' is {entry.duration_s:.2f} s but {entry.audio.name} lasts {actual_s:.2f} s"
    return None


def read_training_manifest(
    path: str | Path, on_error: OnError, log: Log, *, tokenizer: Tokenizer | None = None, chunk_ms: int = 240,
    probe_audio: bool = True,
) -> tuple[list[ManifestEntry], list[list[int]], int]:
    """Usable entries, their word pieces (normalised text; empty when no tokenizer) and the number skipped.

    ``probe_audio`` opens every audio file's header once, so an unreadable file (or one whose
    length is not the manifest's duration) is reported with its line number before training starts
    rather than found hours into it.
    """
    path = Path(path)
    count = (lambda t: len(tokenizer.encode(normalize_text(t)))) if tokenizer is not None else None
    m = read_manifest(path, on_error, count_tokens=count, chunk_ms=chunk_ms)
    problems = [str(p) for p in m.problems]
    entries, tokens = [], []
    lines = None
    for e in m.entries:
        text = normalize_text(e.text)
        toks = tokenizer.encode(text) if tokenizer is not None else []
        bad = _audio_problem(e) if probe_audio else None
        if bad is None and not text:
            bad = f"text has nothing to say once normalised: {e.text!r}"
        elif bad is None and tokenizer is not None and not toks:
            bad = f"text gives no word pieces: {e.text!r}"
        if bad:
            lines = lines or _line_numbers(path)
            msg = f"{path}:{lines.get(e.id) or lines.get(str(e.audio), '?')}: {bad}"
            if on_error == "refuse":
                raise ManifestError(msg)
            problems.append(msg)
            continue
        entries.append(e)
        tokens.append(toks)
    report_problems(str(path), problems, log)
    if not entries:
        raise ManifestError(f"{path}: no usable utterance")
    return entries, tokens, len(problems)


def train_tokenizer_from_manifest(
    manifest: str | Path, vocab_size: int, out: str | Path, *, on_error: OnError = "skip", log: Log = log_stderr
) -> Tokenizer:
    """SentencePiece on the manifest's normalised transcripts (BLANK reserved), written to ``out``."""
    if vocab_size < 8:
        raise TrainError(f"vocabulary size must be at least 8, got {vocab_size}")
    entries, _, _ = read_training_manifest(manifest, on_error, log, probe_audio=False)
    texts = [normalize_text(e.text) for e in entries]
    try:
        tok = train_tokenizer(texts, vocab_size)
    except RuntimeError as exc:
        raise TrainError(f"SentencePiece could not train on {manifest}: {str(exc).splitlines()[0]}") from None
    if tok.vocab_size < vocab_size:
        log(f"the text only supports {tok.vocab_size} pieces (asked for {vocab_size})")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_bytes(tok.model_proto)
    os.replace(tmp, out)
    log(f"wrote {out}: {tok.vocab_size} pieces from {len(texts)} transcripts")
    return tok


# --- the shared stage runner --------------------------------------------------------------------


def run_stage(
    *,
    model: torch.nn.Module,
    loss_fn,
    dataset: AudioDataset,
    options: TrainOptions,
    out: Path,
    tokenizer: Tokenizer,
    configs: dict,
    info: DistInfo,
    log: Log,
    description: str,
) -> dict:
    """Batches by duration for this rank, the checkpoint checks, then ``run_loop``."""
    sampler = DurationBatchSampler(dataset.durations_s, options.max_batch_s, max_batch_size=options.max_batch_size,
                                   seed=options.seed, rank=info.rank, world_size=info.world_size)
    if not sampler.batches(0):
        raise TrainError(f"{len(dataset)} utterances make fewer batches than the {info.world_size} processes; "
                         "lower --max-batch-s or use fewer processes")
    ckpt = options.checkpoint_path(out)
    if ckpt.exists():
        if not options.resume:
            if info.is_main:
                ckpt.unlink()
                log(f"--no-resume: removed the old checkpoint {ckpt}")
        else:
            ck = load_loop_checkpoint(ckpt)
            if ck.get("configs") != configs or ck.get("tokenizer") != tokenizer.model_proto:
                raise CheckpointError(
                    f"{ckpt} belongs to a different run (other model settings or tokenizer); "
                    "pass --no-resume to start afresh or --checkpoint to use another file"
                )
            del ck
    barrier(info)

    def guarded_loss(batch, gen):
        if not batch.ids:  # no file of this batch could be read: a zero-gradient step, in step with other ranks
            params = [p for p in model.parameters() if p.requires_grad]
            return sum(p.sum() for p in params) * 0.0, {"audio_s": 0.0}
        return loss_fn(batch, gen)

    extra_state = {"configs": configs, "tokenizer": tokenizer.model_proto}
    return run_loop(model, guarded_loss, None, None, options.loop_config(), ckpt, log, extra_state,
                    dist=info, batch_iter=make_batch_iter(dataset, sampler, options.workers), description=description)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over the state dict (names and fp32 bytes), to compare the weights of runs or ranks."""
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def summarize(out: Path, result: dict, dataset: AudioDataset, skipped: int, model: torch.nn.Module) -> TrainSummary:
    return TrainSummary(
        output=str(out), steps=result["steps"], epochs=result["epochs"], loss=float(result["loss"]),
        utterances=len(dataset), skipped=skipped, train_audio_s=round(sum(dataset.durations_s), 2),
        audio_s=round(result["audio_s"], 2), wall_s=round(result["wall_s"], 2),
        audio_s_per_s=round(result["audio_s_per_s"], 2), weights_digest=weights_digest(model),
    )


# --- Speech ReaLLM ------------------------------------------------------------------------------


def _aligned_utterances(
    entries: list[ManifestEntry], tokens: list[list[int]], alignments: Path, manifest: Path, on_error: OnError, log: Log
) -> tuple[list[Utterance], int]:
    """Join manifest entries with their alignment records; missing/failed ones are reported and skipped."""
    records = {r.id: r for r in read_alignments(alignments)}
    lines = _line_numbers(manifest)
    utts, problems, n_failed, n_mismatch = [], [], 0, 0
    for e, toks in zip(entries, tokens):
        r = records.get(e.id)
        where = f"{manifest}:{lines.get(e.id) or lines.get(str(e.audio), '?')}"
        if r is None:
            msg = f"{where}: utterance {e.id!r} has no line in {alignments}"
        elif not r.ok:
            n_failed += 1
            msg = f"{where}: the teacher could not align {e.id!r} ({r.error})"
        elif list(r.tokens) != toks:
            n_mismatch += 1
            msg = f"{where}: {e.id!r} has other word pieces in {alignments} (another tokenizer or text?)"
        else:
            utts.append(Utterance(e, tuple(toks), r.token_frames, r.token_chunks))
            continue
        if on_error == "refuse" and (r is None or r.ok):  # a failed alignment is the teacher's verdict, not bad input
            raise TrainError(msg)
        problems.append(msg)
    if n_mismatch and not utts:
        raise TrainError(f"{alignments}: its word pieces match none of the manifest's transcripts; "
                         "was it made with another tokenizer?")
    report_problems(f"{manifest} + {alignments}", problems, log)
    if n_failed:
        log(f"{n_failed} utterances skipped because the teacher failed to align them")
    if not utts:
        raise TrainError(f"{alignments}: no utterance of {manifest} has a usable alignment")
    return utts, len(problems)


def train_reallm(
    manifest: str | Path,
    alignments: str | Path,
    tokenizer: str | Path,
    out: str | Path,
    *,
    preset: str = "small",
    init_encoder: str | Path | None = None,
    freeze_encoder: bool = False,
    options: TrainOptions = TrainOptions(),
    augment: AugmentConfig | None = None,
    log: Log = log_stderr,
) -> TrainSummary:
    """Train a Speech ReaLLM (Conformer + decoder) from audio and CTC alignments; writes one model file."""
    from reallm_cli.model.checkpoint import build_model, save_model
    from reallm_cli.model.presets import preset_config
    from reallm_cli.train.distributed import cleanup
    from reallm_cli.train.reallm_loss import reallm_loss

    info = init_distributed()
    say = log if info.is_main else (lambda _m: None)
    manifest, alignments, out = Path(manifest), Path(alignments), Path(out)
    tok = load_tokenizer(tokenizer)
    config = preset_config(preset, vocab_size=tok.vocab_size)
    torch.manual_seed(options.seed)
    model = build_model(config)
    if init_encoder is not None:
        teacher, teacher_tok = load_teacher(init_encoder)
        if teacher.config.encoder != config.encoder:
            raise TrainError(f"{init_encoder}: its encoder is not the {preset!r} preset's; train the teacher with --preset {preset}")
        if teacher_tok.model_proto != tok.model_proto:
            say(f"note: {init_encoder} was trained with another tokenizer; only its encoder is used")
        model.encoder.load_state_dict(teacher.encoder.state_dict())
        say(f"encoder initialised from the teacher {init_encoder}")
    if freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    entries, tokens, skipped = read_training_manifest(manifest, options.on_error, say, tokenizer=tok, chunk_ms=model.chunk_ms)
    utts, skipped_align = _aligned_utterances(entries, tokens, alignments, manifest, options.on_error, say)
    aug = augment if augment is not None else (AugmentConfig() if options.augment else NO_AUGMENT)
    dataset = AudioDataset(utts, aug, seed=options.seed, encoder_frame_ms=model.encoder.frame_ms, chunk_ms=model.chunk_ms)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"Speech ReaLLM {preset}: {n_params / 1e6:.1f}M parameters, {len(dataset)} utterances "
        f"({sum(dataset.durations_s) / 3600:.2f} h), {info.world_size} process(es)")

    device = training_device(info)
    model.to(device)

    def loss_fn(batch, gen):
        frames, lengths = model.encoder(batch.mel.to(device), batch.mel_lengths.to(device))
        loss, stats = reallm_loss(model, frames, lengths, batch.tokens, batch.token_chunks, tok.blank)
        stats["audio_s"] = batch.audio_s
        return loss.float(), stats

    configs = {"kind": "reallm", "reallm": config.to_dict(), "freeze_encoder": freeze_encoder}
    result = run_stage(model=model, loss_fn=loss_fn, dataset=dataset, options=options, out=out, tokenizer=tok,
                       configs=configs, info=info, log=say, description="reallm")
    summary = summarize(out, result, dataset, skipped + skipped_align, model)
    if info.is_main:
        save_model(out, model.cpu().eval(), tok, extra={"stage": "reallm", "preset": preset, "steps": result["steps"],
                                                 "train_hours": round(sum(dataset.durations_s) / 3600, 4)})
        say(f"wrote {out} ({result['steps']} steps, loss {summary.loss:.3f}, {summary.audio_s_per_s:.1f} audio-s/s)")
    barrier(info)
    cleanup(info)
    return summary

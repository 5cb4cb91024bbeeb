"""``reallm train``: the training recipe's stages (tokenizer, CTC teacher, Speech ReaLLM) as commands.

Each stage runs as one process, or as many under ``torchrun --nproc_per_node N -m reallm_cli train ...``
with the same options: rank 0 logs, checkpoints and writes the output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from reallm_cli.cli.options import ThreadsOpt, set_threads

train_app = typer.Typer(help="Train a tokenizer, a CTC alignment teacher, or a Speech ReaLLM.", no_args_is_help=True)

ManifestOpt = Annotated[Path, typer.Option("--manifest", help="Training manifest (JSON Lines: audio, text, duration).", show_default=False)]
TokenizerOpt = Annotated[Path, typer.Option("--tokenizer", help="Tokenizer from `reallm train tokenizer`.", show_default=False)]
PresetOpt = Annotated[str, typer.Option("--preset", metavar="NAME", help="Model size: paper-80m, small, or tiny (tests).")]
OnErrorOpt = Annotated[Literal["skip", "refuse"], typer.Option("--on-error", help="Bad manifest lines: skip (report with line numbers, go on) or refuse (stop at the first).")]
StepsOpt = Annotated[int, typer.Option("--steps", help="Optimiser steps.", min=1)]
MaxBatchOpt = Annotated[float, typer.Option("--max-batch-s", help="Padded seconds of audio per batch and process.", min=0.1)]
LrOpt = Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW; linear warm-up, cosine decay).", min=0.0)]
WarmupOpt = Annotated[Optional[int], typer.Option("--warmup-steps", help="Warm-up steps (default: 10% of --steps, at most 1000).", min=0, show_default=False)]
ClipOpt = Annotated[float, typer.Option("--grad-clip", help="Largest global gradient norm (0: no clipping).", min=0.0)]
CkptMinOpt = Annotated[float, typer.Option("--checkpoint-minutes", help="Minutes between checkpoints (one is also written at the end).", min=0.01)]
CkptOpt = Annotated[Optional[Path], typer.Option("--checkpoint", help="Checkpoint file (default: OUTPUT.ckpt).", show_default=False)]
ResumeOpt = Annotated[bool, typer.Option("--resume/--no-resume", help="Continue from the checkpoint if it exists (--no-resume starts afresh).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of weights, data order and augmentation.")]
Bf16Opt = Annotated[Optional[bool], typer.Option("--bf16/--no-bf16", help="bf16 autocast (default: where native, i.e. CUDA GPUs with bf16).", show_default=False)]
AugmentOpt = Annotated[bool, typer.Option("--augment/--no-augment", help="Speed perturbation, noise and SpecAugment.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Data loading worker processes per training process.", min=0)]
LogEveryOpt = Annotated[int, typer.Option("--log-every", help="Log a line every N steps.", min=1)]
ProgressOpt = Annotated[Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar on stderr (default: when stderr is a terminal).", show_default=False)]
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="File to write.", show_default=False)]


def _options(**kw):
    from reallm_cli.errors import ReallmError
    from reallm_cli.train.trainer import TrainOptions

    if kw["on_error"] not in ("skip", "refuse"):
        raise ReallmError(f"--on-error must be skip or refuse, not {kw['on_error']!r}")
    threads = kw.pop("threads")
    set_threads(threads)
    return TrainOptions(**kw)


@train_app.command("tokenizer")
def tokenizer_command(
    manifest: ManifestOpt,
    output: OutputOpt,
    vocab: Annotated[int, typer.Option("--vocab", help="Word pieces (BLANK included); small texts may support fewer.", min=8)] = 4096,
    on_error: OnErrorOpt = "skip",
) -> None:
    """Train a SentencePiece tokenizer (BLANK reserved) on the manifest's normalised transcripts."""
    from reallm_cli.errors import ReallmError
    from reallm_cli.train.trainer import train_tokenizer_from_manifest

    if on_error not in ("skip", "refuse"):
        raise ReallmError(f"--on-error must be skip or refuse, not {on_error!r}")
    train_tokenizer_from_manifest(manifest, vocab, output, on_error=on_error)


@train_app.command("teacher")
def teacher_command(
    manifest: ManifestOpt,
    tokenizer: TokenizerOpt,
    output: OutputOpt,
    preset: PresetOpt = "small",
    steps: StepsOpt = 20_000,
    max_batch_s: MaxBatchOpt = 200.0,
    lr: LrOpt = 1e-3,
    warmup_steps: WarmupOpt = None,
    grad_clip: ClipOpt = 1.0,
    checkpoint_minutes: CkptMinOpt = 10.0,
    checkpoint: CkptOpt = None,
    resume: ResumeOpt = True,
    seed: SeedOpt = 0,
    bf16: Bf16Opt = None,
    on_error: OnErrorOpt = "skip",
    augment: AugmentOpt = True,
    workers: WorkersOpt = 0,
    log_every: LogEveryOpt = 50,
    progress: ProgressOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Train the CTC alignment teacher (the preset's streaming Conformer + a CTC head) from audio."""
    from reallm_cli.train.teacher import train_teacher

    opts = _options(steps=steps, max_batch_s=max_batch_s, lr=lr, warmup_steps=warmup_steps, grad_clip=grad_clip,
                    checkpoint_minutes=checkpoint_minutes, checkpoint=checkpoint, resume=resume, seed=seed, bf16=bf16,
                    on_error=on_error, augment=augment, workers=workers, log_every=log_every, progress=progress,
                    threads=threads)
    train_teacher(manifest, tokenizer, output, preset=preset, options=opts)


@train_app.command("reallm")
def reallm_command(
    manifest: ManifestOpt,
    alignments: Annotated[Path, typer.Option("--alignments", help="Alignment file from `reallm align`.", show_default=False)],
    tokenizer: TokenizerOpt,
    output: OutputOpt,
    preset: PresetOpt = "small",
    init_encoder: Annotated[Optional[Path], typer.Option("--init-encoder", help="Start the encoder from this CTC teacher's (same preset).", show_default=False)] = None,
    freeze_encoder: Annotated[bool, typer.Option("--freeze-encoder", help="Train only the projector and decoder.")] = False,
    steps: StepsOpt = 20_000,
    max_batch_s: MaxBatchOpt = 200.0,
    lr: LrOpt = 1e-3,
    warmup_steps: WarmupOpt = None,
    grad_clip: ClipOpt = 1.0,
    checkpoint_minutes: CkptMinOpt = 10.0,
    checkpoint: CkptOpt = None,
    resume: ResumeOpt = True,
    seed: SeedOpt = 0,
    bf16: Bf16Opt = None,
    on_error: OnErrorOpt = "skip",
    augment: AugmentOpt = True,
    workers: WorkersOpt = 0,
    log_every: LogEveryOpt = 50,
    progress: ProgressOpt = None,
    threads: ThreadsOpt = None,
) -> None:
    """Train a Speech ReaLLM from audio and alignments; writes one model file for `reallm transcribe --model`."""
    from reallm_cli.train.trainer import train_reallm

    opts = _options(steps=steps, max_batch_s=max_batch_s, lr=lr, warmup_steps=warmup_steps, grad_clip=grad_clip,
                    checkpoint_minutes=checkpoint_minutes, checkpoint=checkpoint, resume=resume, seed=seed, bf16=bf16,
                    on_error=on_error, augment=augment, workers=workers, log_every=log_every, progress=progress,
                    threads=threads)
    train_reallm(manifest, alignments, tokenizer, output, preset=preset, init_encoder=init_encoder,
                 freeze_encoder=freeze_encoder, options=opts)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")

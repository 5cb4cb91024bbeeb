"""``reallm bench``: WER, real-time factor, chunk latency, emission delay and start-up, as a table or JSON; ``--streams N``: many live streams in one process."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Annotated, Optional

import typer

from reallm_cli.cli.options import (LookaheadMsAlias, ModelOpt, Precision, RightContextMs, ThreadsOpt, right_context,
                                    set_threads)
from reallm_cli.errors import ReallmError


def bench_command(
    chunk_ms: Annotated[int, typer.Option("--chunk-ms", help="Audio pushed per step, in ms, as a live source delivers it (the model decodes its own chunk length, 240 ms for the default model); with --preset also the preset's chunk length (a multiple of its 40 ms encoder frame).", min=10, max=4000)] = 240,
    model: ModelOpt = None,
    precision: Precision = "auto",
    right_context_ms: RightContextMs = None,
    lookahead_ms: LookaheadMsAlias = None,
    preset: Annotated[Optional[str], typer.Option("--preset", metavar="NAME", help="Measure a randomly initialised preset instead: paper-80m or small.", show_default=False)] = None,
    file: Annotated[Optional[str], typer.Option("--file", metavar="FILE", help="Audio file to stream (default: the speech sample shipped in the package, jfk, 11 s, with its reference transcript and word times).", show_default=False)] = None,
    duration_s: Annotated[float, typer.Option("--duration", help="Stream at most this many seconds of the audio (its first seconds).", min=1, max=36000)] = 60.0,
    threads: ThreadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    reference: Annotated[Optional[str], typer.Option("--reference", metavar="TEXT", help="Reference transcript of --file, for WER (known already for the shipped sample and for files listed in a manifest.jsonl beside them).", show_default=False)] = None,
    max_pieces: Annotated[Optional[int], typer.Option("--max-pieces", help="Cap on word pieces decoded per chunk (default: the model's). A random preset never says BLANK, so it always decodes this many: a worst case.", min=1, max=64, show_default=False)] = None,
    streams: Annotated[int, typer.Option("--streams", help="Live streams served by one process (one model, N sessions fed a --chunk-ms block each in turn): per-stream RTF and chunk p99, and whether the process kept real time.", min=1, max=256)] = 1,
) -> None:
    """Measure what a live user feels: WER, real-time factor, chunk latency, emission delay, first word, load, RSS.

    Streams real speech (the shipped jfk sample, or --file) in --chunk-ms blocks, as a microphone delivers
    it. Emission delay: the stream position after which a word was whole on screen minus its reference end
    time. With --streams N, N live streams share one model in this process, fed a block each in turn."""
    import torch

    from reallm_cli.bench import run_bench, run_streams
    from reallm_cli.engine import Recognizer

    right_context_ms = right_context(right_context_ms, lookahead_ms)
    if model and preset:
        raise ReallmError("give --model or --preset, not both")
    if preset and right_context_ms is not None:
        raise ReallmError("--right-context-ms applies to a trained Whisper-encoder model, not to --preset")
    if reference is not None and file is None:
        raise ReallmError("--reference goes with --file (the shipped sample's reference is known)")
    if streams > 1 and reference is not None:
        raise ReallmError("--reference is not used with --streams (no WER is measured there)")
    audio, audio_name, ref = _audio(file, duration_s, reference)
    set_threads(threads)
    t0 = time.perf_counter()
    if preset:
        from reallm_cli.model.checkpoint import build_model
        from reallm_cli.model.presets import placeholder_tokenizer, preset_config

        tok = placeholder_tokenizer(4096)
        try:
            config = preset_config(preset, vocab_size=tok.vocab_size, chunk_ms=chunk_ms)
        except ValueError as exc:
            raise ReallmError(f"--chunk-ms {chunk_ms} does not fit preset {preset}: {exc}") from exc
        torch.manual_seed(0)
        from reallm_cli.model.quantize import apply_precision, resolve_precision

        precision = resolve_precision(precision)
        recognizer = Recognizer(apply_precision(build_model(config).eval(), precision), tok, precision=precision)
        name = f"{preset} (random weights)"
    else:
        recognizer = Recognizer.load(model, precision=precision, right_context_ms=right_context_ms)
        name = model or "default"
    if max_pieces is not None:
        from dataclasses import replace

        recognizer.options = replace(recognizer.options, max_tokens_per_chunk=max_pieces)
    load_s = time.perf_counter() - t0
    if streams > 1:
        result = run_streams(recognizer, audio, streams, name, load_s, block_ms=chunk_ms)
        if as_json:
            typer.echo(json.dumps(asdict(result), indent=1))
        else:
            _streams_table(result, audio_name)
        return
    result = run_bench(recognizer, audio, name, load_s, block_ms=chunk_ms, reference=ref, audio_name=audio_name)
    if as_json:
        typer.echo(json.dumps(asdict(result), indent=1))
        return
    _table(result)


def _audio(file: Optional[str], duration_s: float, reference: Optional[str]):
    """(16 kHz audio, its name, its Reference or None): the first ``duration_s`` of ``file`` or of the sample."""
    from reallm_cli.audio.source import open_audio
    from reallm_cli.bench import Reference, known_reference
    from reallm_cli.samples import sample

    if file is None:
        jfk = sample()
        path, name, ref = str(jfk.audio), f"sample:{jfk.id}", Reference(jfk.text, jfk.words)
    else:
        path, name = file, file
        ref = Reference(reference) if reference is not None else (None if file == "-" else known_reference(file))
    src = open_audio(path)
    audio = next(iter(src.iter_blocks(int(duration_s * 16000))))
    if ref is not None and reference is None and src.duration_s > duration_s + 0.01:
        ref = None  # only part of the audio is streamed: its known reference no longer applies
    return audio, name, ref


def _table(result) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="reallm bench")
    t.add_column("measure")
    t.add_column("value", justify="right")
    rows = [
        ("model", f"{result.model} ({result.precision}, {result.threads} threads)"),
        ("audio", result.audio),
        ("pushed in blocks of", f"{result.chunk_ms} ms"),
        ("audio streamed", f"{result.audio_s:.1f} s"),
        ("WER", "-" if result.wer is None else f"{100 * result.wer:.1f} %"),
        ("real-time factor", f"{result.rtf:.4f}"),
        ("chunk compute p50", f"{result.chunk_p50_ms:.1f} ms"),
        ("chunk compute p95", f"{result.chunk_p95_ms:.1f} ms"),
        ("chunk compute p99", f"{result.chunk_p99_ms:.1f} ms"),
        ("chunk compute max", f"{result.chunk_max_ms:.1f} ms"),
        ("emission delay median", "-" if result.delay_p50_s is None else f"{result.delay_p50_s:.2f} s"),
        ("emission delay p95", "-" if result.delay_p95_s is None else f"{result.delay_p95_s:.2f} s"),
        ("first word at", "-" if result.first_word_s is None else f"{result.first_word_s:.2f} s"),
        ("model load", f"{result.load_s:.2f} s"),
        ("peak RSS", f"{result.peak_rss_mb:.0f} MB"),
        ("pieces per chunk", f"{result.pieces_per_chunk:.2f}"),
        ("parameters", f"{result.n_params / 1e6:.1f} M"),
    ]
    for r in rows:
        t.add_row(*r)
    Console().print(t)


def _streams_table(result, audio_name: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"reallm bench: {result.streams} streams in one process")
    t.caption = (f"{result.model} ({result.precision}, {result.threads} threads), {audio_name}, "
                 f"{result.chunk_ms} ms blocks")
    for col in ("stream", "RTF", "chunk p50", "chunk p99", "words"):
        t.add_column(col, justify="right")
    for s in result.per_stream:
        t.add_row(str(s["stream"]), f"{s['rtf']:.4f}", f"{s['chunk_p50_ms']:.1f} ms", f"{s['chunk_p99_ms']:.1f} ms", str(s["words"]))
    out = Console()
    out.print(t)
    verdict = "kept real time" if result.kept_real_time else "fell behind real time"
    out.print(f"{verdict}: all streams together RTF {result.aggregate_rtf:.3f}; one round (a {result.chunk_ms} ms block "
              f"to every stream) p50 {result.round_p50_ms:.1f} ms, p99 {result.round_p99_ms:.1f} ms; "
              f"worst lag {result.max_lag_s:.2f} s; load {result.load_s:.2f} s; peak RSS {result.peak_rss_mb:.0f} MB")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)

"""``reallm bench``: real-time factor and per-chunk latency, as a table or JSON."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Annotated, Optional

import typer

from reallm_cli.cli.options import LookaheadMs, ModelOpt, Precision, ThreadsOpt, set_threads
from reallm_cli.errors import ReallmError


def bench_command(
    chunk_ms: Annotated[int, typer.Option("--chunk-ms", help="Chunk length in ms (a multiple of the encoder frame: 40 ms for presets, 20 ms for Whisper models).", min=40, max=4000)] = 240,
    model: ModelOpt = None,
    precision: Precision = "auto",
    lookahead_ms: LookaheadMs = None,
    preset: Annotated[Optional[str], typer.Option("--preset", metavar="NAME", help="Measure a randomly initialised preset instead: paper-80m or small.", show_default=False)] = None,
    file: Annotated[Optional[str], typer.Option("--file", metavar="FILE", help="Audio file to stream (default: synthetic audio with no words, so the decoder is nearly idle: pass speech for a realistic figure).", show_default=False)] = None,
    duration_s: Annotated[float, typer.Option("--duration", help="Seconds of audio to stream (synthetic audio, or the file's first seconds).", min=1, max=36000)] = 60.0,
    threads: ThreadsOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    reference: Annotated[Optional[str], typer.Option("--reference", metavar="TEXT", help="Reference transcript of --file, for WER.", show_default=False)] = None,
    max_pieces: Annotated[Optional[int], typer.Option("--max-pieces", help="Cap on word pieces decoded per chunk (default: the model's). A random preset never says BLANK, so it always decodes this many: a worst case.", min=1, max=64, show_default=False)] = None,
) -> None:
    """Measure the real-time factor and per-chunk compute latency (p50/p95/p99) of streaming."""
    import torch

    from reallm_cli.bench import run_bench, synthetic_audio
    from reallm_cli.engine import Recognizer

    if model and preset:
        raise ReallmError("give --model or --preset, not both")
    if preset and lookahead_ms is not None:
        raise ReallmError("--lookahead-ms applies to a trained Whisper-encoder model, not to --preset")
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
        recognizer = Recognizer.load(model, precision=precision, lookahead_ms=lookahead_ms)
        name = model or "default"
        if recognizer.model.chunk_ms != chunk_ms:
            raise ReallmError(f"model {name} was trained for {recognizer.model.chunk_ms} ms chunks, not {chunk_ms}; "
                              "use --preset to measure other chunk lengths")
    if max_pieces is not None:
        from dataclasses import replace

        recognizer.options = replace(recognizer.options, max_tokens_per_chunk=max_pieces)
    load_s = time.perf_counter() - t0
    if file:
        from reallm_cli.audio.source import open_audio

        src = open_audio(file)
        audio = next(iter(src.iter_blocks(int(duration_s * 16000))))
    else:
        audio = synthetic_audio(duration_s)
    result = run_bench(recognizer, audio, name, load_s)
    if reference is not None:
        from reallm_cli.text import normalize_text
        import jiwer

        result = type(result)(**{**asdict(result), "wer": round(jiwer.wer(normalize_text(reference), normalize_text(result.text) or "<empty>"), 4)})
    if as_json:
        typer.echo(json.dumps(asdict(result), indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"reallm bench: {name}, {result.precision}, {result.chunk_ms} ms chunks, {result.threads} threads")
    t.add_column("measure")
    t.add_column("value", justify="right")
    rows = [
        ("audio streamed", f"{result.audio_s:.1f} s"),
        ("real-time factor", f"{result.rtf:.4f}"),
        ("chunk latency p50", f"{result.chunk_p50_ms:.1f} ms"),
        ("chunk latency p95", f"{result.chunk_p95_ms:.1f} ms"),
        ("chunk latency p99", f"{result.chunk_p99_ms:.1f} ms"),
        ("chunk latency max", f"{result.chunk_max_ms:.1f} ms"),
        ("model load", f"{result.load_s:.2f} s"),
        ("first word at", "-" if result.first_word_s is None else f"{result.first_word_s:.2f} s"),
        ("pieces per chunk", f"{result.pieces_per_chunk:.2f}"),
        ("parameters", f"{result.n_params / 1e6:.1f} M"),
        ("peak RSS", f"{result.peak_rss_mb:.0f} MB"),
    ]
    if result.wer is not None:
        rows.append(("WER", f"{100 * result.wer:.1f} %"))
    for r in rows:
        t.add_row(*r)
    Console().print(t)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_command)

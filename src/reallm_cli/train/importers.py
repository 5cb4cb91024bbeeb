"""Turn common corpus layouts into manifest entries (write them with ``write_manifest``).

Texts are kept as the corpus spells them; normalisation happens where text becomes tokens, so a
manifest stays faithful to its source. Entries come out sorted by id, so imports are reproducible.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import soundfile as sf

from reallm_cli.errors import ReallmError
from reallm_cli.train.manifest import ManifestEntry

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")


class DatasetImportError(ReallmError):
    """A corpus folder that cannot be imported (wrong layout, unreadable files)."""


class DatasetImportWarning(UserWarning):
    """One skipped utterance during an import with ``on_error="skip"``."""


def _problem(message: str, on_error: str) -> None:
    if on_error == "refuse":
        raise DatasetImportError(message)
    warnings.warn(message, DatasetImportWarning, stacklevel=3)


def _duration_s(path: Path) -> float:
    info = sf.info(str(path))
    return info.frames / info.samplerate


def _check_on_error(on_error: str) -> None:
    if on_error not in ("skip", "refuse"):
        raise ValueError(f"on_error must be 'skip' or 'refuse', got {on_error!r}")


def import_librispeech(root: str | Path, *, on_error: Literal["skip", "refuse"] = "skip") -> list[ManifestEntry]:
    """LibriSpeech layout: ``speaker/chapter/speaker-chapter.trans.txt`` ("ID TEXT" lines) beside ``ID.flac``."""
    _check_on_error(on_error)
    root = Path(root)
    if not root.is_dir():
        raise DatasetImportError(f"{root}: not a folder")
    trans_files = sorted(root.rglob("*.trans.txt"))
    if not trans_files:
        raise DatasetImportError(f"{root}: no *.trans.txt files; is this a LibriSpeech folder (speaker/chapter/...)?")
    entries = []
    for trans in trans_files:
        for line_no, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            text = " ".join(text.split())
            where = f"{trans}:{line_no}"
            if not text:
                _problem(f"{where}: no transcript after the id {utt_id!r}", on_error)
                continue
            audio = trans.parent / f"{utt_id}.flac"
            if not audio.is_file():
                _problem(f"{where}: audio file not found: {audio}", on_error)
                continue
            try:
                duration_s = _duration_s(audio)
            except (RuntimeError, sf.LibsndfileError) as exc:
                _problem(f"{audio}: unreadable audio ({exc})", on_error)
                continue
            entries.append(ManifestEntry(audio=audio.resolve(), text=text, duration_s=duration_s, id=utt_id))
    if not entries:
        raise DatasetImportError(f"{root}: no utterance could be imported")
    return sorted(entries, key=lambda e: e.id)


def import_folder(
    root: str | Path,
    *,
    audio_extensions: Iterable[str] = AUDIO_EXTENSIONS,
    on_error: Literal["skip", "refuse"] = "skip",
) -> list[ManifestEntry]:
    """Audio files anywhere under ``root``, each with a same-named ``.txt`` transcript beside it."""
    _check_on_error(on_error)
    root = Path(root)
    if not root.is_dir():
        raise DatasetImportError(f"{root}: not a folder")
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in audio_extensions}
    audio_files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
    if not audio_files:
        raise DatasetImportError(f"{root}: no audio files ({', '.join(sorted(exts))})")
    entries = []
    for audio in audio_files:
        txt = audio.with_suffix(".txt")
        if not txt.is_file():
            _problem(f"{audio}: no transcript {txt.name} beside it", on_error)
            continue
        text = " ".join(txt.read_text(encoding="utf-8").split())
        if not text:
            _problem(f"{txt}: empty transcript", on_error)
            continue
        try:
            duration_s = _duration_s(audio)
        except (RuntimeError, sf.LibsndfileError) as exc:
            _problem(f"{audio}: unreadable audio ({exc})", on_error)
            continue
        utt_id = audio.relative_to(root).with_suffix("").as_posix()
        if entries and entries[-1].id == utt_id:  # a.wav and a.flac share a transcript and an id
            _problem(f"{audio}: another audio file already uses the transcript {txt.name}", on_error)
            continue
        entries.append(ManifestEntry(audio=audio.resolve(), text=text, duration_s=duration_s, id=utt_id))
    if not entries:
        raise DatasetImportError(f"{root}: no audio file has a transcript")
    return sorted(entries, key=lambda e: e.id)

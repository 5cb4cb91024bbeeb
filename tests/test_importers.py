import numpy as np
import pytest
import soundfile as sf

from reallm_cli.train.importers import DatasetImportError, DatasetImportWarning, import_folder, import_librispeech
from reallm_cli.train.manifest import read_manifest, write_manifest


def _audio(path, seconds, sr=16000, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    sf.write(path, 0.05 * rng.standard_normal(int(seconds * sr)), sr, format=fmt)


def _make_librispeech(root):
    # invented ids and sentences in the LibriSpeech layout (no real corpus text)
    utts = {"11-22": [("11-22-0000", 1.5, "THE CAT SAT"), ("11-22-0001", 0.5, "ON THE MAT")],
            "33-44": [("33-44-0000", 2.25, "A DOG BARKED TWICE")]}
    for chap, items in utts.items():
        spk, ch = chap.split("-")
        folder = root / spk / ch
        for utt, secs, _ in items:
            _audio(folder / f"{utt}.flac", secs)
        (folder / f"{chap}.trans.txt").write_text("".join(f"{u} {t}\n" for u, _, t in items))
    return root


def test_import_librispeech(tmp_path):
    root = _make_librispeech(tmp_path / "LibriSpeech" / "train-tiny")
    entries = import_librispeech(root)
    assert [e.id for e in entries] == ["11-22-0000", "11-22-0001", "33-44-0000"]
    assert [e.duration_s for e in entries] == [1.5, 0.5, 2.25]
    assert entries[2].text == "A DOG BARKED TWICE"
    assert entries[0].audio == (root / "11" / "22" / "11-22-0000.flac").resolve()
    # the result is a valid manifest
    write_manifest(tmp_path / "m.jsonl", entries)
    assert read_manifest(tmp_path / "m.jsonl", on_error="refuse").entries == tuple(entries)


def test_import_librispeech_missing_audio(tmp_path):
    root = _make_librispeech(tmp_path / "ls")
    (root / "11" / "22" / "11-22-0001.flac").unlink()
    with pytest.warns(DatasetImportWarning, match=r"trans\.txt:2: audio file not found"):
        entries = import_librispeech(root)
    assert len(entries) == 2
    with pytest.raises(DatasetImportError, match="audio file not found"):
        import_librispeech(root, on_error="refuse")
    with pytest.raises(DatasetImportError, match="no \\*.trans.txt"):
        (tmp_path / "empty").mkdir()
        import_librispeech(tmp_path / "empty")


def test_import_folder(tmp_path):
    _audio(tmp_path / "a.wav", 1.0)
    (tmp_path / "a.txt").write_text("hello\n  world \n")
    _audio(tmp_path / "sub" / "b.flac", 0.75, sr=8000)
    (tmp_path / "sub" / "b.txt").write_text("second one")
    _audio(tmp_path / "orphan.wav", 0.5)  # no transcript
    (tmp_path / "notes.txt").write_text("no audio here")
    with pytest.warns(DatasetImportWarning, match="orphan.wav: no transcript"):
        entries = import_folder(tmp_path)
    assert [(e.id, e.text, e.duration_s) for e in entries] == [("a", "hello world", 1.0), ("sub/b", "second one", 0.75)]
    with pytest.raises(DatasetImportError, match="no audio files"):
        import_folder(tmp_path / "sub" / "..", audio_extensions=[".opus"])

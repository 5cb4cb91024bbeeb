"""``reallm data``: turn a corpus folder into a training manifest (JSON Lines of audio, text, duration)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

data_app = typer.Typer(help="Make training manifests from corpus folders.", no_args_is_help=True)

OnErrorOpt = Annotated[str, typer.Option("--on-error", help="skip: report bad utterances and go on; refuse: stop at the first.")]
OutOpt = Annotated[Path, typer.Option("--output", "-o", help="Manifest to write (JSON Lines; audio paths relative to its folder).", show_default=False)]


def _run(importer, roots: list[Path], output: Path, on_error: str, **kwargs) -> None:
    from reallm_cli.errors import ReallmError
    from reallm_cli.train.importers import DatasetImportWarning
    from reallm_cli.train.manifest import write_manifest

    if on_error not in ("skip", "refuse"):
        raise ReallmError(f"--on-error must be skip or refuse, not {on_error!r}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DatasetImportWarning)
        entries = [e for root in roots for e in importer(root, on_error=on_error, **kwargs)]
    seen: set[str] = set()
    for e in entries:
        if e.id in seen:
            raise ReallmError(f"utterance id {e.id!r} occurs in more than one of the folders; import them separately")
        seen.add(e.id)
    skipped = [str(w.message) for w in caught if issubclass(w.category, DatasetImportWarning)]
    for message in skipped[:20]:
        print(f"skipped: {message}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"skipped: ... and {len(skipped) - 20} more", file=sys.stderr)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        n = write_manifest(output, entries)
    except OSError as exc:
        raise ReallmError(f"cannot write {output}: {exc.strerror}") from None
    hours = sum(e.duration_s for e in entries) / 3600
    print(f"wrote {output}: {n} utterances, {hours:.2f} h" + (f" ({len(skipped)} skipped)" if skipped else ""), file=sys.stderr)


@data_app.command("librispeech")
def librispeech_command(
    roots: Annotated[list[Path], typer.Argument(help="LibriSpeech folders (speaker/chapter/*.trans.txt beside *.flac), e.g. train-clean-100 train-clean-360 train-other-500.", show_default=False)],
    output: OutOpt,
    on_error: OnErrorOpt = "skip",
) -> None:
    """Import LibriSpeech-layout corpora into one manifest."""
    from reallm_cli.train.importers import import_librispeech

    _run(import_librispeech, roots, output, on_error)


@data_app.command("folder")
def folder_command(
    roots: Annotated[list[Path], typer.Argument(help="Folders of audio files, each with a same-named .txt transcript beside it.", show_default=False)],
    output: OutOpt,
    on_error: OnErrorOpt = "skip",
    ext: Annotated[list[str], typer.Option("--ext", help="Audio file extensions to take (repeatable).")] = [".wav", ".flac", ".ogg", ".mp3"],
) -> None:
    """Import every audio file under a folder that has a transcript beside it."""
    from reallm_cli.train.importers import import_folder

    _run(import_folder, roots, output, on_error, audio_extensions=ext)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")

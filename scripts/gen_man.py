#!/usr/bin/env python3
"""Generate man pages (roff) for ``reallm`` and every subcommand from the Typer/click app itself.

    python scripts/gen_man.py            # (re)write man/reallm.1 and man/reallm-<command>.1
    python scripts/gen_man.py --check    # exit 1 if the committed pages differ from the app

tests/test_man.py runs the check, so regenerate after any change to commands, options or help.
Pages carry no date, so regenerating an unchanged CLI gives identical files.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[1]
MAN_DIR = REPO / "man"

ENVIRONMENT = [
    ("REALLM_HOME", "Folder for downloaded models (in its models/ subfolder). Default: the user cache folder, e.g. ~/.cache/reallm."),
    ("REALLM_REGISTRY", "A JSON file of extra model registry entries (name to urls, sha256, size_bytes, license, description)."),
    ("PULSE_SOURCE", "With --device pulse, the PulseAudio source to record from."),
]
# The same for every command (README "Exit status"); reallm_cli.cli.app names them.
EXIT_STATUS = [
    ("0", "Success, including a live session ended with Ctrl-C or SIGTERM."),
    ("1", "A file failed: unreadable, or damaged (transcribed as far as it decodes, with one warning line)."),
    ("2", "A usage error or a problem to fix before anything runs (bad option, missing or damaged model, unusable device); one line on stderr says which."),
    ("130", "Interrupted: Ctrl-C or SIGTERM during transcribe (what was written is kept), or a second Ctrl-C during a live session's shutdown."),
]
DIAGNOSTICS = "Every message is one line on stderr starting \"reallm: error:\" or \"reallm: warning:\"; stdout carries only the transcript or the result asked for."
# Extra sections of some pages, as (title, paragraphs).
EXTRA = {
    "reallm-transcribe": [("OUTPUT FORMATS", [
        "Each segment is written, and flushed, to stdout or to its file as soon as it is final, so killing the process loses at most the segment in progress. "
        "With --output-dir DIR each input goes to DIR/<name>.<ext>.partial, renamed to DIR/<name>.<ext> when the input ends; an interrupted run leaves the .partial file. "
        "Inputs that share a name keep their folders under DIR; inputs that would still collide are refused before any work. "
        "An existing transcript is never replaced without --overwrite: its input is skipped with a warning.",
        "txt: one line per segment. srt, vtt: one cue per segment. json: one object with file, segments (start_s, end_s, text, words with start_s, end_s, emit_s), duration_s and text. "
        "jsonl: one record a line, each with type and file: final (the words that became final), segment, and a last end record with duration_s.",
        "With several inputs on stdout, txt, srt and vtt put a line \"==> FILE <==\" before each file (each srt or vtt block is complete by itself), "
        "json prints one array of the per-file objects, and jsonl records tell files apart by their file field. With one input there is no header.",
    ])],
}


def roff_escape(text: str) -> str:
    """Escape text for roff: backslashes, and lines that would start with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def _paragraphs(help_text: str) -> list[str]:
    text = inspect.cleandoc(help_text or "")
    paras = []
    for block in text.split("\n\n"):
        block = block.replace("\b\n", "").strip()
        if block:
            paras.append(" ".join(line.strip() for line in block.splitlines()))
    return paras


# Typer ships its own copy of click, so commands are recognised by behaviour, not by class.
def _is_group(cmd) -> bool:
    return hasattr(cmd, "list_commands")


def _first_sentence(cmd) -> str:
    paras = _paragraphs(cmd.help or "")
    return paras[0].rstrip(".") if paras else ""


def _commands(group, ctx) -> list[tuple[str, object]]:
    return [(name, group.get_command(ctx, name)) for name in group.list_commands(ctx) if not group.get_command(ctx, name).hidden]


def _option_lines(cmd, ctx) -> tuple[list[str], list[str]]:
    """roff for the OPTIONS and ARGUMENTS sections."""
    options, arguments = [], []
    for param in cmd.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            record = param.get_help_record(ctx)
            meta = record[0] if record else (param.metavar or param.name.upper())
            help_text = " ".join((record[1] if record else getattr(param, "help", None) or "").split())
            arguments += [".TP", f"\\fI{roff_escape(meta)}\\fR" + ("" if param.required else " (optional)"), roff_escape(help_text)]
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        # "-m, --model TEXT" → bold option names, italic metavar
        rendered = []
        for chunk in names.split(", "):
            opt, _, metavar = chunk.partition(" ")
            rendered.append(f"\\fB{roff_escape(opt)}\\fR" + (f" \\fI{roff_escape(metavar)}\\fR" if metavar else ""))
        options += [".TP", ", ".join(rendered), roff_escape(" ".join(help_text.split()))]
    return options, arguments


def _header(title: str, version: str) -> list[str]:
    return [
        f'.\\" Generated by scripts/gen_man.py from the reallm command line; do not edit.',
        f'.TH "{title.upper()}" "1" "" "reallm {version}" "reallm manual"',
    ]


def render_page(path: list[str], cmd, ctx, version: str) -> str:
    """One man page for the command at ``path`` (e.g. ["reallm", "listen"])."""
    full = " ".join(path)
    title = "-".join(path)
    out = _header(title, version)
    out += [".SH NAME", f"{roff_escape(title)} \\- {roff_escape(_first_sentence(cmd))}"]
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    out += [".SH SYNOPSIS", f".B {roff_escape(full)}", roff_escape(usage)]
    paras = _paragraphs(cmd.help or "")
    if paras:
        out.append(".SH DESCRIPTION")
        for i, p in enumerate(paras):
            if i:
                out.append(".PP")
            out.append(roff_escape(p))
    options, arguments = _option_lines(cmd, ctx)
    if arguments:
        out += [".SH ARGUMENTS", *arguments]
    if options:
        out += [".SH OPTIONS", *options]
    see_also = []
    if _is_group(cmd):
        out.append(".SH COMMANDS")
        for name, sub in _commands(cmd, ctx):
            sub_title = f"{title}-{name}"
            out += [".TP", f"\\fB{roff_escape(name)}\\fR", roff_escape(sub.get_short_help_str(limit=300)) + f" See \\fB{roff_escape(sub_title)}\\fR(1)."]
            see_also.append(sub_title)
    for section, paragraphs in EXTRA.get(title, []):
        out.append(f".SH {section}")
        for i, p in enumerate(paragraphs):
            out += [".PP"] * bool(i) + [roff_escape(p)]
    if not _is_group(cmd) or len(path) == 1:
        out.append(".SH EXIT STATUS")
        for code, text in EXIT_STATUS:
            out += [".TP", f"\\fB{code}\\fR", roff_escape(text)]
        out += [".SH DIAGNOSTICS", roff_escape(DIAGNOSTICS)]
    if len(path) == 1:
        out.append(".SH ENVIRONMENT")
        for name, text in ENVIRONMENT:
            out += [".TP", f"\\fB{name}\\fR", roff_escape(text)]
    else:
        see_also.insert(0, "-".join(path[:-1]))
    if see_also:
        out += [".SH SEE ALSO", ", ".join(f"\\fB{roff_escape(s)}\\fR(1)" for s in see_also)]
    return "\n".join(out) + "\n"


def generate() -> dict[str, str]:
    """File name → roff text for the root command and every subcommand (recursively)."""
    from reallm_cli import __version__
    from reallm_cli.cli.app import app

    root = typer.main.get_command(app)
    pages: dict[str, str] = {}

    def walk(path: list[str], cmd, parent) -> None:
        ctx = cmd.context_class(cmd, info_name=path[-1], parent=parent, **cmd.context_settings)
        pages["-".join(path) + ".1"] = render_page(path, cmd, ctx, __version__)
        if _is_group(cmd):
            for name, sub in _commands(cmd, ctx):
                walk([*path, name], sub, ctx)

    walk(["reallm"], root, None)
    return pages


def check(man_dir: Path = MAN_DIR) -> list[str]:
    """Differences between the committed pages and what the app generates now (empty: in sync)."""
    pages = generate()
    problems = []
    for name, text in sorted(pages.items()):
        path = man_dir / name
        if not path.exists():
            problems.append(f"missing {path}")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"outdated {path}")
    if man_dir.is_dir():
        for path in sorted(man_dir.glob("reallm*.1")):
            if path.name not in pages:
                problems.append(f"stale {path} (no such command)")
    return problems


def write(man_dir: Path = MAN_DIR) -> list[Path]:
    man_dir.mkdir(parents=True, exist_ok=True)
    pages = generate()
    for path in man_dir.glob("reallm*.1"):
        if path.name not in pages:
            path.unlink()
    written = []
    for name, text in sorted(pages.items()):
        (man_dir / name).write_text(text, encoding="utf-8")
        written.append(man_dir / name)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the pages are out of date")
    parser.add_argument("--out", type=Path, default=MAN_DIR, help="folder for the pages (default: man/)")
    args = parser.parse_args()
    if args.check:
        problems = check(args.out)
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("regenerate with: python scripts/gen_man.py", file=sys.stderr)
        return 1 if problems else 0
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

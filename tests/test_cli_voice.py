"""One CLI voice: plain metavars, choices with defaults, shared options declared once, one error prefix,
and a README that names only options that exist."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from reallm_cli.cli.app import app

REPO = Path(__file__).resolve().parents[1]


def _commands():
    """(path, click command, context) for every leaf command."""
    root = typer.main.get_command(app)
    out = []

    def walk(path, cmd, parent):
        ctx = cmd.context_class(cmd, info_name=path[-1], parent=parent)
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(ctx):
                walk([*path, name], cmd.get_command(ctx, name), ctx)
        else:
            out.append((path, cmd, ctx))

    walk(["reallm"], root, None)
    return out


def _help(args):
    r = subprocess.run([sys.executable, "-m", "reallm_cli", *args, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return " ".join(r.stdout.split())  # help text wraps at any width


def test_help_metavars_are_plain_words():
    for path, cmd, ctx in _commands():
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        assert "{" not in usage and "<" not in usage, (path, usage)
        for param in cmd.params:
            record = param.get_help_record(ctx)
            if record:
                assert not re.search(r"[<{]", record[0]), (path, record[0])
    text = _help(["transcribe"])
    assert "transcribe [OPTIONS] FILE..." in text
    assert re.search(r"--right-context-ms MS\b", text) and "--lookahead-ms" not in text and re.search(r"-m, --model NAME\|FILE", text)
    assert re.search(r"--precision auto\|fp32\|bf16\|fp16\|int8 [^\[]*\[default: auto\]", text)
    assert re.search(r"-f, --format txt\|srt\|vtt\|json\|jsonl [^\[]*\[default: txt\]", text)


def test_shared_options_mean_the_same_everywhere():
    seen = {}
    for path, cmd, _ in _commands():
        for param in cmd.params:
            for opt in ("--model", "--threads", "--precision", "--right-context-ms", "--lookahead-ms", "--format", "--quiet"):
                if opt in getattr(param, "opts", ()):
                    seen.setdefault(opt, {})[" ".join(path)] = (tuple(param.opts), param.metavar, param.help)
    assert len(seen["--model"]) >= 4 and len(seen["--threads"]) >= 5 and len(seen["--quiet"]) >= 3
    for opt, by_command in seen.items():
        assert len(set(by_command.values())) == 1, (opt, by_command)


@pytest.mark.parametrize("args", [["transcribe", "--no-such-option", "x.wav"], ["transcribe", "-f", "docx", "x.wav"],
                                  ["transcribe"], ["transcribe", "x.wav", "--model", "/nonexistent/m.safetensors"]])
def test_one_error_prefix_and_usage_exit_status(args):
    r = subprocess.run([sys.executable, "-m", "reallm_cli", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("reallm: error: ") and len(r.stderr.splitlines()) == 1, r.stderr


def _all_options():
    opts = {}
    for path, cmd, _ in _commands():
        opts[" ".join(path[1:])] = {o for p in cmd.params for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))}
    return opts


def test_every_option_the_readme_names_exists():
    readme = (REPO / "README.md").read_text()
    by_command = _all_options()
    everywhere = set().union(*by_command.values()) | {"--help", "--version", "--install-completion"}
    scripts = "".join(p.read_text() for folder in ("recipes", "scripts") for p in (REPO / folder).rglob("*.py"))
    scripts += "".join(p.read_text() for p in (REPO / "recipes").rglob("*.sh"))
    for span in re.findall(r"`(reallm [^`]*)`", readme):  # an option in `reallm CMD ...` must belong to CMD
        words = span.split()
        command = next((c for c in sorted(by_command, key=len, reverse=True) if c and words[1:1 + len(c.split())] == c.split()), None)
        for opt in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span):
            if command is not None:
                assert opt in by_command[command] | {"--help"}, (span, opt)
    for opt in set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", readme)):  # any other: a command's, or a recipe script's
        assert opt in everywhere or f'"{opt}"' in scripts or f"{opt} " in scripts or f"{opt}=" in scripts, opt


def test_readme_and_help_agree_on_the_claims_that_drifted():
    readme = (REPO / "README.md").read_text()
    assert "Every command takes `--model" not in readme
    assert "replaces the file unless `--append`" in readme and "Append to --output instead of replacing it" in _help(["listen"])
    transcribe = _help(["transcribe"])
    assert "WAV on stdin" not in transcribe and "a whole audio file on stdin" in transcribe
    for code in ("`0`", "`1`", "`2`", "`130`"):
        assert code in readme.split("**Exit status**")[1][:900]
    page = (REPO / "man" / "reallm-transcribe.1").read_text()
    assert ".SH EXIT STATUS" in page and "\\fB130\\fR" in page and ".SH OUTPUT FORMATS" in page

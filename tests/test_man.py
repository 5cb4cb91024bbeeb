"""Man pages: the committed pages match what scripts/gen_man.py makes from the CLI now, and are valid roff."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _gen_man():
    spec = importlib.util.spec_from_file_location("gen_man", REPO / "scripts" / "gen_man.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_man = _gen_man()


def test_committed_pages_match_the_cli():
    problems = gen_man.check(REPO / "man")
    assert not problems, "man pages drifted from the CLI: " + "; ".join(problems) + " — run: python scripts/gen_man.py"


def test_every_command_and_option_is_documented():
    import typer

    from reallm_cli.cli.app import app

    pages = gen_man.generate()
    root = typer.main.get_command(app)
    ctx = root.context_class(root, info_name="reallm")
    for name in root.list_commands(ctx):
        cmd = root.get_command(ctx, name)
        page = pages[f"reallm-{name}.1"]
        assert f"\\fB{name}\\fR" in pages["reallm.1"]
        for param in cmd.params:
            for opt in param.opts if param.param_type_name == "option" and not param.hidden else []:
                assert gen_man.roff_escape(opt) in page, (name, opt)


def test_roff_escaping():
    assert gen_man.roff_escape(".hidden\n'quote\nback\\slash -x") == "\\&.hidden\n\\&'quote\nback\\eslash \\-x"


def test_check_reports_drift(tmp_path):
    gen_man.write(tmp_path)
    assert gen_man.check(tmp_path) == []
    page = tmp_path / "reallm-listen.1"
    page.write_text(page.read_text().replace("duration", "dur"))
    (tmp_path / "reallm-gone.1").write_text("x")
    problems = gen_man.check(tmp_path)
    assert any("outdated" in p and "reallm-listen.1" in p for p in problems)
    assert any("stale" in p and "reallm-gone.1" in p for p in problems)


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff not installed")
def test_pages_are_valid_roff(tmp_path):
    for name, text in gen_man.generate().items():
        path = tmp_path / name
        path.write_text(text)
        proc = subprocess.run(["groff", "-man", "-ww", "-z", str(path)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0 and proc.stderr == "", (name, proc.stderr)

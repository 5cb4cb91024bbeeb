"""``reallm models``: the model registry and what is available on this machine."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def models_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List known models: name, size, licence, and whether each is embedded, cached or not downloaded."""
    from rich.console import Console
    from rich.table import Table

    from reallm_cli.weights import human_size, model_statuses, models_dir

    statuses = model_statuses()
    if as_json:
        rows = [
            {
                "name": s.info.name,
                "status": s.where,
                "path": str(s.path) if s.path else None,
                "size_bytes": s.path.stat().st_size if s.path else s.info.size_bytes,
                "sha256": s.info.sha256,
                "license": s.info.license,
                "description": s.info.description,
                "urls": list(s.info.urls),
            }
            for s in statuses
        ]
        typer.echo(json.dumps(rows, indent=1))
        return
    table = Table(title=None, show_lines=False)
    for col in ("name", "status", "size", "licence", "description"):
        table.add_column(col, overflow="fold")
    labels = {"embedded": "[green]embedded[/]", "cache": "[green]downloaded[/]", "missing": "[yellow]not downloaded[/]"}
    for s in statuses:
        size = s.path.stat().st_size if s.path else s.info.size_bytes
        label = "[red]missing (reinstall)[/]" if s.where == "missing" and s.info.embedded else labels[s.where]
        table.add_row(s.info.name, label, human_size(size), s.info.license, s.info.description)
    out = Console()
    out.print(table)
    err = Console(stderr=True)
    err.print(f"cache: {models_dir()}  (set REALLM_HOME to move it; `reallm download NAME` fetches a model)", style="dim", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)

"""Files that follow from the step map: dvc.yaml and the lineage picture."""

from __future__ import annotations

from pathlib import Path

import typer

from vimi.cli.common import (
    app,
)
from vimi.io.files import write_text


def _write_generated(out: Path, text: str, check: bool, how: str) -> None:
    if check:
        if not out.is_file() or out.read_text() != text:
            typer.echo(f"{out} is not what the step map gives: run `{how}`.", err=True)
            raise typer.Exit(1)
        typer.echo(f"{out} is current.")
        return
    write_text(out, text)
    typer.echo(f"Wrote {out}.")


CheckOption = typer.Option(
    False, "--check", help="Write nothing; exit 1 when the file differs from what the step map gives."
)


@app.command("dvc-yaml")
def dvc_yaml_cmd(
    out: Path = typer.Option(Path("dvc.yaml"), "--out", help="Where to write it."), check: bool = CheckOption
) -> None:
    """dvc.yaml from the step map (vimi/steps.py): one stage per step, named like its Dagster asset."""
    from vimi.steps import dvc_yaml

    _write_generated(out, dvc_yaml(), check, "vimi dvc-yaml")


@app.command("lineage-svg")
def lineage_svg_cmd(
    out: Path = typer.Option(Path("docs/lineage.svg"), "--out", help="Where to write it."), check: bool = CheckOption
) -> None:
    """The lineage graph as a picture (docs/lineage.svg), from the step map."""
    from vimi.steps import lineage_svg

    _write_generated(out, lineage_svg(), check, "vimi lineage-svg")

"""The `vimi` application, its command groups and the helpers every area of the command line shares.

Commands import their step's modules inside the function: `vimi --help` then loads no torch, MLflow or
Great Expectations (measured: docs/operations.md, "Imports inside functions")."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.console import Console

app = typer.Typer(
    help="ViMi: retrieval-augmented, multimodal-instruction video generation as a pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
world_app = typer.Typer(help="SpriteWorld, the built-in synthetic world with ground truth.", no_args_is_help=True)
memory_app = typer.Typer(help="The image-text memory (data/memory.lance).", no_args_is_help=True)
videos_app = typer.Typer(help="The video corpus (data/videos.lance, data/eval_videos.lance).", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks: print JSON figures and write them to benchmarks/.", no_args_is_help=True)
index_app = typer.Typer(help="The BM25 index over the memory's captions (data/bm25/).", no_args_is_help=True)
app.add_typer(world_app, name="world")
app.add_typer(memory_app, name="memory")
app.add_typer(videos_app, name="videos")
app.add_typer(index_app, name="index")
instructions_app = typer.Typer(
    help="The stage-2 instruction dataset (data/instructions.lance): subject-driven "
    "generation, video prediction and text-to-video samples.",
    no_args_is_help=True,
)
app.add_typer(instructions_app, name="instructions")
train_app = typer.Typer(
    help="Training: image-encoder alignment, stage 1, stage 2 (MLflow-tracked).", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")
app.add_typer(train_app, name="train")

out_console = Console()
err_console = Console(stderr=True)

ProfileOption = typer.Option(
    None, "--profile", "-p", help="Profile from params.yaml: tiny, small or paper (default: params.yaml's `profile`)."
)
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON instead of a summary.")


def _settings(profile: str | None):
    from vimi.config import Settings

    return Settings.load(profile=profile)


def _step_settings(step: str, profile: str | None):
    """The settings a pipeline step sees (vimi.steps.Step.scope): the same view in both drivers."""
    from vimi.steps import STEP

    return STEP[step].scope(_settings(profile))


def _suite_settings(suite: str, profile: str | None):
    from vimi.steps import suite_step

    return suite_step(suite).scope(_settings(profile))


def _emit(data: Any, as_json: bool, human: str, markup: bool = True) -> None:
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        out_console.print(human, soft_wrap=True, markup=markup, highlight=False)


def _dataset_line(name: str, meta: dict[str, Any]) -> str:
    line = f"[bold]{name}[/]: {meta['rows']} rows → {meta['path']} (Lance version {meta['version']})"
    if meta.get("quarantined"):
        line += "; quarantined " + ", ".join(f"{k} {v}" for k, v in meta["quarantined"].items())
    return line

"""The run report, reports/index.html: one self-contained page (images inlined, no scripts, no links
out) a person opens after a run: datasets, retrieved examples (a caption beside the images it
retrieved), sample videos of each task, loss curves, metrics, the registry and the ablation."""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Any

from vimi.config import Settings
from vimi.io import lance_io
from vimi.io.files import write_text

CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f4f4f4}
.gif{image-rendering:pixelated;border:1px solid #ccc}.doc{display:inline-block;margin:0 8px 6px 0;width:150px;
font-size:12px}.doc img{width:96px;height:96px;image-rendering:pixelated}.muted{color:#777}"""


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "<p class=muted>none</p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _gif(path: Path, title: str, scale: int = 3) -> str:
    from PIL import Image

    with Image.open(path) as img:
        width, height = img.size
    return (
        f'<figure><img class=gif src="{_data_uri(path.read_bytes(), "image/gif")}" width={width * scale} '
        f'height={height * scale} alt="{html.escape(title)}"><figcaption>{html.escape(title)}</figcaption></figure>'
    )


def loss_curves_png(curves: dict[str, Path]) -> bytes | None:
    """One PNG with the loss (log scale) of every training that shipped a loss.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    series = {}
    for name, path in curves.items():
        lines = path.read_text().splitlines()[1:]
        if lines:
            data = np.array([[float(x) for x in line.split(",")[:2]] for line in lines])
            series[name] = data
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    for name, data in series.items():
        ax.plot(data[:, 0], data[:, 1], label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _retrieved_examples(settings: Settings, n: int = 4) -> str:
    from vimi.retrieval.augment import examples

    augmented = settings.path("augmented")
    if not lance_io.exists(augmented):
        return "<p class=muted>No augmented dataset yet.</p>"
    picks = examples(augmented, settings.path("memory"), n, with_images=True)
    if not picks:
        return "<p class=muted>The augmented dataset is empty.</p>"
    out = []
    for row in picks:
        cells = "".join(
            f'<span class=doc><img src="{_data_uri(d["image"], _mime(d["image"]))}" alt=""><br>'
            f"{html.escape(d['caption'])} <span class=muted>({d['score']:.2f})</span></span>"
            for d in row["docs"]
        )
        out.append(
            f"<tr><td><b>{html.escape(row['caption'])}</b><br><span class=muted>{html.escape(row['clip_id'])}"
            f" · {row['flag']}</span></td><td>{cells or '<span class=muted>no hit</span>'}</td></tr>"
        )
    return (
        "<table><tr><th>video caption (the query)</th><th>retrieved memory documents (BM25 score)</th></tr>"
        + "".join(out)
        + "</table>"
    )


def _mime(data: bytes) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _ablation_section(reports: Path) -> str:
    from vimi.evaluation.arms import ARMS, TABLE_METRICS

    found = sorted(reports.glob("ablation*.json"))
    if not found:
        return "<p class=muted>No ablation yet: <code>vimi ablation --profile small</code>.</p>"
    parts = []
    for path in found:
        state = json.loads(path.read_text())
        rows = [
            {"arm": label, **{name: state["results"][arm].get(key) for key, name in TABLE_METRICS}}
            for arm, label in ARMS.items()
            if arm in state.get("results", {})
        ]
        parts.append(
            f"<h3>{html.escape(path.name)}: profile {html.escape(str(state.get('profile')))}, seed "
            f"{html.escape(str(state.get('seed')))}</h3>" + _table(rows)
        )
    return "".join(parts)


def build_report(settings: Settings, out: Path | None = None, log_to_mlflow: bool = True) -> dict[str, Any]:
    """Write reports/index.html; log it to the stage-2 model's MLflow run when there is one."""
    from vimi.registry import git_commit
    from vimi.status import data_status

    start = time.perf_counter()
    reports = settings.root / "reports"
    out = out or reports / "index.html"
    status = data_status(settings)
    sections: list[tuple[str, str]] = []

    datasets = [{"dataset": name, **(meta or {"rows": None})} for name, meta in status["datasets"].items()]
    sections.append(("Datasets", _table(datasets, ["dataset", "rows", "version", "path", "quarantined"])))
    sections.append(("Retrieved examples", _retrieved_examples(settings)))

    samples = []
    for name, title in (
        ("stage2", "stage 2: subject-driven · video prediction · text-to-video (real above, generated below)"),
        ("stage1", "stage 1: retrieval-augmented samples (real above, generated below)"),
    ):
        gif = settings.model_path(name) / "samples" / "final.gif"
        if gif.is_file():
            samples.append(_gif(gif, title))
    grounding = reports / "grounding.gif"
    if grounding.is_file():
        samples.append(
            _gif(
                grounding,
                "unseen subjects (evaluation): the reference image · the clip generated with "
                "it · the same prompt and noise without it · the real clip",
            )
        )
    sections.append(("Sample videos", "".join(samples) or "<p class=muted>No trained model yet.</p>"))

    curves = {
        name: settings.model_path(name) / "loss.csv"
        for name in ("encoder", "stage1", "stage1-text-only", "stage2", "featurenet")
        if (settings.model_path(name) / "loss.csv").is_file()
    }
    png = loss_curves_png(curves)
    sections.append(
        (
            "Loss curves",
            f'<img src="{_data_uri(png, "image/png")}" alt="training loss">'
            if png
            else "<p class=muted>No training yet.</p>",
        )
    )
    models = [{"model": name, **(meta or {})} for name, meta in status["models"].items() if meta]
    sections.append(("Models", _table(models, ["model", "steps", "final_loss", "clips_per_s", "run_id", "path"])))

    metrics: dict = {}
    for name in ("metrics.json", "ucf101.json"):  # the SpriteWorld and the UCF101 step's sections
        if (reports / name).is_file():
            metrics.update(json.loads((reports / name).read_text()))
    sections.append(
        (
            "Metrics",
            "".join(
                f"<h3>{html.escape(bench)}</h3>" + _table([{"metric": k, "value": v} for k, v in figures.items()])
                for bench, figures in sorted(metrics.items())
            )
            or "<p class=muted>No evaluation yet.</p>",
        )
    )

    registry = status.get("registry") or {}
    versions = registry.get("versions") or []
    sections.append(
        (
            "Registry",
            (
                f"<p>Model <code>{html.escape(registry['name'])}</code>, aliases "
                f"{html.escape(json.dumps(registry.get('aliases', {})))}</p>"
                if versions
                else ""
            )
            + _table(versions, ["version", "aliases", "checks", "promotion", "metrics", "run_id"]),
        )
    )
    sections.append(("Ablation", _ablation_section(reports)))

    commit = git_commit(settings.root)
    body = "".join(f"<h2>{html.escape(title)}</h2>{content}" for title, content in sections)
    page = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>vimi run report</title>"
        f"<style>{CSS}</style></head><body><h1>vimi run report</h1><p class=muted>profile "
        f"{html.escape(settings.profile)} · data {html.escape(str(settings.data_dir))} · git {html.escape(commit)} · "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>{body}</body></html>\n"
    )
    write_text(out, page)

    result: dict[str, Any] = {
        "path": str(out),
        "bytes": out.stat().st_size,
        "sections": [t for t, _ in sections],
        "sample_videos": len(samples),
        "loss_curves": sorted(curves),
        "git_commit": commit,
    }
    stage2 = settings.model_path("stage2") / "training.json"
    run_id = json.loads(stage2.read_text()).get("run_id") if stage2.is_file() else None
    if log_to_mlflow and run_id:
        from mlflow.tracking import MlflowClient

        from vimi.tracking import tracking_uri, ui_link

        MlflowClient(tracking_uri(settings)).log_artifact(run_id, str(out), "report")
        result.update(mlflow_run_id=run_id, run_link=ui_link(settings, "vimi-stage2", run_id))
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result

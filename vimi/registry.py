"""The MLflow model registry (docs/training.md "The registry"): model `vimi-video-generator`, aliases not stages.

- A stage-2 run's pipeline is registered as a new version, tagged with where it came from (Lance
  versions of its data, the BM25 index, the git commit, the model it started from) and its key
  metrics, and checked (it loads and generates finite clips). It gets the alias `candidate`.
- `promote` moves `champion` to the candidate when the policy (`decide`) says so, and tags the
  candidate with the decision and its reason either way.
- `resolve_model` turns any MODEL a user may name — a pipeline directory, `runs:/<id>/<path>`,
  `models:/<name>@<alias>`, `models:/<name>/<version>` — into a local pipeline directory; registry
  and run artifacts are downloaded once into models/.cache/ (a version's content never changes).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vimi.config import Settings
from vimi.errors import VimiError
from vimi.tracking import tracking_uri

CANDIDATE, CHAMPION = "candidate", "champion"
CHECKS_TAG, CHECKS_DETAIL_TAG, PROMOTION_TAG = "vimi.checks", "vimi.checks.detail", "vimi.promotion"
METRIC_PREFIX = "vimi.metric."


def model_name(settings: Settings) -> str:
    return str(settings.params.get("registry", {}).get("model_name", "vimi-video-generator"))


def model_uri(settings: Settings, model: str) -> str:
    """MODEL as a model URI: `@alias` is shorthand for the configured registered model's alias
    (`@candidate` → models:/vimi-video-generator@candidate); anything else is returned as it is."""
    model = str(model).strip()
    if model.startswith("@"):
        return f"models:/{model_name(settings)}{model}"
    return model


def client(settings: Settings):
    """A client of the settings' store; the process-wide URIs are set too (download_artifacts and
    register_model read those)."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(settings)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@dataclass
class ResolvedModel:
    uri: str  # as the user named it
    path: Path  # the local ViMi pipeline directory
    name: str | None = None  # registered model name, version and the alias used, if any
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def pipeline_dir(root: Path, what: str) -> Path:
    """The ViMi pipeline directory: `root` itself, or inside a downloaded MLflow model where its
    MLmodel says the `pipeline` artifact lies (root or one level down, as runs:/ downloads nest)."""
    import yaml

    for folder in (root, *sorted(p for p in root.iterdir() if p.is_dir())) if root.is_dir() else ():
        if (folder / "model_index.json").is_file():
            return folder
        if (folder / "MLmodel").is_file():
            mlmodel = yaml.safe_load((folder / "MLmodel").read_text()) or {}
            artifacts = mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts") or {}
            path = folder / str((artifacts.get("pipeline") or {}).get("path", ""))
            if (path / "model_index.json").is_file():
                return path
    raise VimiError(
        f"{what} holds no ViMi pipeline (no model_index.json in {root}, nor an MLflow model "
        "with a `pipeline` artifact)."
    )


def _download(artifact_uri: str, dest: Path) -> Path:
    """Download once into dest (atomically: a temporary sibling renamed into place)."""
    import mlflow

    if dest.is_dir():
        return dest
    tmp = dest.with_name(f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(tmp))
        try:
            tmp.rename(dest)
        except OSError:  # another process finished the same download first
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _versions_line(versions: list) -> str:
    return ", ".join(sorted((str(v.version) for v in versions), key=int)) or "none"


def registry_version(settings: Settings, name: str, ref: str, by_alias: bool):
    """The ModelVersion of `name` at an alias or version number, or an error listing what exists."""
    from mlflow.exceptions import MlflowException

    c = client(settings)
    try:
        model = c.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in c.search_registered_models())
        raise VimiError(
            f"No registered model {name!r} in {tracking_uri(settings)}; registered models: "
            f"{', '.join(names) or 'none'}. Train and register one: vimi train stage2."
        ) from None
    versions = c.search_model_versions(f"name='{name}'")
    if by_alias:
        if ref not in model.aliases:
            aliases = ", ".join(f"@{a} (version {v})" for a, v in sorted(model.aliases.items())) or "none"
            raise VimiError(
                f"Model {name!r} has no alias @{ref}. Aliases: {aliases}; versions: {_versions_line(versions)}."
            )
        return c.get_model_version(name, str(model.aliases[ref]))
    if ref not in {str(v.version) for v in versions}:
        raise VimiError(
            f"Model {name!r} has no version {ref}. Versions: {_versions_line(versions)}; aliases: "
            f"{', '.join('@' + a for a in sorted(model.aliases)) or 'none'}."
        )
    return c.get_model_version(name, ref)


def resolve_model(settings: Settings, uri: str, base: Path | None = None) -> ResolvedModel:
    """A local pipeline directory for MODEL (see the module docstring). A relative directory is
    relative to `base` when given (params.yaml paths: the project), else to the working directory."""
    uri = model_uri(settings, uri)
    cache = settings.model_path(".cache")
    if uri.startswith("models:/"):
        rest = uri[len("models:/") :].strip("/")
        if "@" in rest:
            name, ref, by_alias = *rest.split("@", 1), True
        elif "/" in rest:
            name, ref, by_alias = *rest.rsplit("/", 1), False
        else:
            raise VimiError(f"{uri!r} names no version or alias: use models:/{rest}@champion or models:/{rest}/1.")
        if not ref:
            raise VimiError(f"{uri!r} names an empty alias or version.")
        mv = registry_version(settings, name, ref, by_alias)
        # Keyed by what the version points at too: a recreated store may reuse version numbers.
        key = hashlib.sha256(f"{mv.source}|{mv.run_id}".encode()).hexdigest()[:12]
        local = _download(f"models:/{name}/{mv.version}", cache / "models" / name / f"{mv.version}-{key}")
        return ResolvedModel(
            uri, pipeline_dir(local, uri), name, str(mv.version), ref if by_alias else None, mv.run_id, dict(mv.tags)
        )
    if uri.startswith("runs:/"):
        rest = uri[len("runs:/") :].strip("/")
        run_id, _, sub = rest.partition("/")
        from mlflow.exceptions import MlflowException

        try:
            client(settings).get_run(run_id)
        except MlflowException:
            raise VimiError(f"No MLflow run {run_id!r} in {tracking_uri(settings)}.") from None
        sub = sub or "pipeline"
        try:
            local = _download(f"runs:/{run_id}/{sub}", cache / "runs" / run_id / sub.replace("/", "__"))
        except MlflowException as exc:
            raise VimiError(f"Run {run_id} has no artifact {sub!r}: {str(exc).splitlines()[0]}") from None
        return ResolvedModel(uri, pipeline_dir(local, uri), run_id=run_id)
    path = Path(uri).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.exists():
        raise VimiError(
            f"Model {uri!r} is neither an existing pipeline directory ({path.resolve()}) nor a runs:/ or models:/ URI."
        )
    return ResolvedModel(uri, pipeline_dir(path.resolve(), uri))


def git_commit(root: Path) -> str:
    """HEAD of the project's repository, with `-dirty` when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def smoke_check(path: Path, num_frames: int) -> tuple[bool, str]:
    """The candidate's own check: it loads, and generates finite clips of the asked length and size
    from a text prompt (and, for a video-prediction model, starts its clip with the given frames)."""
    import numpy as np
    import torch

    from vimi.models.pipeline import load_pipeline

    try:
        pipe = load_pipeline(path)
        size = int(pipe.config.frame_size)
        generator = torch.Generator().manual_seed(0)
        out = pipe(
            "a check", num_frames=num_frames, num_inference_steps=2, generator=generator, output_type="pt"
        ).frames
        if tuple(out.shape) != (1, 3, num_frames, size, size) or not torch.isfinite(out).all():
            return False, f"text-to-video gave shape {tuple(out.shape)}, finite={bool(torch.isfinite(out).all())}"
        if pipe.predicts_video:
            given = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
            frames = pipe(
                "a check", num_frames=num_frames, context_frames=given, num_inference_steps=2, generator=generator
            ).frames
            if not np.array_equal(frames[0, 0], given[0]):
                return False, "video prediction does not start with the given frame"
    except Exception as exc:  # any failure is the check's finding, not a crash of registration
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return True, f"loads; generates finite {num_frames}-frame clips" + (
        "; video prediction keeps the given frames" if pipe.predicts_video else ""
    )


def register_pipeline(
    settings: Settings, model_uri: str, local_dir: Path, tags: dict[str, Any], metrics: dict[str, float]
) -> dict[str, Any]:
    """Register a logged pipeline (its `models:/m-…` or `runs:/…` URI; `local_dir` is the same pipeline,
    checked before registering) as a new version, tagged with lineage, metrics and the check's
    verdict; alias `candidate`."""
    import mlflow

    name = model_name(settings)
    c = client(settings)
    ok, detail = smoke_check(local_dir, int(settings.params.get("registry", {}).get("smoke_frames", 8)))
    all_tags = {
        **{k: str(v) for k, v in tags.items()},
        **{f"{METRIC_PREFIX}{k}": f"{float(v):.6g}" for k, v in metrics.items()},
        CHECKS_TAG: "passed" if ok else "failed",
        CHECKS_DETAIL_TAG: detail[:4000],
    }
    try:
        c.get_registered_model(name)
    except Exception:
        c.create_registered_model(
            name,
            description="ViMi: grounded video generation from multimodal "
            "instructions (subject-driven, video prediction, text-to-video).",
        )
    mv = mlflow.register_model(model_uri, name, tags=all_tags)
    c.set_registered_model_alias(name, CANDIDATE, mv.version)
    return {
        "name": name,
        "version": str(mv.version),
        "alias": CANDIDATE,
        "checks": all_tags[CHECKS_TAG],
        "checks_detail": detail,
        "uri": f"models:/{name}/{mv.version}",
    }


def metrics_of(tags: dict[str, str]) -> dict[str, float]:
    return {k[len(METRIC_PREFIX) :]: float(v) for k, v in tags.items() if k.startswith(METRIC_PREFIX)}


def lower_is_better(metric: str) -> bool:
    return metric.startswith("fvd") or metric.endswith("loss")


def decide(
    candidate_tags: dict[str, str],
    champion_tags: dict[str, str] | None,
    metric: str | None = "fvd_syn",
    margin: float = 0.0,
) -> tuple[bool, str]:
    """The promotion policy. A candidate becomes champion only when its checks passed; with a
    champion in place that was evaluated on `metric`, the candidate must be evaluated on it too and
    beat it by the relative `margin` (fvd*, *loss: lower is better; everything else higher). With no
    metric (none applies: the user's clips and no UCF101) the checks alone decide."""
    if candidate_tags.get(CHECKS_TAG) != "passed":
        return False, f"its checks did not pass ({candidate_tags.get(CHECKS_DETAIL_TAG, 'no checks recorded')})"
    if metric is None:
        return (
            True,
            "its checks passed; no metric applies (your own clips, UCF101 not configured), so the checks decide",
        )
    if champion_tags is None:
        return True, "its checks passed and there is no champion yet"
    theirs, ours = metrics_of(champion_tags).get(metric), metrics_of(candidate_tags).get(metric)
    if theirs is None:
        return True, f"its checks passed; the champion has no {metric} to compare with"
    if ours is None:
        return False, f"the champion has {metric} {theirs:.4g} and the candidate was not evaluated on it"
    if lower_is_better(metric):
        needed = theirs - abs(theirs) * margin
        better = ours < needed if margin > 0 else ours < theirs
    else:
        needed = theirs + abs(theirs) * margin
        better = ours > needed if margin > 0 else ours > theirs
    verdict = "beats" if better else "does not beat"
    return better, (
        f"its checks passed and its {metric} {ours:.4g} {verdict} the champion's {theirs:.4g}"
        + (f" by the margin {margin:.1%}" if margin > 0 else "")
    )


def promote(settings: Settings, version: str | None = None, metric: str | None = "") -> dict[str, Any]:
    """Apply the policy to the candidate (or the given version): move `champion` or say why not. METRIC
    overrides registry.promotion_metric (None: the checks alone decide)."""
    name = model_name(settings)
    c = client(settings)
    candidate = (
        registry_version(settings, name, version, False)
        if version
        else registry_version(settings, name, CANDIDATE, True)
    )
    aliases = c.get_registered_model(name).aliases
    champion_version = aliases.get(CHAMPION)
    result = {
        "name": name,
        "candidate": str(candidate.version),
        "previous_champion": None if champion_version is None else str(champion_version),
    }
    if champion_version is not None and str(champion_version) == str(candidate.version):
        return result | {
            "promoted": False,
            "champion": str(champion_version),
            "reason": f"version {candidate.version} is already the champion",
        }
    champion = None if champion_version is None else c.get_model_version(name, str(champion_version))
    policy = settings.params.get("registry", {})
    ok, reason = decide(
        dict(candidate.tags),
        None if champion is None else dict(champion.tags),
        str(policy["promotion_metric"]) if metric == "" else metric,
        float(policy["promotion_margin"]),
    )
    c.set_model_version_tag(
        name, candidate.version, PROMOTION_TAG, ("promoted: " if ok else "kept as candidate: ") + reason
    )
    if ok:
        c.set_registered_model_alias(name, CHAMPION, candidate.version)
    return result | {
        "promoted": ok,
        "metric": str(policy["promotion_metric"]) if metric == "" else metric,
        "reason": reason,
        "champion": str(candidate.version) if ok else result["previous_champion"],
    }


def describe(settings: Settings) -> dict[str, Any] | None:
    """Versions of the registered model with their aliases and key tags (None when none is registered)."""
    from mlflow.exceptions import MlflowException

    uri = tracking_uri(settings)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():
        return None  # no store yet: nothing registered (and `vimi status` creates none)
    name = model_name(settings)
    c = client(settings)
    try:
        model = c.get_registered_model(name)
    except MlflowException:
        return None
    by_version: dict[str, list[str]] = {}
    for alias, v in model.aliases.items():
        by_version.setdefault(str(v), []).append(alias)
    versions = []
    for mv in sorted(c.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
        versions.append(
            {
                "version": str(mv.version),
                "aliases": sorted(by_version.get(str(mv.version), [])),
                "run_id": mv.run_id,
                "checks": mv.tags.get(CHECKS_TAG),
                "promotion": mv.tags.get(PROMOTION_TAG),
                "metrics": metrics_of(dict(mv.tags)),
            }
        )
    return {"name": name, "aliases": {a: str(v) for a, v in model.aliases.items()}, "versions": versions}

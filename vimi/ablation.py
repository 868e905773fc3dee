"""`vimi ablation`: the paper's ablation on SpriteWorld, everything else equal.

Three arms share one world, one memory and index, one aligned image encoder, one feature network,
one seed, one training length per stage, and the same evaluation clips and sampler seeds:

- `text_only`: stage 1 on the caption alone (evaluated on captions: it never saw an image);
- `retrieval`: retrieval-augmented stage 1 (evaluated on the multimodal instructions);
- `retrieval_stage2`: that stage-1 model instruction-tuned by stage 2 (the instructions again).

It works in its own directory (`ablation/<profile>/`: data, models, per-arm results), so the main
pipeline's data, models and registry are untouched (stage 2 is not registered). Every run goes to
the MLflow experiment `vimi-ablation` as a child of one parent run, which holds the table. A step
whose output is there is not redone, so a killed ablation picks up where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from vimi.config import Settings, flatten, load_params
from vimi.errors import VimiError
from vimi.evaluation.arms import ARMS, TABLE_METRICS, comparisons
from vimi.io import lance_io
from vimi.io.files import write_json, write_text

EXPERIMENT = "vimi-ablation"


def params_digest(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ablation_settings(base: Settings, profile: str, seed: int | None, workdir: Path | None) -> Settings:
    params = load_params(base.params_path, profile)
    if seed is not None:
        params["seed"] = int(seed)
    params["data"] = {}  # SpriteWorld: the ablation measures grounding against its ground truth
    work = Path(workdir) if workdir else base.root / "ablation" / profile
    return Settings(
        params=params,
        root=base.root,
        data_dir=work / "data",
        params_path=base.params_path,
        models_dir=work / "models",
        experiment=EXPERIMENT,
    )


def _start_parent(settings: Settings, run_id: str | None) -> str:
    """The parent run (created once, reopened when the ablation resumes)."""
    from mlflow.tracking import MlflowClient

    from vimi.tracking import experiment_id, tracking_uri

    client = MlflowClient(tracking_uri(settings))
    if run_id:
        try:
            client.update_run(run_id, status="RUNNING")
            return run_id
        except Exception:  # the tracking store was reset since: start a new parent
            pass
    run = client.create_run(
        experiment_id(settings, EXPERIMENT),
        run_name=f"ablation-{settings.profile}-seed{settings.seed}",
        tags={"vimi.ablation": "parent", "vimi.profile": settings.profile, "vimi.seed": str(settings.seed)},
    )
    flat = flatten({k: v for k, v in settings.params.items() if k != "profiles"})
    for key, value in flat.items():
        client.log_param(run.info.run_id, key, str(value)[:6000])
    return run.info.run_id


def run_ablation(
    base: Settings,
    profile: str | None = None,
    seed: int | None = None,
    workdir: Path | None = None,
    fresh: bool = False,
    report: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train and evaluate the three arms; write `report` (default reports/ablation.md, + .json beside it)."""
    from vimi.locks import step_lock

    settings = ablation_settings(base, profile or base.profile, seed, workdir)
    work = settings.data_dir.parent
    with step_lock(work.parent / ".locks", f"ablation-{work.name}"):
        return _run(settings, base, work, fresh, report, log)


def _run(
    settings: Settings, base: Settings, work: Path, fresh: bool, report: Path | None, log: Callable[[str], None]
) -> dict[str, Any]:
    from vimi import pipeline
    from vimi.evaluation.evaluate import evaluate_spriteworld

    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    state_file = work / "ablation.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    digest = params_digest(settings.params)
    if state.get("params_digest") not in (None, digest):
        raise VimiError(
            f"{work} holds an ablation of other parameters (params.yaml or the seed changed since); "
            "pass --fresh to start it over, or --workdir to keep both."
        )
    state.update(params_digest=digest, profile=settings.profile, seed=settings.seed)
    state.setdefault("steps", {})
    state.setdefault("results", {})
    state["parent_run_id"] = _start_parent(settings, state.get("parent_run_id"))
    settings.parent_run_id = state["parent_run_id"]

    def save_state() -> None:
        write_json(state_file, state)

    def step(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        if name in state["steps"]:
            log(f"ablation: {name}: done before, kept")
            return state["steps"][name]
        log(f"ablation: {name} …")
        begin = time.perf_counter()
        meta = fn()
        state["steps"][name] = {
            "seconds": round(time.perf_counter() - begin, 1),
            **{k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool))},
        }
        save_state()
        log(f"ablation: {name}: {state['steps'][name]['seconds']:.0f} s")
        return state["steps"][name]

    save_state()
    status = "FAILED"
    try:
        step("world", lambda: _world(settings))
        step("bm25_index", lambda: pipeline.build_bm25_index(settings))
        step("augment", lambda: pipeline.augment_videos(settings))
        step("retrieval_gate", lambda: _gate(pipeline.validate_dataset(settings, "retrieval")))
        step("instructions", lambda: pipeline.build_instruction_dataset(settings))
        step("image_encoder", lambda: pipeline.align_image_encoder(settings, "auto"))
        step("feature_network", lambda: pipeline.train_feature_network(settings, "auto"))
        trained = {
            "text_only": lambda: pipeline.train_stage1(settings, text_only=True),
            "retrieval": lambda: pipeline.train_stage1(settings),
            "retrieval_stage2": lambda: pipeline.train_stage2(
                settings, init=str(settings.model_path("stage1")), register=False
            ),
        }
        models = {"text_only": "stage1-text-only", "retrieval": "stage1", "retrieval_stage2": "stage2"}
        for arm, train in trained.items():
            training = step(f"train_{arm}", train)
            if arm not in state["results"]:
                log(f"ablation: evaluating {arm} …")
                result = evaluate_spriteworld(
                    settings,
                    str(settings.model_path(models[arm])),
                    seed=settings.seed,
                    prompt_mode="caption" if arm == "text_only" else "instruction",
                    with_per_clip=True,
                )
                state["results"][arm] = {k: v for k, v in result.items() if k != "model"} | {
                    "model": str(settings.model_path(models[arm])),
                    "final_loss": training.get("final_loss"),
                    "train_seconds": training.get("seconds"),
                    "train_run_id": training.get("run_id"),
                }
                save_state()
        state["comparisons"] = comparisons(state["results"])
        save_state()
        status = "FINISHED"
    finally:
        _finish_parent(settings, state, status)
    report = report or base.root / "reports" / "ablation.md"
    table = write_report(state, report)
    _log_report(settings, state, report)
    return {
        "profile": settings.profile,
        "seed": settings.seed,
        "workdir": str(work),
        "report": str(report),
        "parent_run_id": state["parent_run_id"],
        "results": state["results"],
        "steps": state["steps"],
        "table": table,
    }


def _world(settings: Settings) -> dict[str, Any]:
    """SpriteWorld for the profile; datasets already in the work directory (a world generated ahead with
    `VIMI_DATA_DIR=ablation/<profile>/data vimi world generate --profile <profile>`) are kept."""
    from vimi.pipeline import generate_world

    wanted = {"memory": "memory", "videos": "videos", "eval": "eval_videos"}
    parts = ("catalog",) + tuple(part for part, name in wanted.items() if not lance_io.exists(settings.path(name)))
    generate_world(settings, parts=parts)
    return {f"{name}_rows": lance_io.open_dataset(settings.path(name)).count_rows() for name in wanted.values()}


def _gate(report: Any) -> dict[str, Any]:
    if not report.success:
        raise VimiError(f"The ablation's augmented dataset fails the retrieval gate:\n{report.to_text()}")
    return {"passed": True, **{k: v for k, v in report.figures.items() if isinstance(v, (int, float))}}


def _finish_parent(settings: Settings, state: dict[str, Any], status: str) -> None:
    from mlflow.tracking import MlflowClient

    from vimi.tracking import tracking_uri

    client = MlflowClient(tracking_uri(settings))
    for arm, result in state["results"].items():
        for key, value in result.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
                client.log_metric(state["parent_run_id"], f"{arm}.{key}", float(value))
    client.set_terminated(state["parent_run_id"], status=status)


def _log_report(settings: Settings, state: dict[str, Any], report: Path) -> None:
    from mlflow.tracking import MlflowClient

    from vimi.tracking import tracking_uri

    client = MlflowClient(tracking_uri(settings))
    client.log_artifact(state["parent_run_id"], str(report))
    client.log_artifact(state["parent_run_id"], str(report.with_suffix(".json")))


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "—"
    return f"{value:.3f}" if abs(float(value)) < 100 else f"{value:.1f}"


def write_report(state: dict[str, Any], report: Path) -> str:
    """reports/ablation.md (the table and how it was made) and reports/ablation.json (everything)."""
    rows = ["| arm | " + " | ".join(label for _, label in TABLE_METRICS) + " |", "|---|" + "---|" * len(TABLE_METRICS)]
    for arm, label in ARMS.items():
        result = state["results"].get(arm)
        if result is not None:
            rows.append(f"| {label} | " + " | ".join(_cell(result.get(key)) for key, _ in TABLE_METRICS) + " |")
    ceiling = next(iter(state["results"].values()), {})
    rows.append(
        "| real clips (ceiling) | "
        + " | ".join(_cell(ceiling[f"{key}_real"]) if f"{key}_real" in ceiling else "—" for key, _ in TABLE_METRICS)
        + " |"
    )
    table = "\n".join(rows)
    compared = state.get("comparisons") or {}
    if compared:
        table += (
            "\n\n| paired difference (same clips) | arms | difference | 95% bootstrap interval | clips |\n"
            "|---|---|---|---|---|\n"
            + "\n".join(
                f"| {name} | {ARMS[c['better']]} − {ARMS[c['baseline']]} | {c['difference']:+.3f} | "
                f"[{c['low']:+.3f}, {c['high']:+.3f}] | {c['clips']} |"
                for name, c in compared.items()
            )
        )
    any_result = ceiling
    steps = state["steps"]
    lines = [
        f"# Ablation on SpriteWorld `{state['profile']}`, seed {state['seed']}",
        "",
        table,
        "",
        f"Evaluation: {any_result.get('videos', {})} generated clips per task from the evaluation split's "
        f"instructions, {any_result.get('steps', '?')} DDIM steps, sampler seed {any_result.get('seed', '?')}; "
        "the same clips and seeds for every arm. The text-only arm is prompted with each clip's caption; the "
        "others with the instruction (reference images, given frames as images). Only the stage-2 model reads "
        "the given frames as denoiser input, so only its predicted clips start with them; PSNR/SSIM are over "
        "the predicted frames alone.",
        "",
        "Steps (seconds): " + ", ".join(f"{name} {meta.get('seconds', '?')}" for name, meta in steps.items()),
        "",
        f"MLflow: experiment `{EXPERIMENT}`, parent run `{state['parent_run_id']}`.",
    ]
    write_text(report, "\n".join(lines) + "\n")
    write_json(report.with_suffix(".json"), state)
    return table

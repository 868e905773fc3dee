"""`vimi ablation` on micro SpriteWorld: three arms trained and evaluated with everything else equal,
the table in reports/ablation.md, one MLflow parent run with the arms' runs under it, and nothing of
the main pipeline touched (its data, models, registry)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_params
from vimi.config import Settings
from vimi.errors import VimiError


@pytest.mark.slow
def test_ablation_trains_and_evaluates_three_arms(project):
    from mlflow import MlflowClient

    from vimi.ablation import ARMS, EXPERIMENT, run_ablation

    base = Settings.load()
    report = project / "reports" / "ablation.md"
    result = run_ablation(base, seed=3, log=lambda line: None)
    assert result["seed"] == 3 and result["report"] == str(report)
    assert set(result["results"]) == set(ARMS)
    text = report.read_text()
    assert "seed 3" in text and all(f"| {label} |" in text for label in ARMS.values())
    for arm, r in result["results"].items():
        assert r["videos"] == {"prediction": 3, "subject": 3, "text_to_video": 3}, arm
        assert r["fvd_syn"] >= 0 and 0 <= r["motion_accuracy"] <= 1 and r["final_loss"] > 0
        assert r["seed"] == 3 and r["steps"] == 2
    # Each arm read what it was trained on; only the stage-2 model reads given frames.
    assert result["results"]["text_only"]["prompt_mode"] == "caption"
    assert result["results"]["retrieval"]["prompt_mode"] == "instruction"
    assert [result["results"][a]["frame_conditioning"] for a in ARMS] == [False, False, True]
    # The same real clips for every arm: their ceiling (the feature network on real clips) is identical.
    ceilings = {r["motion_accuracy_real"] for r in result["results"].values()}
    assert len(ceilings) == 1

    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.info.experiment_id == exp.experiment_id
    assert parent.data.params["seed"] == "3"
    assert parent.data.metrics["retrieval_stage2.fvd_syn"] == pytest.approx(result["results"]["retrieval_stage2"]["fvd_syn"])
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    names = sorted(r.info.run_name for r in children)
    # align, feature network, text-only stage 1, stage 1, stage 2, and three evaluations
    assert len(children) == 8, names
    assert {"stage1", "stage1-text-only", "stage2"} <= set(names)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"ablation.md", "ablation.json"}
    # The main pipeline is untouched: no data or models of its own, nothing registered.
    assert not (project / "data").exists() and not (project / "models").exists()
    assert client.search_registered_models() == []
    assert (project / "ablation" / "tiny" / "models" / "stage2" / "model_index.json").is_file()

    # Rerun: every step is kept (nothing trained again), the same table.
    again = run_ablation(base, seed=3, log=lambda line: None)
    assert again["results"] == result["results"] and again["parent_run_id"] == result["parent_run_id"]
    assert len(client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")) == 8

    # Other parameters in the same work directory: refused, with the way out named.
    write_params(project, stage1={"steps": 7})
    with pytest.raises(VimiError, match="other parameters.*--fresh"):
        run_ablation(Settings.load(), seed=3, log=lambda line: None)
    state = json.loads((project / "ablation" / "tiny" / "ablation.json").read_text())
    assert set(state["results"]) == set(ARMS)

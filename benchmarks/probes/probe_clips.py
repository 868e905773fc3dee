"""The clips the sampling probes measure, with their SpriteWorld truth: the first training clips (and
their retrieved documents) and a spread of the evaluation split's subject instructions."""

from vimi.data.clips import AugmentedClips, InstructionClips
from vimi.io import lance_io

ATTRIBUTES = ["id", "scene", "color1", "color2", "shape", "pattern", "action"]


def training_clips(settings, pipe, n: int):
    """The first n training clips (a ClipBatch with documents) and each one's truth row."""
    T, S = pipe.config.num_frames, pipe.config.frame_size
    clips = AugmentedClips(settings.path("augmented"), settings.path("videos"), T, S, pipe.vision.config.image_size)
    batch = clips.__getitems__(list(range(n)))
    videos = lance_io.open_dataset(settings.path("videos"), "video corpus")
    truth = {r["id"]: r for r in videos.to_table(columns=ATTRIBUTES).to_pylist()}
    return batch, [truth[i] for i in batch.clip_ids]


def subject_instructions(settings, pipe, n: int = 64):
    """Up to n subject instructions spread over the evaluation split (seen and unseen subjects): the
    InstructionBatch, each one's truth row and its subject split."""
    T, S = pipe.config.num_frames, pipe.config.frame_size
    ev = InstructionClips(settings.path("instructions"), "eval", T, S, pipe.vision.config.image_size)
    rows = [i for i, r in enumerate(ev.rows) if r["task"] == "subject"]
    rows = rows[:: max(1, len(rows) // n)][:n]
    eval_videos = lance_io.open_dataset(settings.path("eval_videos"), "evaluation clips")
    truth = {r["id"]: r for r in eval_videos.to_table(columns=ATTRIBUTES + ["subject_split"]).to_pylist()}
    targets = [truth[ev.rows[i]["clip_id"]] for i in rows]
    return ev.__getitems__(rows), targets, [t["subject_split"] for t in targets]

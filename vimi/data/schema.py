"""The video corpus' Lance schema (data/videos.lance, data/eval_videos.lance). Documented in docs/data.md."""

import pyarrow as pa

from vimi.io.video import RAW_FORMAT  # noqa: F401  (the raw frame format is the video column's too)
from vimi.memory.schema import POSE, SUBJECT_TRUTH_FIELDS

VIDEO_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("video", pa.large_binary(), nullable=False),  # encoded container bytes (mp4, ...) or raw frames
        pa.field("video_format", pa.string(), nullable=False),  # "raw_rgb24", or the container: "mp4", "webm", ...
        pa.field("caption", pa.string(), nullable=False),
        pa.field("num_frames", pa.int32(), nullable=False),
        pa.field("fps", pa.float32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("meta", pa.string(), nullable=False),  # JSON object
        # Ground truth, where known (SpriteWorld); null for real data.
        pa.field("split", pa.string()),  # train | eval
        *SUBJECT_TRUTH_FIELDS,
        pa.field("action", pa.string()),
        pa.field("trajectory", pa.list_(POSE)),  # one pose per frame
    ]
)

GROUND_TRUTH_COLUMNS = VIDEO_SCHEMA.names[VIDEO_SCHEMA.get_field_index("meta") + 1 :]

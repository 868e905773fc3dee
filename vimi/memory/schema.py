"""The image-text memory's Lance schema (data/memory.lance). Documented in docs/data.md."""

import pyarrow as pa

POSE = pa.list_(pa.float32(), 4)  # x, y, scale, angle (see vimi.world.render)

# Ground truth of a SpriteWorld subject in a scene; null for real data. Shared by memory and videos.
SUBJECT_TRUTH_FIELDS = [
    pa.field("subject_id", pa.string()),
    pa.field("subject_name", pa.string()),
    pa.field("shape", pa.string()),
    pa.field("color1", pa.string()),
    pa.field("color2", pa.string()),
    pa.field("pattern", pa.string()),
    pa.field("scene", pa.string()),
    pa.field("subject_split", pa.string()),  # seen | unseen
]

MEMORY_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # unique
        pa.field("image", pa.large_binary(), nullable=False),  # encoded PNG / JPEG / WebP bytes, as given
        pa.field("caption", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # "spriteworld", "webdataset:<shard>", "parquet:<file>"
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("meta", pa.string(), nullable=False),  # JSON object: anything else the source had
        # Ground truth, where known (SpriteWorld); null for real data.
        pa.field("doc_type", pa.string()),  # subject | anonymous | scene
        *SUBJECT_TRUTH_FIELDS,
        pa.field("pose", POSE),
    ]
)

GROUND_TRUTH_COLUMNS = MEMORY_SCHEMA.names[MEMORY_SCHEMA.get_field_index("meta") + 1 :]

"""The image-text memory: schema, build (SpriteWorld or configured sources), ingest adapters."""

from vimi.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "ingest_memory": "vimi.memory.img2dataset",
        "MEMORY_SCHEMA": "vimi.memory.schema",
    },
)

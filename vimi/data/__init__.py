"""Video corpus (build, ingest, decoding) and the datasets over Lance that training reads."""

from vimi.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "ingest_videos": "vimi.data.webvid",
        "VIDEO_SCHEMA": "vimi.data.schema",
    },
)

"""Reading and writing, below every other layer: Lance datasets (`lance_io`), video containers and the raw
frame format (`video`), image checks (`images`), the ingest driver and its quarantine (`ingest`)."""

from vimi.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "decode_video": "vimi.io.video",
        "write_video": "vimi.io.video",
        "probe": "vimi.io.video",
        "encode_raw": "vimi.io.video",
    },
)

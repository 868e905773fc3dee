"""Training: one loop (accelerate + MLflow) shared by the image-encoder alignment, stage 1 and stage 2."""

from vimi.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "train": "vimi.train.loop",
        "LoopConfig": "vimi.train.loop",
    },
)

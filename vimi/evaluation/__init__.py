"""Evaluation: FVD (I3D), Inception Score, SpriteWorld grounding metrics, the UCF101 protocol."""

from vimi.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "evaluate_spriteworld": "vimi.evaluation.evaluate",
        "evaluate_ucf101": "vimi.evaluation.evaluate",
        "fvd_between": "vimi.evaluation.fvd",
        "frechet_distance": "vimi.evaluation.fvd",
        "load_i3d": "vimi.evaluation.i3d",
        "measure_clip": "vimi.evaluation.identity",
        "measure_clips": "vimi.evaluation.identity",
        "ClipIdentity": "vimi.evaluation.identity",
    },
)

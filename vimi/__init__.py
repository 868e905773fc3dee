"""vimi: grounding video generation through multi-modal instruction (ViMi), as a pipeline."""

__version__ = "0.1.0"

from vimi.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "Settings": "vimi.config",
        "load_params": "vimi.config",
        "STEPS": "vimi.steps",
        "generate_video": "vimi.generate",
    },
)

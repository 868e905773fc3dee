"""vimi: grounding video generation through multi-modal instruction (ViMi), as a pipeline."""

__version__ = "0.1.0"

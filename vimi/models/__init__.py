"""Models: the multimodal encoder (image tokens in a language model), the video denoiser, ViMiPipeline."""

from vimi.exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "ViMiPipeline": "vimi.models.pipeline",
        "ViMiPipelineOutput": "vimi.models.pipeline",
        "load_pipeline": "vimi.models.pipeline",
        "save_videos": "vimi.models.pipeline",
        "MultimodalEncoder": "vimi.models.encoder",
        "interleave": "vimi.models.encoder",
        "FrameStackUNet": "vimi.models.denoiser",
        "build_denoiser": "vimi.models.denoiser",
        "ImageTokenizer": "vimi.models.vision",
        "load_vision": "vimi.models.vision",
    },
)

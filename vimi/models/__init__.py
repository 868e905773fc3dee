"""Models: the multimodal encoder (image tokens in a language model), the video denoiser, ViMiPipeline."""

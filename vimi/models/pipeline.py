"""ViMiPipeline: diffusers-style grounded video generation.

Components (each saved by its own library, safetensors): `tokenizer` and `language_model`
(all-MiniLM-L6-v2), `vision` (ImageTokenizer), `transformer` (the video denoiser) and `scheduler`
(DDIM for sampling). One `__call__` takes a prompt with `<image>` placeholders and its images, or an
interleaved list of strings and images, and returns frames. With `context_frames` (video
prediction, a stage-2 model) the first frames are given and the rest generated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from vimi.errors import VimiError
from vimi.io.files import recover_dir
from vimi.models.denoiser import condition_channels, denoise, frame_conditioning, reads_reference, reference_size
from vimi.models.encoder import MultimodalEncoder, Prompt, interleave, to_image_array


@dataclass
class ViMiPipelineOutput(BaseOutput):
    frames: np.ndarray  # B×T×H×W×3 uint8 (output_type="np") or B×3×T×H×W float in [-1, 1] ("pt")


# Bounds of one generation request that no model's config gives (the others are the model's: its clip
# length, its scheduler's timesteps, its prompt's token budget).
MAX_PROMPTS = 16  # rows of one served request
MAX_GUIDANCE = 100.0
MAX_PROMPT_CHARS = 10_000


def normalize_prompts(prompt: Any, images: Any = None) -> list[Prompt]:
    """One prompt or a batch, each either text with `<image>` placeholders (+ its images) or an
    interleaved list of strings and images → a batch of interleaved prompts."""
    if isinstance(prompt, str):
        return [interleave(prompt, images)]
    if isinstance(prompt, (list, tuple)):
        if prompt and all(isinstance(p, (list, tuple)) for p in prompt):  # batch of interleaved prompts
            if images is not None:
                raise VimiError("Pass images inside interleaved prompts, or use text prompts with `images`.")
            return [list(p) for p in prompt]
        if prompt and all(isinstance(p, str) for p in prompt):  # batch of text prompts
            per_prompt = images if images is not None else [None] * len(prompt)
            if len(per_prompt) != len(prompt):
                raise VimiError(f"{len(prompt)} prompts but {len(per_prompt)} image lists.")
            return [interleave(p, ims) for p, ims in zip(prompt, per_prompt)]
        if images is not None:
            raise VimiError("Pass images inside the interleaved prompt, or use a text prompt with `images`.")
        return [list(prompt)]  # one interleaved prompt
    raise VimiError(f"A prompt must be a string or a list, got {type(prompt).__name__}.")


class ViMiPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "language_model->vision->transformer"

    def __init__(
        self,
        tokenizer,
        language_model,
        vision,
        transformer,
        scheduler,
        num_frames: int = 8,
        frame_size: int = 32,
        max_tokens: int = 256,
        max_segment_tokens: int = 48,
        guidance_scale: float = 3.0,
        fps: float = 8.0,
    ):
        super().__init__()
        self.register_modules(
            tokenizer=tokenizer,
            language_model=language_model,
            vision=vision,
            transformer=transformer,
            scheduler=scheduler,
        )
        self.register_to_config(
            num_frames=num_frames,
            frame_size=frame_size,
            max_tokens=max_tokens,
            max_segment_tokens=max_segment_tokens,
            guidance_scale=guidance_scale,
            fps=fps,
        )

    @property
    def predicts_video(self) -> bool:
        """Whether the denoiser reads given frames (a stage-2 model trained for video prediction)."""
        return condition_channels(self.transformer) > 0

    @property
    def encoder(self) -> MultimodalEncoder:
        return MultimodalEncoder(
            self.tokenizer, self.language_model, self.vision, self.config.max_tokens, self.config.max_segment_tokens
        )

    @torch.no_grad()
    def encode(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        return self.encoder(prompts).hidden_states

    @property
    def max_images(self) -> int:
        """The most images one prompt can hold: its token budget over the tokens of one image."""
        return max(1, int(self.config.max_tokens) // self.vision.tokens_per_image)

    def check_request(self, prompts: list, num_frames: int, num_inference_steps: int, guidance_scale: float) -> None:
        """Every bound of a generation request, checked before any work (one sentence each): what a
        served request could otherwise turn into an out-of-memory or a hang."""
        steps_max = int(self.scheduler.config.num_train_timesteps)
        images_max = self.max_images
        if not 1 <= num_inference_steps <= steps_max:
            raise VimiError(f"num_inference_steps must be 1..{steps_max}, got {num_inference_steps}.")
        if not 1 <= num_frames <= int(self.config.num_frames):
            raise VimiError(
                f"num_frames must be 1..{self.config.num_frames} (this model's clip length), got {num_frames}."
            )
        if not (math.isfinite(guidance_scale) and 0 <= guidance_scale <= MAX_GUIDANCE):
            raise VimiError(f"guidance_scale must be a number in 0..{MAX_GUIDANCE:g}, got {guidance_scale}.")
        for i, parts in enumerate(prompts):
            count = sum(1 for part in parts if not isinstance(part, str))
            chars = sum(len(part) for part in parts if isinstance(part, str))
            if count > images_max:
                raise VimiError(f"Prompt {i} has {count} images; this model's prompt holds at most {images_max}.")
            if chars > MAX_PROMPT_CHARS:
                raise VimiError(f"Prompt {i} has {chars} characters; at most {MAX_PROMPT_CHARS} are read.")

    @torch.no_grad()
    def __call__(
        self,
        prompt: Any,
        images: Any = None,
        num_frames: int | None = None,
        context_frames: Any = None,
        num_inference_steps: int = 25,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        show_progress: bool = False,
    ):
        """Generate one clip per prompt. `context_frames`: the first frames of the clip to continue
        (m×H×W×3 uint8, or one such array — or None — per prompt); they are given to the denoiser,
        and the output starts with them (resized to the model's frame size). A denoiser of a fixed clip
        length (FrameStackUNet) generates that length; a shorter `num_frames` is its start."""
        prompts = normalize_prompts(prompt, images)
        num_frames = int(self.config.num_frames if num_frames is None else num_frames)
        size = int(self.config.frame_size)
        scale = float(self.config.guidance_scale if guidance_scale is None else guidance_scale)
        self.check_request(prompts, num_frames, num_inference_steps, scale)
        # A frame-stacked UNet generates its training length; a shorter clip is the start of one.
        fixed = getattr(self.transformer.config, "num_frames", None)
        if fixed is not None and num_frames > int(fixed):
            raise VimiError(f"This model generates clips of at most {fixed} frames, not {num_frames}.")
        wanted, num_frames = num_frames, int(fixed or num_frames)
        pt = getattr(self.transformer.config, "patch_size", None) or (1,)
        if num_frames % pt[0]:
            raise VimiError(
                f"num_frames must be a multiple of the denoiser's temporal patch ({pt[0]}), got {num_frames}."
            )
        device, dtype = self.transformer.device, self.transformer.dtype
        given, condition = self._given_frames(context_frames, len(prompts), num_frames, size, wanted)
        condition = None if condition is None else condition.to(device, dtype)
        context = self.encode(prompts).to(dtype)
        reference = canvas_reference(self.transformer, prompts, size)
        reference = None if reference is None else reference.to(device, dtype)
        use_cfg = scale > 1.0
        if use_cfg:  # the unconditional context: the empty prompt, as dropped in training
            uncond = self.encode([[]] * len(prompts)).to(dtype)
            length = max(context.shape[1], uncond.shape[1])
            context = torch.cat([_pad(uncond, length), _pad(context, length)])
            if reference is not None:  # the empty prompt has no reference
                reference = torch.cat([torch.zeros_like(reference), reference])
        shape = (len(prompts), 3, num_frames, size, size)
        sample = torch.randn(
            shape, generator=generator, device=generator.device if generator else "cpu", dtype=torch.float32
        ).to(device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        sample = sample * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps) if show_progress else self.scheduler.timesteps:
            model_in = torch.cat([sample, sample]) if use_cfg else sample
            model_in = self.scheduler.scale_model_input(model_in, t)
            timesteps = t.expand(model_in.shape[0]).to(device)
            cond_in = None if condition is None else (torch.cat([condition, condition]) if use_cfg else condition)
            pred = denoise(self.transformer, model_in.to(dtype), timesteps, context, cond_in, reference).float()
            if use_cfg:
                uncond_pred, cond_pred = pred.chunk(2)
                pred = uncond_pred + scale * (cond_pred - uncond_pred)
            sample = self.scheduler.step(pred, t, sample, generator=generator).prev_sample
        sample = sample.clamp(-1, 1)[:, :, :wanted]
        if given is not None:  # the given frames are the clip's start, as given
            for b, clip in enumerate(given):
                if clip is not None:
                    sample[b, :, : clip.shape[1]] = clip.to(sample.device)
        frames = to_uint8_frames(sample) if output_type == "np" else sample
        return ViMiPipelineOutput(frames=frames) if return_dict else (frames,)

    def _given_frames(self, context_frames: Any, batch: int, num_frames: int, size: int, wanted: int):
        """Per prompt, the given frames as 3×m×H×W in [-1, 1] (or None), and the denoiser's conditioning."""
        if context_frames is None:
            return None, None
        if not self.predicts_video:
            raise VimiError(
                "This model was not trained for video prediction (its denoiser reads no given frames, "
                "as a stage-1 model): use a stage-2 model for context frames."
            )
        if isinstance(context_frames, np.ndarray) and context_frames.ndim == 4:
            context_frames = [context_frames] * batch
        if len(context_frames) != batch:
            raise VimiError(f"{batch} prompts but {len(context_frames)} sets of context frames.")
        from vimi.models.encoder import to_image_array

        given, counts = [], []
        for clip in context_frames:
            if clip is None or len(clip) == 0:
                given.append(None)
                counts.append(0)
                continue
            if len(clip) >= wanted:
                raise VimiError(f"{len(clip)} context frames leave nothing to predict in a {wanted}-frame clip.")
            fitted = np.stack([to_image_array(np.asarray(f), size) for f in clip])
            given.append(to_model_frames(fitted[None])[0])
            counts.append(len(clip))
        frames = torch.zeros(batch, 3, num_frames, size, size)
        for b, clip in enumerate(given):
            if clip is not None:
                frames[b, :, : clip.shape[1]] = clip
        return given, frame_conditioning(frames, counts)


def canvas_reference(model, prompts: Sequence[Prompt], size: int) -> torch.Tensor | None:
    """What the denoiser's canvas reads of the prompts' reference images (`reference_pixels` at the
    side it wants, `reference_size`), or None for a denoiser whose canvas reads none; `size`: the clip's."""
    return reference_pixels(prompts, reference_size(model, size)) if reads_reference(model) else None


def reference_pixels(prompts: Sequence[Prompt], size: int) -> torch.Tensor:
    """Each prompt's first image (the top retrieved document's, a subject instruction's reference) as
    size×size RGB in [-1, 1] and a channel of ones, all zeros for a prompt without one: B×4×size×size,
    what a canvas with `canvas_reference` copies from."""
    out = torch.zeros(len(prompts), 4, size, size)
    for i, prompt in enumerate(prompts):
        image = next((item for item in prompt if not isinstance(item, str)), None)
        if image is not None:
            pixels = torch.from_numpy(to_image_array(image, size).copy()).permute(2, 0, 1).float()
            out[i, :3] = pixels.div(127.5).sub(1.0)
            out[i, 3] = 1.0
    return out


def _pad(context: torch.Tensor, length: int) -> torch.Tensor:
    return torch.nn.functional.pad(context, (0, 0, 0, length - context.shape[1]))


def to_uint8_frames(sample: torch.Tensor) -> np.ndarray:
    """B×3×T×H×W in [-1, 1] → B×T×H×W×3 uint8."""
    return ((sample.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


def to_model_frames(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """B×T×H×W×3 uint8 → B×3×T×H×W float in [-1, 1]."""
    return torch.as_tensor(frames).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1.0)


def save_videos(
    frames: np.ndarray, out: str | Path, fps: float = 8.0, formats: Sequence[str] = ("mp4", "gif"), grid: bool = False
) -> list[Path]:
    """Write generated frames (B×T×H×W×3 or T×H×W×3) as MP4 and/or GIF; `grid` tiles a batch side
    by side into one video. Returns the paths written."""
    from vimi.io.video import write_video

    frames = np.asarray(frames)
    if frames.ndim == 4:
        frames = frames[None]
    out = Path(out)
    stem = out.with_suffix("") if out.suffix else out
    if grid:
        frames = np.concatenate(list(frames), axis=2)[None]
    paths = []
    for i, clip in enumerate(frames):
        base = stem if len(frames) == 1 else stem.with_name(f"{stem.name}-{i}")
        for fmt in formats:
            paths.append(write_video(clip, base.with_suffix(f".{fmt}"), fps=fps))
    return paths


def load_pipeline(path: str | Path, device: str | torch.device = "cpu") -> ViMiPipeline:
    path = Path(path)
    recover_dir(path)  # a swap killed half-way left the previous pipeline aside
    if not (path / "model_index.json").is_file():
        raise VimiError(
            f"{path} is not a ViMi pipeline directory (no model_index.json). Train one first (vimi train stage1)."
        )
    pipe = ViMiPipeline.from_pretrained(str(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)

"""Stage 1: retrieval-augmented pretraining of the video denoiser (docs/training.md).

Each training clip's prompt interleaves its retrieved memory documents (image, then caption, best
first) with its own caption; the frozen multimodal encoder turns it into the cross-attention
context. Conditioning is dropped entirely with probability `cfg_dropout` (classifier-free
guidance), each retrieved document with probability `doc_dropout` (so the model also works
with fewer documents, or none) and a kept document's caption with `doc_text_dropout` (its image
alone, as a subject instruction's reference image comes) and the clip's subject's name, where the
corpus names it, with `name_dropout` (replaced by "the subject" in all the prompt's text, so its look
must come from the documents' images). With `doc_swap` a document is replaced by another memory
document of the clip's subject (retrieval by the caption finds the subject in the clip's own scene,
and copying that picture whole would do). DDPM loss in pixel space, plus `canvas_loss` × the canvas's
own error on the clip.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vimi.data.clips import AugmentedClips, ClipBatch
from vimi.errors import VimiError
from vimi.models.denoiser import build_denoiser, denoise
from vimi.models.encoder import MultimodalEncoder, Prompt, load_language_model, stage1_prompt
from vimi.models.pipeline import ViMiPipeline, canvas_reference, to_model_frames
from vimi.models.vision import load_vision


def noise_schedulers(diffusion: dict[str, Any]):
    """(DDPM for training, DDIM for sampling) from params.yaml's diffusion section."""
    from diffusers import DDIMScheduler, DDPMScheduler

    prediction = diffusion.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction", "sample"):
        raise VimiError(
            f"params.yaml diffusion.prediction_type must be epsilon, v_prediction or sample, got {prediction!r}."
        )
    steps = int(diffusion.get("train_timesteps", 1000))
    if steps < 2:
        raise VimiError(f"params.yaml diffusion.train_timesteps must be >= 2, got {steps}.")
    ddpm = DDPMScheduler(
        num_train_timesteps=steps,
        beta_schedule=diffusion.get("beta_schedule", "squaredcos_cap_v2"),
        prediction_type=prediction,
        clip_sample=False,
    )
    ddim = DDIMScheduler.from_config(ddpm.config, set_alpha_to_one=True, timestep_spacing="trailing")
    return ddpm, ddim


LOSS_WEIGHTINGS = ("none", "min_snr", "truncated_v")


def loss_weighting(diffusion: dict[str, Any]) -> tuple[str, float | None]:
    """params.yaml's diffusion.loss_weighting and snr_gamma, checked."""
    kind = str(diffusion.get("loss_weighting") or "none")
    if kind not in LOSS_WEIGHTINGS:
        raise VimiError(
            f"params.yaml diffusion.loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)}, got {kind!r}."
        )
    if kind == "none":
        return kind, None
    value = diffusion.get("snr_gamma", 5.0)
    try:
        gamma = float(value)
    except (TypeError, ValueError):
        gamma = float("nan")
    if not gamma > 0:
        raise VimiError(f"params.yaml diffusion.snr_gamma must be a number > 0, got {value!r}.")
    return kind, gamma


def file_digest(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:16]


def diffusion_loss(
    model,
    scheduler,
    clean: torch.Tensor,
    context: torch.Tensor,
    generator: torch.Generator | Sequence[torch.Generator],
    condition: torch.Tensor | None = None,
    weighting: tuple[str, float | None] = ("none", None),
    reference: torch.Tensor | None = None,
    canvas_loss: float = 0.0,
) -> torch.Tensor:
    """DDPM training loss of clean B×3×T×H×W clips: noise at random timesteps, predict ε, v or the clean
    clip (`sample`), mean squared error. `weighting` reweights timesteps by their SNR, as a weight on
    the clean-clip error whatever is predicted: `min_snr` min(SNR, γ) (Hang et al. 2023); `truncated_v`
    min(SNR + 1, γ) (v's own weight, capped: sharpens detail without starving the noisy steps).
    `generator`: one for the batch, or one per clip (the training loop's), each clip's noise and then
    its timestep drawn from its own: a clip's draws do not depend on the batch it is in. `reference`:
    the prompts' reference images for a canvas that copies from them (`canvas_reference`).
    `canvas_loss`: weight of the canvas's own error on the clean clip, added (its guess is read from
    the prompt alone, so this trains it as a regression from the prompt to the clip)."""
    device = next(model.parameters()).device
    noise, timesteps = draw_noise(clean.shape, scheduler.config.num_train_timesteps, generator)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    prediction = scheduler.config.prediction_type
    target = {"epsilon": noise, "sample": clean}.get(prediction)
    if target is None:
        target = scheduler.get_velocity(clean, noise, timesteps)
    condition = None if condition is None else condition.to(device)
    reference = None if reference is None else reference.to(device)
    pred, guess = denoise(model, noisy.to(device), timesteps.to(device), context, condition, reference, True)
    error = (pred.float() - target.to(device)) ** 2
    own = 0.0
    if canvas_loss:
        if guess is None:
            raise VimiError("canvas_loss trains the denoiser's canvas: it needs model.denoiser.canvas: true.")
        own = canvas_loss * ((guess.float() - clean.to(device)) ** 2).mean()
    kind, gamma = weighting
    if kind == "none":
        return error.mean() + own
    alphas = scheduler.alphas_cumprod[timesteps]
    snr = alphas / (1 - alphas)
    # A target's squared error is the clean-clip error times: ε SNR, v SNR + 1, the clip itself 1.
    factor = {"epsilon": snr, "sample": torch.ones_like(snr)}.get(prediction, snr + 1)
    wanted = torch.clamp(snr if kind == "min_snr" else snr + 1, max=float(gamma))
    return (error.mean(dim=tuple(range(1, error.ndim))) * (wanted / factor).to(device)).mean() + own


def draw_noise(
    shape: torch.Size | tuple[int, ...], num_timesteps: int, generator: torch.Generator | Sequence[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise of `shape` (B×…) and B timesteps in [0, num_timesteps): from one generator for the whole
    batch, or from each clip's own (its noise, then its timestep)."""
    if isinstance(generator, torch.Generator):
        noise = torch.randn(shape, generator=generator)
        return noise, torch.randint(0, num_timesteps, (shape[0],), generator=generator)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    noise, timesteps = [], []
    for g in generator:
        noise.append(torch.randn(tuple(shape[1:]), generator=g))
        timesteps.append(torch.randint(0, num_timesteps, (1,), generator=g))
    return torch.stack(noise), torch.cat(timesteps)


def per_sample(generator: torch.Generator | Sequence[torch.Generator], i: int) -> torch.Generator:
    """Sample i's generator: the batch's one, or its own."""
    return generator if isinstance(generator, torch.Generator) else generator[i]


def without_name(text: str, name: str) -> str:
    """`text` with every mention of the subject's `name` (any case) as "the subject"."""
    return re.sub(rf"\b{re.escape(name)}\b", "the subject", text, flags=re.IGNORECASE)


def real_over_generated(real: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """B clips, real and generated (B×T×H×W×3) → one T×2H×BW×3 grid: real above generated, clips side by side."""
    stacked = np.concatenate([real, generated], axis=2)
    return np.concatenate(list(stacked), axis=2)


class Stage1Task:
    def __init__(
        self, params: dict[str, Any], augmented_uri: Path, videos_uri: Path, encoder_dir: Path, text_only: bool = False
    ):
        self.name = "stage1-text-only" if text_only else "stage1"
        self.text_only = text_only
        model_params, stage, world = params.get("model", {}), params.get("stage1", {}), params.get("world", {})
        self.cfg_dropout = stage["cfg_dropout"]
        self.doc_dropout = stage["doc_dropout"]
        self.doc_text_dropout = stage.get("doc_text_dropout", 0.0)
        self.name_dropout = stage.get("name_dropout", 0.0)
        self.doc_swap = stage.get("doc_swap", 0.0)
        self.canvas_loss = float(stage.get("canvas_loss", 0.0))
        for name, value in (
            ("cfg_dropout", self.cfg_dropout),
            ("doc_dropout", self.doc_dropout),
            ("doc_text_dropout", self.doc_text_dropout),
            ("name_dropout", self.name_dropout),
            ("doc_swap", self.doc_swap),
        ):
            if not 0 <= value < 1:
                raise VimiError(f"params.yaml stage1.{name} must be in [0, 1), got {value}.")
        self.max_docs = int(stage["max_docs"] if stage["max_docs"] is not None else params["retrieval"]["k"])
        self.sample_prompts = stage["sample_prompts"]
        self.sample_steps = stage["sample_steps"]
        self.num_frames, self.frame_size = int(world.get("num_frames", 8)), int(world.get("frame_size", 32))
        self.fps = float(world.get("fps", 8))
        self.tokenizer, self.language_model = load_language_model()
        self.vision = load_vision(encoder_dir)
        self.vision_digest = file_digest(Path(encoder_dir) / "vision" / "diffusion_pytorch_model.safetensors")
        for frozen in (self.language_model, self.vision):
            frozen.requires_grad_(False).eval()
        self.max_tokens = int(model_params.get("max_tokens", 256))
        self.max_segment_tokens = int(model_params.get("max_segment_tokens", 48))
        self.encoder = MultimodalEncoder(
            self.tokenizer, self.language_model, self.vision, self.max_tokens, self.max_segment_tokens
        )
        torch.manual_seed(int(params.get("seed", 0)))  # initial weights follow the seed, whatever ran before
        self.model = build_denoiser(
            model_params.get("denoiser", {}), self.num_frames, self.frame_size, self.language_model.config.hidden_size
        )
        self.diffusion = params.get("diffusion", {})
        self._check_canvas(self.model, self.diffusion)
        if self.canvas_loss and getattr(self.model, "context_canvas", None) is None:
            raise VimiError(
                "params.yaml stage1.canvas_loss trains the denoiser's canvas: it needs model.denoiser.canvas: true."
            )
        self.train_scheduler, self.sample_scheduler = noise_schedulers(self.diffusion)
        self.guidance_scale = float(self.diffusion.get("guidance_scale", 3.0))
        self.weighting = loss_weighting(self.diffusion)
        self.dataset = AugmentedClips(
            augmented_uri,
            videos_uri,
            self.num_frames,
            self.frame_size,
            self.vision.config.image_size,
            max_docs=self.max_docs,
            with_docs=not text_only,
        )
        self._model_params = model_params
        if self.doc_swap and not text_only and not any(map(self.dataset.subject_documents, self.dataset.clip_ids)):
            raise VimiError(
                "params.yaml stage1.doc_swap draws other memory documents of a clip's subject: it needs a "
                "video corpus and a memory that name subjects (a subject_id column in both)."
            )

    @staticmethod
    def _check_canvas(model, diffusion: dict[str, Any]) -> None:
        if getattr(model, "context_canvas", None) is not None and diffusion.get("prediction_type") != "sample":
            raise VimiError(
                "params.yaml model.denoiser.canvas guesses the clean clip: it needs diffusion.prediction_type: sample."
            )

    def to(self, device: torch.device) -> None:
        self.language_model.to(device)
        self.vision.to(device)
        self.model.to(device)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self._model_params,
            "diffusion": self.diffusion,
            "dropout": [self.cfg_dropout, self.doc_dropout, self.max_docs]
            + ([self.doc_text_dropout] if self.doc_text_dropout else [])
            + ([{"names": self.name_dropout}] if self.name_dropout else [])
            + ([{"swap": self.doc_swap}] if self.doc_swap else []),
            **({"canvas_loss": self.canvas_loss} if self.canvas_loss else {}),
            "data": [
                str(self.dataset.videos_uri),
                self.dataset.augmented_version,
                self.dataset.videos_version,
                self.dataset.memory_version,
            ],
            "clip": [self.num_frames, self.frame_size],
            "vision": self.vision_digest,
        }

    def prompts(
        self, batch: ClipBatch, generator: torch.Generator | Sequence[torch.Generator] | None = None
    ) -> list[Prompt]:
        """The conditioning of each clip; with a generator (one for the batch, or one per clip: clip i's
        dropping drawn from its own), training's random dropping applied."""
        prompts = []
        for i in range(len(batch)):
            g = None if generator is None else per_sample(generator, i)
            if g is not None and float(torch.rand(1, generator=g)) < self.cfg_dropout:
                prompts.append([])
                continue
            if self.text_only:
                prompts.append(stage1_prompt(batch.captions[i], [], []))
                continue
            images, captions, caption = batch.doc_images[i], batch.doc_captions[i], batch.captions[i]
            name = batch.subject_names[i] if batch.subject_names else None
            if g is not None:
                keep = (torch.rand(len(images), generator=g) >= self.doc_dropout).tolist()
                images = [im for im, k in zip(images, keep) if k]
                captions = [c for c, k in zip(captions, keep) if k]
                if self.doc_swap:
                    images, captions = self._swap(batch.clip_ids[i], images, captions, g)
                if self.doc_text_dropout:
                    text = (torch.rand(len(captions), generator=g) >= self.doc_text_dropout).tolist()
                    captions = [c if t else "" for c, t in zip(captions, text)]
                if self.name_dropout and name and float(torch.rand(1, generator=g)) < self.name_dropout:
                    caption, captions = without_name(caption, name), [without_name(c, name) for c in captions]
            prompts.append(stage1_prompt(caption, images, captions))
        return prompts

    def _swap(self, clip_id: str, images: list, captions: list[str], g: torch.Generator) -> tuple[list, list[str]]:
        """Each document, with probability `doc_swap`, replaced by a memory document of the clip's
        subject drawn at random. Retrieval by the caption finds the subject in the clip's own scene, so
        a model learns to copy the whole picture; another picture of the subject shares only the subject."""
        pool = self.dataset.subject_documents(clip_id)
        swap = (torch.rand(len(images), generator=g) < self.doc_swap).tolist()
        picks = torch.randint(0, max(1, len(pool)), (len(images),), generator=g).tolist()
        wanted = [(pool[p][0], pool[p][1], clip_id) for s, p in zip(swap, picks) if s and pool]
        drawn = iter(self.dataset.images.fetch(wanted))
        out = [next(drawn) if s and pool else (im, c) for s, im, c in zip(swap, images, captions)]
        return [im for im, _ in out], [c for _, c in out]

    def loss(self, model, batch: ClipBatch, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Clip i's dropping, noise and timestep all come from generators[i] (in that order)."""
        prompts = self.prompts(batch, generators)
        with torch.no_grad():
            context = self.encoder(prompts).hidden_states
        reference = canvas_reference(model, prompts, self.frame_size)
        return diffusion_loss(
            model,
            self.train_scheduler,
            to_model_frames(batch.frames),
            context,
            generators,
            weighting=self.weighting,
            reference=reference,
            canvas_loss=self.canvas_loss,
        )

    def pipeline(self, model) -> ViMiPipeline:
        pipe = ViMiPipeline(
            self.tokenizer,
            self.language_model,
            self.vision,
            model,
            self.sample_scheduler,
            num_frames=self.num_frames,
            frame_size=self.frame_size,
            max_tokens=self.max_tokens,
            max_segment_tokens=self.max_segment_tokens,
            guidance_scale=self.guidance_scale,
            fps=self.fps,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def samples(self, model) -> np.ndarray:
        """Fixed prompts (the first clips, all their documents) → one grid: each clip's real frames
        above the generated ones, prompts side by side."""
        n = min(self.sample_prompts, len(self.dataset))
        batch = self.dataset.__getitems__(list(range(n)))
        generator = torch.Generator().manual_seed(0)
        generated = self.pipeline(model)(
            self.prompts(batch), num_inference_steps=self.sample_steps, generator=generator
        ).frames
        return real_over_generated(batch.frames, generated)

    def save(self, model, out_dir: Path) -> None:
        self.pipeline(model).save_pretrained(str(out_dir))

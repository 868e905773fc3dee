"""Stage 2: multimodal instruction tuning of a stage-1 pipeline (docs/training.md "Stage 2").

One model learns three tasks from the instruction dataset: subject-driven generation (reference
images of the subject in the prompt), video prediction (the first frames in the prompt, and given
to the denoiser as extra input channels — zero-initialised on top of the stage-1 weights, so
training starts from exactly the stage-1 model) and text-to-video. The language model and the
image encoder stay frozen as in stage 1; the instruction is dropped with probability `cfg_dropout`
(given frames stay: they are the clip, not the instruction). With `name_dropout`, an instruction that
holds images names its subject as "the subject" instead, where the dataset names it, so the look must
come from the images (as stage 1's `name_dropout` does for the retrieved documents).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vimi.data.clips import InstructionBatch, InstructionClips
from vimi.errors import VimiError
from vimi.models.denoiser import add_frame_conditioning, frame_conditioning
from vimi.models.encoder import MultimodalEncoder
from vimi.models.pipeline import ViMiPipeline, canvas_reference, load_pipeline, to_model_frames
from vimi.train.stage1 import (
    diffusion_loss,
    file_digest,
    loss_weighting,
    per_sample,
    real_over_generated,
    without_name,
)

TASKS = ("subject", "prediction", "text_to_video")


def training_scheduler(sampling_config):
    """The DDPM noise schedule the stage-1 model was trained with, read back from its DDIM config."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type", "trained_betas")
    return DDPMScheduler(**{k: sampling_config[k] for k in keys if k in sampling_config}, clip_sample=False)


class Stage2Task:
    name = "stage2"

    def __init__(self, params: dict[str, Any], instructions_uri: Path, init_dir: Path):
        stage = params.get("stage2", {})
        self.cfg_dropout = stage["cfg_dropout"]
        if not 0 <= self.cfg_dropout < 1:
            raise VimiError(f"params.yaml stage2.cfg_dropout must be in [0, 1), got {self.cfg_dropout}.")
        self.name_dropout = float(stage.get("name_dropout", 0.0))
        if not 0 <= self.name_dropout < 1:
            raise VimiError(f"params.yaml stage2.name_dropout must be in [0, 1), got {self.name_dropout}.")
        self.canvas_loss = float(stage.get("canvas_loss", 0.0))
        self.sample_steps = stage["sample_steps"]
        self.weighting = loss_weighting(params.get("diffusion", {}))
        init = load_pipeline(init_dir)
        self.init_digest = file_digest(Path(init_dir) / "transformer" / "diffusion_pytorch_model.safetensors")
        self.tokenizer, self.language_model, self.vision = init.tokenizer, init.language_model, init.vision
        for frozen in (self.language_model, self.vision):
            frozen.requires_grad_(False).eval()
        self.config = dict(init.config)
        self.encoder = MultimodalEncoder(
            self.tokenizer,
            self.language_model,
            self.vision,
            self.config["max_tokens"],
            self.config["max_segment_tokens"],
        )
        self.model = init.transformer
        self.model.requires_grad_(True)
        if self.canvas_loss and getattr(self.model, "context_canvas", None) is None:
            raise VimiError(
                "params.yaml stage2.canvas_loss trains the denoiser's canvas: the stage-1 model has none "
                "(model.denoiser.canvas: true)."
            )
        self.widened = add_frame_conditioning(self.model)
        self.sample_scheduler = init.scheduler
        self.train_scheduler = training_scheduler(init.scheduler.config)
        self.dataset = InstructionClips(
            instructions_uri,
            "train",
            self.config["num_frames"],
            self.config["frame_size"],
            self.vision.config.image_size,
        )

    def to(self, device: torch.device) -> None:
        self.language_model.to(device)
        self.vision.to(device)
        self.model.to(device)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "init": self.init_digest,
            "cfg_dropout": self.cfg_dropout,
            **({"name_dropout": self.name_dropout} if self.name_dropout else {}),
            **({"canvas_loss": self.canvas_loss} if self.canvas_loss else {}),
            "weighting": list(self.weighting),
            "data": self.dataset.versions(),
            "pipeline": {
                k: v for k, v in self.config.items() if not k.startswith("_") and isinstance(v, (int, float, str))
            },
        }

    def prompts(self, batch: InstructionBatch, generators: Sequence[torch.Generator]) -> list[list[Any]]:
        """Each row's instruction with training's dropping drawn from generators[i]: dropped whole
        (`cfg_dropout`), or, holding images, its subject's name masked (`name_dropout`)."""
        prompts = []
        for i, prompt in enumerate(batch.prompts):
            g = per_sample(generators, i)
            if float(torch.rand(1, generator=g)) < self.cfg_dropout:
                prompts.append([])
                continue
            name = batch.subject_names[i] if batch.subject_names else None
            if (
                self.name_dropout
                and name
                and any(not isinstance(x, str) for x in prompt)
                and float(torch.rand(1, generator=g)) < self.name_dropout
            ):
                prompt = [without_name(x, name) if isinstance(x, str) else x for x in prompt]
            prompts.append(prompt)
        return prompts

    def loss(self, model, batch: InstructionBatch, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Clip i's instruction dropping, noise and timestep all come from generators[i] (in that order)."""
        prompts = self.prompts(batch, generators)
        with torch.no_grad():
            context = self.encoder(prompts).hidden_states
        clean = to_model_frames(batch.frames)
        return diffusion_loss(
            model,
            self.train_scheduler,
            clean,
            context,
            generators,
            frame_conditioning(clean, batch.context_frames),
            weighting=self.weighting,
            reference=canvas_reference(model, prompts, clean.shape[-1]),
            canvas_loss=self.canvas_loss,
        )

    def pipeline(self, model) -> ViMiPipeline:
        keys = ("num_frames", "frame_size", "max_tokens", "max_segment_tokens", "guidance_scale", "fps")
        pipe = ViMiPipeline(
            self.tokenizer,
            self.language_model,
            self.vision,
            model,
            self.sample_scheduler,
            **{k: self.config[k] for k in keys if k in self.config},
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def sample_rows(self) -> list[int]:
        """The first row of each task: the in-training samples show one of each."""
        first: dict[str, int] = {}
        for i, row in enumerate(self.dataset.rows):
            first.setdefault(row["task"], i)
        return [first[t] for t in TASKS if t in first]

    @torch.no_grad()
    def samples(self, model) -> np.ndarray:
        """One clip per task (subject, prediction, text-to-video, side by side): real above generated."""
        batch = self.dataset.__getitems__(self.sample_rows())
        given = [batch.frames[i, :m] if m else None for i, m in enumerate(batch.context_frames)]
        generated = self.pipeline(model)(
            batch.prompts,
            context_frames=given if any(m for m in batch.context_frames) else None,
            num_inference_steps=self.sample_steps,
            generator=torch.Generator().manual_seed(0),
        ).frames
        return real_over_generated(batch.frames, generated)

    def save(self, model, out_dir: Path) -> None:
        self.pipeline(model).save_pretrained(str(out_dir))

"""params.yaml's sections, typed: every key a step reads, its type, its range and its default, once.

`load_params` checks the merged profile against these models: an unknown or misspelt key is an error
naming it and the keys its section knows (`stage1.stpes: unknown key; known: steps, batch_size, ...`), a
value of the wrong type or out of range names the key and what it needs. What it returns has every
section complete, so code reads `params["retrieval"]["k"]` and never writes a default of its own. The
world, the training loops and the instructions check their values' ranges further where they are used
(`WorldConfig`, `LoopConfig`, `InstructionParams`), where the relations between keys are known.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vimi.errors import VimiError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class World(Section):
    subjects: int = Field(64, ge=1)
    unseen_fraction: float = Field(0.25, ge=0, lt=1)
    actions: int = 12
    scenes: int = 6
    memory_docs: int = 5000
    distractor_fraction: float = 0.1
    image_size: int = 64
    train_clips: int = 2000
    eval_clips: int = 256
    num_frames: int = 8
    frame_size: int = 16
    sprite_scale: float = 2.0
    pose_jitter: float = 0.0
    memory_rotation: float = Field(1.0, ge=0, le=1)
    scene_variants: int = 1
    fps: int = Field(8, gt=0)
    supersample: int = 4
    appearance_in_video_caption: float = 0.1
    workers: int = Field(0, ge=0)


class Data(Section):
    memory_sources: list[dict[str, Any]] = []
    video_sources: list[dict[str, Any]] = []


class Ingest(Section):
    batch_rows: int = Field(256, ge=1)
    min_image_size: int = Field(8, ge=1)
    max_image_size: int = Field(16384, ge=1)
    min_video_frames: int = Field(8, ge=1)
    max_member_bytes: int = Field(64 * 2**20, ge=1)
    max_video_frames: int = Field(18000, ge=1)
    max_video_pixels: int = Field(3840 * 2160, ge=1)
    max_video_bytes: int = Field(256 * 2**20, ge=1)
    caption_column: str = "caption"
    key_column: str = "key"
    image_columns: list[str] = ["jpg", "png", "webp", "image"]


class Retrieval(Section):
    k: int = Field(4, ge=1)
    k1: float = Field(0.9, gt=0)
    b: float = Field(0.4, ge=0, le=1)
    index_shards: int = Field(4, ge=1)
    merge_shards: bool = True
    index_batch_rows: int = Field(20000, ge=1)
    search_threads: int = Field(0, ge=0)
    augment_partitions: int = Field(2, ge=1)
    min_coverage: float = Field(0.99, ge=0)  # above 1: a gate that always fails
    min_recall_at_k: float = Field(0.95, ge=0)


class Model(Section):
    image_size: int = Field(32, ge=8)
    image_channels: list[int] = [32, 64, 128]
    image_grid: int = Field(2, ge=1)
    max_tokens: int = Field(256, ge=8)
    max_segment_tokens: int = Field(48, ge=1)
    # The denoiser's own configuration (its `type` and that architecture's keys), checked by the model.
    denoiser: dict[str, Any] = {
        "type": "frame_stack_unet",
        "block_out_channels": [64, 128, 128],
        "cross_attention": [False, True, True],
        "layers_per_block": 1,
        "attention_heads": 4,
        "norm_groups": 8,
    }


class Diffusion(Section):
    train_timesteps: int = Field(1000, ge=2)
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: Literal["sample", "epsilon", "v_prediction"] = "sample"
    loss_weighting: Optional[Literal["none", "truncated_v", "min_snr"]] = "none"
    snr_gamma: float = Field(5.0, gt=0)
    inference_steps: int = Field(25, ge=1)
    guidance_scale: float = Field(3.0, ge=0)


class Loop(Section):
    """What every training loop reads (`vimi.train.loop.LoopConfig` checks the ranges)."""

    steps: int = 300
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 20
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    ema_decay: float = 0.999
    mixed_precision: str = "auto"
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    sample_every: int = 100
    num_workers: int = 0


class Align(Loop):
    steps: int = 150
    batch_size: int = 64
    lr: float = 5e-4
    warmup_steps: int = 30
    ema_decay: float = 0.99
    temperature: float = Field(0.05, gt=0)
    max_docs: int = Field(50000, ge=2)
    eval_docs: int = Field(256, ge=1)
    sample_every: int = 0


class Stage1(Loop):
    steps: int = 700
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    cfg_dropout: float = Field(0.1, ge=0, le=1)
    doc_dropout: float = Field(0.3, ge=0, le=1)
    doc_text_dropout: float = Field(0.0, ge=0, le=1)  # a kept document's caption dropped: its image alone
    name_dropout: float = Field(0.0, ge=0, le=1)  # the subject's name replaced by "the subject" in the prompt's text
    doc_swap: float = Field(0.0, ge=0, le=1)  # a document replaced by another memory document of the subject
    canvas_loss: float = Field(0.0, ge=0)  # weight of the canvas's own error on the clip
    max_docs: Optional[int] = Field(4, ge=0)  # retrieved documents in a prompt; null: retrieval.k
    sample_prompts: int = Field(4, ge=1)
    sample_steps: int = Field(10, ge=1)


class Instructions(Section):
    """Checked further by `vimi.data.instructions.InstructionParams` (tasks, frames, templates)."""

    samples_per_clip: int = 2
    mixture: dict[str, float] = {"subject": 0.4, "prediction": 0.3, "text_to_video": 0.3}
    context_frames: int = 2
    reference_images: list[int] = [1, 2]
    templates: dict[str, list[str]] = {
        "subject": ["{images} {caption}"],
        "prediction": ["{images} {caption}"],
        "text_to_video": ["{caption}"],
    }


class Stage2(Loop):
    init: str = "models/stage1"
    steps: int = 100
    lr: float = 5e-4
    warmup_steps: int = 10
    ema_decay: float = 0.995
    cfg_dropout: float = Field(0.1, ge=0, le=1)
    name_dropout: float = Field(0.0, ge=0, le=1)  # as stage 1's, in instructions that hold images
    canvas_loss: float = Field(0.0, ge=0)  # weight of the canvas's own error on the clip
    sample_every: int = 0
    sample_steps: int = Field(10, ge=1)


class FeatureNet(Loop):
    channels: list[int] = [32, 64, 128]
    feature_dim: int = Field(256, ge=1)
    num_frames: Optional[int] = Field(None, ge=2)
    frame_size: Optional[int] = Field(None, ge=8)
    steps: int = 600
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 30
    ema_decay: float = 0.99
    checkpoint_every: int = 200
    log_every: int = 20
    sample_every: int = 0


class UCF101(Section):
    root: Optional[str] = None
    num_videos: int = Field(2048, ge=1)
    split: Literal["train", "test"] = "test"
    fold: int = Field(1, ge=1, le=3)
    c3d: Optional[str] = None
    allow_fewer: bool = False
    steps: Optional[int] = Field(None, ge=1)  # DDIM steps (default: diffusion.inference_steps)
    prompts: Optional[str] = None  # class prompts file (default: the shipped one)


class Evaluate(Section):
    videos_per_task: int = Field(32, ge=1)
    inference_steps: int = Field(25, ge=1)
    ucf101: UCF101 = UCF101()


class Registry(Section):
    model_name: str = Field("vimi-video-generator", min_length=1)
    smoke_frames: int = Field(8, ge=1)
    promotion_metric: str = "fvd_syn"
    promotion_margin: float = Field(0.0, ge=0)


class Operations(Section):
    retrain_cron: str = "0 3 * * 1"
    timezone: str = "UTC"
    memory_sensor_interval_s: int = Field(300, ge=1)


class Validate(Section):
    decode_sample: int = Field(0, ge=0)
    min_rows: int = Field(1, ge=0)


class Params(Section):
    profile: str = "tiny"
    seed: int = Field(0, ge=0)
    world: World = World()
    data: Data = Data()
    ingest: Ingest = Ingest()
    retrieval: Retrieval = Retrieval()
    model: Model = Model()
    diffusion: Diffusion = Diffusion()
    align: Align = Align()
    stage1: Stage1 = Stage1()
    instructions: Instructions = Instructions()
    stage2: Stage2 = Stage2()
    featurenet: FeatureNet = FeatureNet()
    evaluate: Evaluate = Evaluate()
    registry: Registry = Registry()
    operations: Operations = Operations()
    validate_: Validate = Field(Validate(), alias="validate")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _known(model: type[BaseModel], path: tuple) -> list[str]:
    """The keys the section at PATH knows."""
    for part in path[:-1]:
        field = model.model_fields.get(str(part)) or model.model_fields.get(f"{part}_")
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return [field.alias or name for name, field in model.model_fields.items()]


def check_params(params: dict[str, Any], source: str = "params.yaml") -> dict[str, Any]:
    """PARAMS (one profile, merged) checked against the sections' models; complete, with every default."""
    try:
        typed = Params.model_validate(params)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            path = tuple(error["loc"])
            key = ".".join(str(p) for p in path)
            if error["type"] == "extra_forbidden":
                known = _known(Params, path)
                problems.append(f"{key}: unknown key; known: {', '.join(known)}")
            else:
                problems.append(f"{key}: {error['msg'].lower()}, got {error.get('input')!r}")
        raise VimiError(f"{source}: " + "; ".join(problems) + ".") from None
    return typed.model_dump(by_alias=True)

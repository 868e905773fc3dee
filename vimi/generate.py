"""`vimi generate`: one video from a model in the registry (or a run, or a directory), with a JSON
sidecar recording how it was grounded: the model version, the prompt, where each image came from,
seed, guidance and steps.

Prompt convention (also the MLflow pyfunc's): the prompt's `<image>` placeholders take the `--image`
files in order. With `--video`, the first m frames are given; when the prompt places no
placeholders for them, they go in front of it (`<image>`×m, then the prompt: the first prediction
phrasing of params.yaml), otherwise the placeholders after the images' take the frames.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vimi.config import Settings
from vimi.errors import VimiError
from vimi.io.files import write_json
from vimi.models.encoder import IMAGE_PLACEHOLDER

VIDEO_SUFFIXES = (".mp4", ".gif")
MAX_IMAGE_BYTES = 32 * 2**20  # one encoded reference image or context frame
MAX_IMAGE_PIXELS = 4096 * 4096


def read_image(data: bytes, what: str) -> np.ndarray:
    """Encoded image bytes → H×W×3 uint8, or an error naming what was unreadable."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_IMAGE_BYTES:
        raise VimiError(f"{what} is {len(data):,} bytes; at most {MAX_IMAGE_BYTES:,} are read.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                # the header gives the size: a small file that decodes to gigabytes is refused unread
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise VimiError(
                        f"{what} is {img.width}×{img.height} pixels; at most {MAX_IMAGE_PIXELS:,} are read."
                    )
                img.load()
                return np.asarray(img.convert("RGB"))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise VimiError(f"{what} is too large an image ({exc}).") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise VimiError(f"{what} is not a readable image ({exc}).") from None


def read_image_file(path: Path) -> np.ndarray:
    try:
        size = Path(path).stat().st_size
        if size > MAX_IMAGE_BYTES:  # refused before it is read
            raise VimiError(f"Image {path} is {size:,} bytes; at most {MAX_IMAGE_BYTES:,} are read.")
        data = Path(path).read_bytes()
    except OSError as exc:
        raise VimiError(f"Cannot read image {path}: {exc.strerror or exc}.") from None
    return read_image(data, f"Image {path}")


def read_context_frames(path: Path, count: int) -> np.ndarray:
    """The first `count` frames of a video file (any container PyAV reads)."""
    from vimi.io.video import decode_container

    if not Path(path).is_file():
        raise VimiError(f"Video {path} does not exist.")
    try:
        frames, _ = decode_container(Path(path), max_frames=count)
    except Exception as exc:  # VideoDecodeError, or PyAV's own error types for broken files
        raise VimiError(f"Video {path} cannot be decoded ({exc}).") from None
    if len(frames) < count:
        raise VimiError(f"Video {path} has {len(frames)} frame(s), fewer than the {count} context frames asked for.")
    return frames


def place_frames(prompt: str, num_images: int, num_frames: int) -> str:
    """The prompt with placeholders for the given frames (module docstring), or an error with the counts."""
    found = prompt.count(IMAGE_PLACEHOLDER)
    if found == num_images + num_frames:
        return prompt
    if num_frames and found == num_images:
        return IMAGE_PLACEHOLDER * num_frames + " " + prompt
    given = f"{num_images} image(s)" + (f" and {num_frames} context frame(s)" if num_frames else "")
    need = f"{num_images}" + (f" (the frames then go in front) or {num_images + num_frames}" if num_frames else "")
    raise VimiError(
        f"The prompt has {found} {IMAGE_PLACEHOLDER} placeholder(s) but {given} were given; it needs {need}."
    )


def order_images(prompt: str, placed: str, images: Sequence[np.ndarray], frames: Sequence[np.ndarray]) -> list:
    """The images in placeholder order: frames first when they were put in front, else images then frames."""
    return list(frames) + list(images) if placed != prompt else list(images) + list(frames)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def generate_video(
    settings: Settings,
    model: str,
    prompt: str,
    out: Path,
    images: Sequence[Path] = (),
    video: Path | None = None,
    context_frames: int | None = None,
    num_frames: int | None = None,
    seed: int = 0,
    guidance_scale: float | None = None,
    steps: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Generate one clip and write it (MP4 or GIF, by out's suffix) with its sidecar; returns the sidecar.
    Everything the user gave is checked before the model loads; nothing is left at `out` on failure."""
    import torch

    from vimi.models.pipeline import load_pipeline
    from vimi.registry import resolve_model

    start = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() not in VIDEO_SUFFIXES:
        raise VimiError(f"--out must end in {' or '.join(VIDEO_SUFFIXES)}, got {out.name!r}.")
    if context_frames is not None and video is None:
        raise VimiError("--context-frames needs --video (the clip whose first frames are given).")
    if video is not None and context_frames is None:
        context_frames = int(settings.params.get("instructions", {}).get("context_frames", 2))
    if context_frames is not None and context_frames < 1:
        raise VimiError(f"--context-frames must be >= 1, got {context_frames}.")
    if steps is not None and steps < 1:
        raise VimiError(f"--steps must be >= 1, got {steps}.")
    if num_frames is not None and num_frames < 1:
        raise VimiError(f"--frames must be >= 1, got {num_frames} (leave it out for the model's length).")
    if guidance_scale is not None and not math.isfinite(guidance_scale):
        raise VimiError(f"--guidance must be a finite number, got {guidance_scale}.")
    image_arrays = [read_image_file(Path(p)) for p in images]
    given = read_context_frames(Path(video), context_frames) if video is not None else np.zeros((0, 1, 1, 3), np.uint8)
    placed = place_frames(prompt, len(image_arrays), len(given))
    ordered = order_images(prompt, placed, image_arrays, list(given))

    resolved = resolve_model(settings, model)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(resolved.path, device)
    num_frames = int(pipe.config.num_frames if num_frames is None else num_frames)
    if len(given) and len(given) >= num_frames:
        raise VimiError(
            f"{len(given)} context frames leave nothing to predict in a {num_frames}-frame clip (--frames)."
        )
    steps = int(steps or settings.params.get("diffusion", {}).get("inference_steps", 25))
    scale = float(pipe.config.guidance_scale if guidance_scale is None else guidance_scale)
    generator = torch.Generator().manual_seed(int(seed))
    frames = pipe(
        placed,
        images=ordered,
        num_frames=num_frames,
        context_frames=given if len(given) else None,
        num_inference_steps=steps,
        guidance_scale=scale,
        generator=generator,
        show_progress=True,
    ).frames[0]

    from vimi.io.video import write_video

    fps = float(getattr(pipe.config, "fps", 8.0))
    write_video(frames, out, fps=fps)  # atomic: a temporary file renamed into place
    sidecar = {
        "video": str(out.resolve()),
        "model": resolved.to_json(),
        "prompt": prompt,
        "prompt_used": placed,
        "images": [
            {
                "placeholder": _placeholder_index(ordered, a),
                "path": str(Path(p).resolve()),
                "sha256": _sha256(Path(p)),
                "width": int(a.shape[1]),
                "height": int(a.shape[0]),
            }
            for p, a in zip(images, image_arrays)
        ],
        "context": None
        if video is None
        else {
            "video": str(Path(video).resolve()),
            "sha256": _sha256(Path(video)),
            "frames_given": int(len(given)),
            "source_frames": list(range(len(given))),
        },
        "seed": int(seed),
        "guidance_scale": scale,
        "num_inference_steps": steps,
        "num_frames": int(frames.shape[0]),
        "height": int(frames.shape[1]),
        "width": int(frames.shape[2]),
        "fps": fps,
        "device": str(device),
        "seconds": round(time.perf_counter() - start, 2),
        "created": datetime.now(timezone.utc).isoformat(),
    }
    try:
        write_json(sidecar_path(out), sidecar)
    except OSError:
        out.unlink(missing_ok=True)  # a video without its provenance is not left behind
        raise
    return sidecar


def _placeholder_index(ordered: list, array: np.ndarray) -> int:
    """Which `<image>` (0-based) an image filled."""
    return next(i for i, o in enumerate(ordered) if o is array)

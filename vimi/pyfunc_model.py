"""The MLflow model of a ViMi pipeline, logged as code (MLflow "models from code"): loading it
runs this file, nothing is unpickled.

Input, one row per video (docs/training.md "Serving"): `prompt` (text with `<image>` placeholders), optional
`images` (base64 PNG/JPEG, one per placeholder, in order) and `context_frames` (base64 images:
the first frames of a clip to continue; placed as `vimi generate` places them). Params: seed,
num_frames, num_inference_steps, guidance_scale, format (mp4 | gif).
Output, one row per video: `video` (base64 of the MP4 or GIF), format, num_frames, height, width, seed.
"""

from mlflow.pyfunc import PythonModel

import mlflow


def _bad_input(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)  # the scoring server answers 400


def _image(b64: str, what: str):
    import base64
    import binascii

    from vimi.errors import VimiError
    from vimi.generate import read_image

    try:
        data = base64.b64decode(b64, validate=True)
    except binascii.Error:
        raise VimiError(f"{what} is not base64.") from None
    return read_image(data, what)


class ViMiPyfunc(PythonModel):
    def load_context(self, context):
        from vimi.models.pipeline import load_pipeline

        self.pipeline = load_pipeline(context.artifacts["pipeline"])

    def predict(self, context, model_input, params: dict | None = None):
        import base64
        import tempfile
        from pathlib import Path

        import numpy as np
        import pandas as pd
        import torch

        from vimi.errors import VimiError
        from vimi.generate import MAX_IMAGE_BYTES, order_images, place_frames
        from vimi.io.video import write_video
        from vimi.models.pipeline import MAX_PROMPTS

        params = params or {}
        fmt = str(params.get("format") or "mp4").lower()
        if fmt not in ("mp4", "gif"):
            raise _bad_input(f"format must be mp4 or gif, got {fmt!r}.")
        if isinstance(model_input, pd.DataFrame):
            rows = model_input.to_dict("records")
        else:
            rows = [{"prompt": p} if isinstance(p, str) else dict(p) for p in model_input]
        if not 1 <= len(rows) <= MAX_PROMPTS:
            raise _bad_input(f"A request holds 1 to {MAX_PROMPTS} rows, got {len(rows)}.")
        try:
            seed = int(params.get("seed") or 0)
        except (TypeError, ValueError):
            raise _bad_input(f"seed must be an integer, got {params.get('seed')!r}.") from None
        out = []
        for i, row in enumerate(rows):
            try:
                prompt = row.get("prompt")
                if not isinstance(prompt, str):
                    raise VimiError(f"Row {i}: `prompt` must be a string.")
                decoded = {}
                for column in ("images", "context_frames"):
                    values = row.get(column)
                    values = [] if values is None or (np.ndim(values) == 0 and pd.isna(values)) else list(values)
                    if len(values) > self.pipeline.max_images:
                        raise VimiError(
                            f"Row {i}: {len(values)} {column}; this model's prompt holds at most "
                            f"{self.pipeline.max_images} images."
                        )
                    for j, v in enumerate(values):
                        if not isinstance(v, str) or len(v) > MAX_IMAGE_BYTES * 4 // 3 + 4:
                            what = type(v).__name__ if not isinstance(v, str) else f"{len(v):,} characters"
                            raise VimiError(
                                f"Row {i}: {column}[{j}] must be one base64 image of at most "
                                f"{MAX_IMAGE_BYTES:,} bytes, got {what}."
                            )
                    decoded[column] = [_image(v, f"Row {i}: {column}[{j}]") for j, v in enumerate(values)]
                frames_given = decoded["context_frames"]
                placed = place_frames(prompt, len(decoded["images"]), len(frames_given))
                images = order_images(prompt, placed, decoded["images"], frames_given)
                generator = torch.Generator().manual_seed(seed + i)
                frames = self.pipeline(
                    placed,
                    images=images,
                    num_frames=params.get("num_frames") or None,
                    context_frames=np.stack(frames_given) if frames_given else None,
                    num_inference_steps=int(params.get("num_inference_steps") or 25),
                    guidance_scale=None if params.get("guidance_scale") is None else float(params["guidance_scale"]),
                    generator=generator,
                ).frames[0]
            except (VimiError, ValueError, TypeError) as exc:  # binascii.Error is a ValueError
                raise _bad_input(str(exc)) from None
            with tempfile.TemporaryDirectory() as tmp:
                path = write_video(frames, Path(tmp) / f"video.{fmt}", fps=float(self.pipeline.config.fps))
                data = base64.b64encode(path.read_bytes()).decode("ascii")
            out.append(
                {
                    "video": data,
                    "format": fmt,
                    "num_frames": int(frames.shape[0]),
                    "height": int(frames.shape[1]),
                    "width": int(frames.shape[2]),
                    "seed": seed + i,
                }
            )
        return pd.DataFrame(out)


mlflow.models.set_model(ViMiPyfunc())

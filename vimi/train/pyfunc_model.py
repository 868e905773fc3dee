"""The MLflow model of a ViMi pipeline, logged as code (MLflow "models from code"): loading it
runs this file, nothing is unpickled. `predict` takes rows with a `prompt` column (text; images
through the pipeline API) and returns T×H×W×3 uint8 frames per row."""

import mlflow
from mlflow.pyfunc import PythonModel


class ViMiPyfunc(PythonModel):
    def load_context(self, context):
        from vimi.models.pipeline import load_pipeline

        self.pipeline = load_pipeline(context.artifacts["pipeline"])

    def predict(self, context, model_input: list[str], params: dict | None = None) -> list:
        import torch

        params = params or {}
        prompts = list(model_input["prompt"]) if hasattr(model_input, "columns") else list(model_input)
        generator = torch.Generator().manual_seed(int(params.get("seed", 0)))
        out = self.pipeline(prompts, num_inference_steps=int(params.get("num_inference_steps", 25)),
                            generator=generator)
        return list(out.frames)


mlflow.models.set_model(ViMiPyfunc())

"""Resources bound by key: where params.yaml and the data live, per environment."""

from __future__ import annotations

from typing import Optional

import dagster as dg

from vimi.config import Settings


class VimiSettings(dg.ConfigurableResource):
    """params.yaml, the data directory and the MLflow tracking store. Unset fields fall back to vimi's own
    rules: params.yaml found from the working directory (or VIMI_PARAMS), data under VIMI_DATA_DIR or
    ./data, tracking at MLFLOW_TRACKING_URI or sqlite in ./mlflow/."""

    params_path: Optional[str] = None
    data_dir: Optional[str] = None
    profile: Optional[str] = None
    mlflow_tracking_uri: Optional[str] = None
    # The Lance datasets elsewhere, e.g. s3://bucket/vimi (default: VIMI_LANCE_URI, else in data_dir).
    lance_uri: Optional[str] = None

    def load(self) -> Settings:
        return Settings.load(
            profile=self.profile,
            params_path=self.params_path,
            data_dir=self.data_dir,
            tracking_uri=self.mlflow_tracking_uri,
            lance_uri=self.lance_uri,
        )

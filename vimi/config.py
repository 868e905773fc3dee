"""Settings: params.yaml (+ profile) and where data lives.

Every step reads its knobs from one params.yaml. The project root is the directory holding it,
found from the working directory upwards (like git finds .git) or named by ``VIMI_PARAMS``.
Data lives under ``<root>/data`` unless ``VIMI_DATA_DIR`` points elsewhere.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vimi.errors import VimiError

PARAMS_FILE = "params.yaml"

# Dataset file names under the data directory (docs/data.md, "Where data lives").
DATASET_FILES = {
    "world": "world",
    "memory": "memory.lance",
    "videos": "videos.lance",
    "eval_videos": "eval_videos.lance",
    "quarantine": "quarantine.lance",
    "bm25": "bm25",
    "augmented": "augmented.lance",
    "instructions": "instructions.lance",
}


def is_remote(uri: str | Path) -> bool:
    """An object-store URI (s3://, gs://, az://, memory://, ...), as opposed to a local path."""
    text = str(uri)  # a pathlib.Path never holds "://" (it folds the slashes); a UPath keeps it
    return "://" in text and not text.startswith("file://")


def object_store_env() -> None:
    """One S3-compatible endpoint for both readers of object stores here: Lance reads AWS_ENDPOINT
    (and needs AWS_ALLOW_HTTP for http://), pyarrow and boto read AWS_ENDPOINT_URL. Either one set
    fills in the other; nothing is overwritten."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT")
    if endpoint:
        os.environ.setdefault("AWS_ENDPOINT_URL", endpoint)
        os.environ.setdefault("AWS_ENDPOINT", endpoint)
        if endpoint.startswith("http://"):
            os.environ.setdefault("AWS_ALLOW_HTTP", "true")


def dataset_location(uri: str | Path) -> Path:
    """A local Path, or a `upath.UPath` for an object-store URI (`Path("s3://b/k")` would lose a slash)."""
    if is_remote(uri):
        from upath import UPath

        return UPath(uri)
    return Path(str(uri).removeprefix("file://"))


def find_params_file(start: Path | None = None) -> Path:
    env = os.environ.get("VIMI_PARAMS")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise VimiError(f"VIMI_PARAMS points to {path}, which is not a file.")
        return path.resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / PARAMS_FILE
        if candidate.is_file():
            return candidate
    raise VimiError(
        f"No {PARAMS_FILE} found in {here} or any parent directory. Run vimi from the project "
        "directory or set VIMI_PARAMS=/path/to/params.yaml."
    )


def deep_merge(base: dict, override: dict) -> dict:
    """Return base with override merged in; nested dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}: MLflow params, benchmark tables."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def load_params(path: Path | None = None, profile: str | None = None) -> dict[str, Any]:
    """params.yaml with the chosen profile's overrides applied (the profile key is kept)."""
    path = path or find_params_file()
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        raise VimiError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise VimiError(f"{path} must hold a mapping of sections, found {type(raw).__name__}.")
    profiles = raw.get("profiles") or {}
    chosen = profile or raw.get("profile") or "tiny"
    if chosen not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise VimiError(f"Unknown profile {chosen!r} in {path}; profiles defined: {known}.")
    from vimi.params import check_params

    base = {k: v for k, v in raw.items() if k != "profiles"}
    for name, overrides in profiles.items():  # a typo in any profile is an error, chosen or not
        if name != chosen:
            check_params({**deep_merge(base, overrides or {}), "profile": name}, f"{path} (profile {name})")
    return check_params({**deep_merge(base, profiles[chosen] or {}), "profile": chosen}, str(path))


class ScopedParams(dict):
    """A step's view of params.yaml: the keys the step map declares for it and nothing else.

    A key declared whole (`stage1`) reads as the plain section; a dotted one (`retrieval.k`) leaves its
    section holding just that key. Reading a key that is not declared is an error naming the step, so a
    step cannot depend on a parameter its code version and its DVC stage do not know of. Missing keys
    that are declared read as absent (`get` returns its default), as in the full params."""

    def __init__(self, content: dict[str, Any], declared: dict[str, Any], step: str, prefix: str = "") -> None:
        super().__init__(content)
        self._declared = declared  # key -> True (whole) or the nested declarations
        self._step = step
        self._prefix = prefix

    def _check(self, key: Any) -> None:
        if key not in self._declared:
            known = ", ".join(self._prefix + k for k in self._declared) or "nothing"
            raise VimiError(
                f"Step {self._step} read params key {self._prefix}{key}, which the step map (vimi/steps.py) "
                f"does not declare for it; it declares: {known}."
            )

    def __getitem__(self, key: Any) -> Any:
        self._check(key)
        return super().__getitem__(key)

    def get(self, key: Any, default: Any = None) -> Any:
        self._check(key)
        return super().get(key, default)

    def __contains__(self, key: object) -> bool:
        self._check(key)
        return super().__contains__(key)

    def __deepcopy__(self, memo: dict) -> ScopedParams:
        return ScopedParams(copy.deepcopy(dict(self), memo), self._declared, self._step, self._prefix)

    @classmethod
    def of(cls, params: dict[str, Any], keys: tuple[str, ...], step: str) -> ScopedParams:
        declared: dict[str, Any] = {}
        for key in keys:
            node = declared
            *parents, last = key.split(".")
            for part in parents:
                if node.get(part) is True:
                    break
                node = node.setdefault(part, {})
            else:
                node[last] = True
        return cls._build(params, declared, step, "")

    @classmethod
    def _build(cls, params: dict[str, Any], declared: dict[str, Any], step: str, prefix: str) -> ScopedParams:
        content: dict[str, Any] = {}
        for key, whole in declared.items():
            if key not in params:
                continue
            value = params[key]
            if whole is True or not isinstance(value, dict):
                content[key] = copy.deepcopy(value)
            else:
                content[key] = cls._build(value, whole, step, f"{prefix}{key}.")
        return cls(content, declared, step, prefix)


@dataclass
class Settings:
    """Resolved parameters and locations for one pipeline."""

    params: dict[str, Any]
    root: Path
    data_dir: Path
    params_path: Path | None = None
    # Where pipeline directories live (default <root>/models); the ablation keeps its models apart.
    models_dir: Path | None = None
    # Tracking overrides: every run goes to this MLflow experiment, as a child of this run (the ablation).
    experiment: str | None = None
    parent_run_id: str | None = None
    # The MLflow tracking store (default: MLFLOW_TRACKING_URI, else sqlite in <root>/mlflow/).
    tracking_uri: str | None = None
    # Where the Lance datasets live when not in data_dir: another directory or an object store
    # (s3://bucket/prefix, gs://, az://; Lance's own storage). The world catalog, the BM25 index and
    # the step locks stay in data_dir: they need a local file system.
    lance_uri: str | None = None
    # The whole params.yaml when `params` is a step's scoped view: what a tracked run records.
    full_params: dict[str, Any] | None = None

    def scoped(self, step: str, keys: tuple[str, ...]) -> Settings:
        """These settings with `params` narrowed to the keys a step declares (ScopedParams)."""
        full = self.recorded_params
        return dataclasses.replace(self, params=ScopedParams.of(full, keys, step), full_params=full)

    @property
    def recorded_params(self) -> dict[str, Any]:
        """The whole params.yaml (profile applied), whatever the step's view: MLflow runs record it all."""
        return self.full_params if self.full_params is not None else self.params

    @classmethod
    def load(
        cls,
        profile: str | None = None,
        params_path: str | Path | None = None,
        data_dir: str | Path | None = None,
        tracking_uri: str | None = None,
        lance_uri: str | None = None,
    ) -> "Settings":
        path = Path(params_path).resolve() if params_path else find_params_file()
        params = load_params(path, profile)
        root = path.parent
        # An explicit directory (argument or VIMI_DATA_DIR) is taken relative to the working directory.
        chosen = data_dir or os.environ.get("VIMI_DATA_DIR")
        data = Path(chosen).expanduser().resolve() if chosen else root / "data"
        lance = lance_uri or os.environ.get("VIMI_LANCE_URI") or None
        if lance and not is_remote(lance):
            lance = str(dataset_location(lance).expanduser().resolve())
        elif lance:
            object_store_env()
        return cls(
            params=params,
            root=root,
            data_dir=data,
            params_path=path,
            tracking_uri=tracking_uri or None,
            lance_uri=lance,
        )

    def section(self, name: str) -> dict[str, Any]:
        value = self.params.get(name)
        if not isinstance(value, dict):
            raise VimiError(f"params.yaml has no section {name!r}.")
        return value

    @property
    def seed(self) -> int:
        return int(self.params.get("seed", 0))

    @property
    def profile(self) -> str:
        """The profile's name: a label of the run (its values are merged into every section)."""
        return str(self.recorded_params["profile"])

    def model_path(self, name: str) -> Path:
        """A pipeline or model directory under <root>/models (DVC outs); checkpoints in models/.checkpoints."""
        return (self.models_dir or self.root / "models") / name

    def path(self, name: str) -> Path:
        """Location of a named dataset (see DATASET_FILES): under the data directory, or the Lance
        datasets under lance_uri when that is set (a `upath.UPath` for an object store: it joins and
        names like a Path; read and write it through Lance and `vimi.io.lance_io`, not `open`)."""
        file = DATASET_FILES[name]
        if self.lance_uri and file.endswith(".lance"):
            return dataset_location(self.lance_uri) / file
        return self.data_dir / file

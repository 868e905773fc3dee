"""One record for both drivers: what a Dagster run makes goes into dvc.lock, what `dvc repro` makes goes
into Dagster's event log.

Dagster → DVC: after each step (after its suite, for a step that has one) the asset runs `dvc commit` on
the step's stage, the way a person does after making a stage's outputs by hand: DVC hashes the stage's
deps, params and outs into dvc.lock and keeps the outs in its cache. After `make run`, `dvc status` is
clean and `dvc repro` runs nothing.

DVC → Dagster: `sync` (run by `make repro` after `dvc repro`) reports a materialization of every stage
whose dvc.lock entry changed since it was last recorded, tagged with the code version the asset has now
and with its upstream's latest data versions, so the UI shows nothing stale. Its data version is the
digest of the outputs' hashes in dvc.lock.

What was last recorded, per stage, is the digest of its dvc.lock entry, in .dvc/tmp/dagster-record.json
(DVC's own scratch directory, never versioned). A Dagster run outside the DVC project (another data
directory, params file or profile than dvc.yaml's; VIMI_DVC_RECORD=0) records nothing in DVC, and says so
in the asset's metadata.

    python -m orchestration.dvc_record sync     # after a bare `dvc repro`
    python -m orchestration.dvc_record stale    # what the Dagster UI shows as stale
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import yaml

from orchestration import versions
from vimi.config import Settings, load_params
from vimi.errors import VimiError
from vimi.io.files import write_json
from vimi.steps import STEPS, Step, upstream_closure

STATE = ".dvc/tmp/dagster-record.json"
LOCK = ".dvc/tmp/vimi-record.lock"


def untracked_reason(settings: Settings) -> str | None:
    """Why a run with these settings is not one dvc.yaml describes (None: it is)."""
    root = settings.root
    if os.environ.get("VIMI_DVC_RECORD", "1") == "0":
        return "VIMI_DVC_RECORD=0"
    if not (root / "dvc.yaml").is_file() or not (root / ".dvc").is_dir():
        return f"{root} is not a DVC project"
    if settings.params_path and settings.params_path.name != "params.yaml":
        return f"the params file is {settings.params_path.name}, dvc.yaml's stages read params.yaml"
    if settings.data_dir != root / "data":
        return f"the data directory is {settings.data_dir}, dvc.yaml's stages write {root / 'data'}"
    if settings.lance_uri or settings.models_dir:
        return "the datasets or models live elsewhere than dvc.yaml's outs"
    raw = yaml.safe_load((root / "params.yaml").read_text()) or {}
    if settings.profile != (raw.get("profile") or "tiny"):
        return f"the run's profile is {settings.profile}, dvc.yaml's stages run params.yaml's {raw.get('profile')}"
    return None


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One recorder at a time (DVC refuses a second writer of dvc.lock rather than waiting)."""
    path = root / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    from vimi.bench.lance_dvc import dvc_binary

    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([dvc_binary(), *args], cwd=root, env=env, capture_output=True, text=True, timeout=1800)


def lock_entries(root: Path) -> dict[str, Any]:
    path = root / "dvc.lock"
    if not path.is_file():
        return {}
    return (yaml.safe_load(path.read_text()) or {}).get("stages") or {}


def _read_state(root: Path) -> dict[str, str]:
    try:
        return json.loads((root / STATE).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(root: Path, state: dict[str, str]) -> None:
    write_json(root / STATE, state)


def commit(step: Step, settings: Settings) -> str:
    """Record the step's outputs in dvc.lock (`dvc commit` of its stage); what happened, in one line for
    the asset's metadata. A failure is reported, not raised: the step's outputs are good, only DVC's
    record of them lags (and `dvc status` says so)."""
    reason = untracked_reason(settings)
    if reason:
        return f"not recorded in dvc.lock: {reason}"
    root = settings.root
    with _locked(root):
        try:
            out = _dvc(root, "commit", "--force", "--quiet", "--no-relink", step.name)
        except (VimiError, OSError, subprocess.TimeoutExpired) as exc:
            return f"not recorded in dvc.lock: {exc}"
        if out.returncode != 0:
            lines = [line for line in (out.stderr + out.stdout).splitlines() if line.strip()]
            return f"not recorded in dvc.lock: dvc commit failed ({lines[-1] if lines else out.returncode})"
        entry = lock_entries(root).get(step.name)
        state = _read_state(root)
        state[step.name] = versions.digest_json(entry)
        _write_state(root, state)
    return f"recorded in dvc.lock (stage {step.name})"


def dvc_changed(root: Path) -> set[str]:
    """The stages `dvc status` reports changed (deps, params, outs or command; no lock entry)."""
    out = _dvc(root, "status", "--json")
    if out.returncode != 0:
        said = (out.stderr or out.stdout).strip().splitlines()
        raise VimiError(f"dvc status failed: {said[-1] if said else f'exit code {out.returncode}'}")
    text = out.stdout.strip()
    return {name.split(":")[-1] for name in (json.loads(text) if text else {})}


def _data_version(entry: dict[str, Any]) -> str:
    return "dvc-" + versions.digest_json([[o.get("path"), o.get("md5")] for o in entry.get("outs") or []])


def sync(settings: Settings | None = None, instance: Any = None) -> list[str]:
    """Report to Dagster, in graph order, each stage `dvc repro` ran since it was last recorded (the ones
    up to date in DVC); the names reported."""
    import dagster as dg

    settings = settings or Settings.load()
    reason = untracked_reason(settings)
    if reason:
        raise VimiError(f"nothing to sync: {reason}")
    root = settings.root
    instance = instance or _instance()
    params = load_params(settings.params_path)  # as the definitions see it: the code versions they hold
    changed = dvc_changed(root)
    with _locked(root):
        entries, state, reported = lock_entries(root), _read_state(root), []
        for step in STEPS:
            entry = entries.get(step.name)
            if entry is None or step.name in changed or upstream_closure(step.name) & changed:
                continue
            digest = versions.digest_json(entry)
            if state.get(step.name) == digest:
                continue
            tags = {
                "dagster/code_version": versions.code_version(step.name, params),
                "dagster/data_version": _data_version(entry),
                "dagster/data_version_is_user_provided": "true",
            }
            for parent in step.upstream:
                found = instance.fetch_materializations(dg.AssetKey(parent), limit=1).records
                if not found:
                    continue
                record = found[0]
                parent_tags = record.asset_materialization.tags or {}
                if "dagster/data_version" in parent_tags:
                    tags[f"dagster/input_data_version/{parent}"] = parent_tags["dagster/data_version"]
                    tags[f"dagster/input_event_pointer/{parent}"] = str(record.storage_id)
            instance.report_runless_asset_event(
                dg.AssetMaterialization(
                    asset_key=step.name,
                    description=f"Made by `dvc repro` (stage {step.name}), recorded from dvc.lock.",
                    metadata={"made_by": "dvc repro", "dvc_stage": step.name, "command": entry.get("cmd", "")},
                    tags=tags,
                )
            )
            state[step.name] = digest
            reported.append(step.name)
        _write_state(root, state)
    return reported


def _instance() -> Any:
    """The Dagster instance of DAGSTER_HOME, the one `make run` and `make ui` use."""
    import dagster as dg

    home = os.environ.get("DAGSTER_HOME")
    if not home or not Path(home).is_dir():
        raise VimiError(
            f"DAGSTER_HOME is {'not set' if not home else f'{home}, not a directory'}: point it at the Dagster "
            "instance to record in (the Makefile sets it to .dagster)."
        )
    return dg.DagsterInstance.get()


def stale(instance: Any = None) -> dict[str, str]:
    """Each asset's status as the Dagster UI shows it (FRESH, STALE or MISSING), for the definitions as
    they load now."""
    import dagster as dg
    from dagster._utils.test.data_versions import get_stale_status_resolver

    from orchestration import assets

    loaded = dg.load_assets_from_modules([assets])
    resolver = get_stale_status_resolver(instance or _instance(), loaded)
    return {key.to_user_string(): resolver.get_status(key).value for d in loaded for key in d.keys}


def main(argv: list[str]) -> int:
    if argv[:1] not in (["sync"], ["stale"]):
        print("usage: python -m orchestration.dvc_record sync | stale [--json]", file=sys.stderr)
        return 2
    try:
        if argv[0] == "sync":
            reported = sync()
            print(
                f"Recorded in Dagster what dvc repro made: {', '.join(reported)}." if reported else "Nothing to record."
            )
            return 0
        status = stale()
    except VimiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if "--json" in argv:
        print(json.dumps(status))
    else:
        shown = [step.name for step in STEPS if status.get(step.name, "FRESH") != "FRESH"]  # graph order
        print("\n".join(f"{name}: {status[name]}" for name in shown) or "Nothing is stale.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

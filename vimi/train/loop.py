"""The one training loop (accelerate): image-encoder alignment, stage 1 and stage 2 plug a Task in.

- The same code runs on CPU, one GPU or many (`accelerate launch -m vimi.cli train stage1`): each
  process takes its slice of every global batch.
- Every training sample draws its randomness (noise, timestep, dropped conditioning) from a generator
  of (seed, its position in the global sample stream), the position that also picks its data from a
  per-epoch permutation of the seed: a run resumed from a checkpoint continues exactly as if it had
  never stopped, and a sample gets the same noise however the global batch is split over processes.
- Checkpoints (safetensors weights and EMA; optimizer/scheduler state loaded with
  weights_only=True) are written aside and renamed into place, the last `keep_checkpoints` kept.
- A loss that is not finite stops the run with the step and the last good checkpoint named.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import shutil
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch

from vimi.errors import VimiError
from vimi.io.files import read_json, replace_dir, write_json, write_text
from vimi.progress import counter

RESUME_MODES = ("auto", "always", "never")
HISTORY_HEADER = "step,loss,lr,grad_norm"


@dataclass
class LoopConfig:
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
    seed: int = 0

    @classmethod
    def from_params(cls, section: dict[str, Any], seed: int, where: str) -> "LoopConfig":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in section.items() if k in known}
        try:
            cfg = cls(**{**values, "seed": int(seed)})
            for name in (
                "steps",
                "batch_size",
                "grad_accum",
                "checkpoint_every",
                "keep_checkpoints",
                "log_every",
                "sample_every",
                "warmup_steps",
                "num_workers",
            ):
                setattr(cfg, name, int(getattr(cfg, name)))
            for name in ("lr", "weight_decay", "max_grad_norm", "ema_decay"):
                setattr(cfg, name, float(getattr(cfg, name)))
        except (TypeError, ValueError) as exc:
            raise VimiError(f"params.yaml {where}: {exc}") from None
        checks = [
            (cfg.steps >= 1, "steps >= 1"),
            (cfg.batch_size >= 1, "batch_size >= 1"),
            (cfg.grad_accum >= 1, "grad_accum >= 1"),
            (cfg.checkpoint_every >= 1, "checkpoint_every >= 1"),
            (cfg.keep_checkpoints >= 1, "keep_checkpoints >= 1"),
            (cfg.log_every >= 1, "log_every >= 1"),
            (cfg.sample_every >= 0, "sample_every >= 0 (0 = only at the end)"),
            (math.isfinite(cfg.lr) and cfg.lr > 0, "lr > 0"),
            (0 <= cfg.ema_decay < 1, "0 <= ema_decay < 1"),
            (cfg.max_grad_norm > 0, "max_grad_norm > 0"),
            (cfg.warmup_steps >= 0, "warmup_steps >= 0"),
            (cfg.mixed_precision in ("auto", "no", "bf16", "fp16"), "mixed_precision in auto|no|bf16|fp16"),
            (
                cfg.lr_schedule in ("cosine", "constant", "constant_with_warmup", "linear"),
                "lr_schedule in cosine|constant|constant_with_warmup|linear",
            ),
        ]
        bad = [need for ok, need in checks if not ok]
        if bad:
            raise VimiError(f"params.yaml {where} is out of range: need {', '.join(bad)}.")
        return cfg


class Task(Protocol):
    """What a stage plugs into the loop."""

    name: str
    model: torch.nn.Module  # the trainable module
    dataset: Any  # map-style, with __getitems__(indices) -> batch

    def to(self, device: torch.device) -> None: ...
    def loss(self, model: torch.nn.Module, batch: Any, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """The micro-batch's loss, a mean over its samples. generators[i] is sample i's own (of the seed
        and its place in the global sample stream, `sample_generators`): a task that draws every random
        choice of sample i from generators[i] trains the same weights on 2 processes × batch 4 as on
        1 × batch 8."""
        ...

    def samples(self, model: torch.nn.Module) -> np.ndarray | None: ...
    def save(self, model: torch.nn.Module, out_dir: Path) -> None: ...
    def fingerprint(self) -> dict[str, Any]: ...


@dataclass
class Tracker:
    """Callbacks into experiment tracking (MLflow) so the loop stays independent of it."""

    start: Callable[[str | None], str]  # run id to resume (or None) -> run id
    metrics: Callable[[dict[str, float], int], None]
    sample: Callable[[np.ndarray, int], Path | None]  # frames, step -> local file logged
    finish: Callable[[Path, dict[str, Any]], None]  # final pipeline dir, summary (it may add model_uri)
    fail: Callable[[str], None]


def resolve_precision(requested: str) -> str:
    """`auto`: bf16 where the hardware has fast bf16 (CUDA, or a CPU with AVX512-BF16/AMX), else fp32.
    On CPUs without it, bf16 matmuls fall back to a slow path (measured: ~10× slower than fp32)."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "no"


def _has_gpu() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


MPI_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "MV2_COMM_WORLD_SIZE", "PMIX_RANK")


def _launcher_processes() -> str:
    """--num_processes of the `accelerate launch` that started this process, where its command line
    says it; else "N"."""
    try:
        import psutil

        args = psutil.Process().parent().cmdline()
    except Exception:  # no psutil, no parent, no permission: the message says N
        return "N"
    for i, arg in enumerate(args):
        if arg == "--num_processes" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--num_processes="):
            return arg.split("=", 1)[1]
    return "N"


def check_launch() -> None:
    """Refuse `accelerate launch --cpu --num_processes N` (N > 1) without MPI: accelerate starts one
    process for it (its multi-CPU launch goes through mpirun), which would train alone while the user
    asked for N. The launcher leaves ACCELERATE_USE_CPU and MASTER_ADDR set, and no WORLD_SIZE."""
    if (
        _flag("ACCELERATE_USE_CPU")
        and os.environ.get("MASTER_ADDR")
        and not os.environ.get("WORLD_SIZE")
        and not any(os.environ.get(name) for name in MPI_SIZE_VARIABLES)
    ):
        argv = sys.argv[1:]
        command = shlex.join(argv) if argv[:1] == ["train"] else "train ..."
        n = _launcher_processes()
        raise VimiError(
            "`accelerate launch --cpu` starts a single process however many --num_processes asks for (without "
            f"mpirun): run `accelerate launch --multi_gpu --num_processes {n} -m vimi.cli {command}` instead; "
            "on a machine without a GPU it trains in that many CPU processes (gloo)."
        )


def micro_generator(seed: int, micro: int, process: int) -> torch.Generator:
    """The generator of (seed, micro-batch, process): it seeds torch's global generator for anything
    a task draws outside its per-sample generators."""
    digest = hashlib.sha256(f"{seed}:{micro}:{process}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def sample_position(micro: int, process: int, j: int, batch_size: int, processes: int) -> int:
    """Sample j of a process' micro-batch: its place in the global sample stream (what MicroBatches
    picks its data by), the same however a global batch of batch_size × processes is split."""
    return micro * batch_size * processes + process * batch_size + j


def sample_generator(seed: int, position: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:sample:{position}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def sample_generators(seed: int, micro: int, process: int, batch_size: int, processes: int) -> list[torch.Generator]:
    """One generator per sample of a process' micro-batch, of (seed, the sample's position)."""
    return [
        sample_generator(seed, sample_position(micro, process, j, batch_size, processes)) for j in range(batch_size)
    ]


class MicroBatches(torch.utils.data.Sampler):
    """Index lists of this process' part of every global batch, from micro-batch `start` on."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int, process: int = 0, processes: int = 1):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.process, self.processes = start, stop, process, processes

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[int]]:
        for micro in range(self.start, self.stop):
            positions = [
                sample_position(micro, self.process, j, self.batch_size, self.processes) for j in range(self.batch_size)
            ]
            yield [int(self._order(p // self.n)[p % self.n]) for p in positions]


def _checkpoints(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())


def _save_checkpoint(root: Path, step: int, model, ema, optimizer, scheduler, state: dict[str, Any], keep: int) -> Path:
    from safetensors.torch import save_file

    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    ema_state = ema.state_dict()
    shadow = ema_state.pop("shadow_params")
    save_file({f"{i}": t.detach().contiguous().cpu() for i, t in enumerate(shadow)}, tmp / "ema.safetensors")
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "ema": ema_state},
        tmp / "trainer_state.pt",
    )
    (tmp / "state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    replace_dir(tmp, final)
    for old in _checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(path: Path, model, ema, optimizer, scheduler) -> dict[str, Any]:
    from safetensors.torch import load_file

    # Every file is read before anything is loaded, so a checkpoint that fails to read changes nothing.
    weights = load_file(path / "model.safetensors")
    trainer = torch.load(path / "trainer_state.pt", weights_only=True, map_location="cpu")
    shadow = load_file(path / "ema.safetensors")
    state = json.loads((path / "state.json").read_text())
    model.load_state_dict(weights)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    ema.load_state_dict({**trainer["ema"], "shadow_params": [shadow[str(i)] for i in range(len(shadow))]})
    return state


def _history_step(line: str) -> int | None:
    """The step of a history.csv row, None for a row a kill cut short."""
    fields = line.split(",")
    if len(fields) != HISTORY_HEADER.count(",") + 1:
        return None
    try:
        float(fields[-1])
        return int(fields[0])
    except ValueError:
        return None


def _fingerprint(task: Task, cfg: LoopConfig) -> str:
    config = {
        "task": task.fingerprint(),
        "loop": {k: v for k, v in asdict(cfg).items() if k not in ("num_workers", "log_every", "sample_every")},
    }
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train(
    task: Task,
    cfg: LoopConfig,
    checkpoint_dir: Path,
    out_dir: Path,
    tracker: Tracker | None = None,
    resume: str = "auto",
) -> dict[str, Any]:
    """Train task.model for cfg.steps optimizer steps; write the final pipeline to out_dir (atomically)."""
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    if resume not in RESUME_MODES:
        raise VimiError(f"resume must be one of {', '.join(RESUME_MODES)}, got {resume!r}.")
    precision = resolve_precision(cfg.mixed_precision)
    check_launch()
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    # Several processes on a machine without a GPU: gloo on the CPU (accelerate would otherwise see
    # each process alone, as it does without ACCELERATE_USE_CPU=1).
    cpu = launched > 1 and not _has_gpu()
    accelerator = Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum, cpu=cpu)
    if launched > 1 and accelerator.num_processes != launched:
        # Each process would think itself the only one and clobber the others' checkpoints.
        raise VimiError(
            f"Launched as {launched} processes, but accelerate sees {accelerator.num_processes} "
            f"({accelerator.distributed_type.value}): check the launcher's settings (docs/scaling.md, "
            '"Training on many GPUs and nodes").'
        )
    device = accelerator.device
    task.to(device)
    fingerprint = _fingerprint(task, cfg)
    checkpoint_dir = Path(checkpoint_dir)
    run_file = checkpoint_dir / "run.json"

    # What to resume: an unfinished run of the same configuration.
    run_info = read_json(run_file, {})  # an unreadable run.json (cut short by a kill) is no run
    if not isinstance(run_info, dict):
        run_info = {}
    resumable = (
        run_info.get("fingerprint") == fingerprint
        and not run_info.get("finished")
        and bool(_checkpoints(checkpoint_dir))
    )
    if resume == "always" and not resumable:
        why = (
            "its configuration changed"
            if run_info.get("fingerprint") not in (None, fingerprint)
            else "it finished"
            if run_info.get("finished")
            else "there is no checkpoint"
        )
        raise VimiError(f"Nothing to resume in {checkpoint_dir}: {why}. Run without --resume to start afresh.")
    if not (resume != "never" and resumable):
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        run_info = {}
    checkpoint_dir.mkdir(parents=True, exist_ok=True)

    model = task.model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        cfg.lr_schedule,
        optimizer,
        num_warmup_steps=cfg.warmup_steps * accelerator.num_processes,
        num_training_steps=cfg.steps * accelerator.num_processes,
    )
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True)
    start_step, resumed_from = 0, None
    if run_info:
        # The newest checkpoint that reads whole: one cut short (a zero-length file, a full disk) is
        # skipped for the one before it.
        unreadable = []
        for last in reversed(_checkpoints(checkpoint_dir)):
            try:
                state = _load_checkpoint(last, model, ema, optimizer, scheduler)
            except Exception as exc:  # safetensors, torch.load and json each fail in their own way
                unreadable.append(f"{last.name} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
                continue
            start_step, resumed_from = int(state["step"]), str(last)
            break
        for bad in unreadable:
            print(f"Checkpoint {bad} in {checkpoint_dir} is unreadable; skipped.", file=sys.stderr, flush=True)
        if resumed_from is None:
            if resume == "always":
                raise VimiError(
                    f"Nothing to resume in {checkpoint_dir}: no checkpoint reads whole ({'; '.join(unreadable)})."
                    " Run without --resume to start afresh."
                )
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            checkpoint_dir.mkdir(parents=True)
            run_info = {}
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    ema.to(device)

    # The logged figures, kept beside the checkpoints so a resumed run's curve is whole; rows past the
    # checkpoint resumed from were logged by the killed process and are logged again.
    history = checkpoint_dir / "history.csv"
    if accelerator.is_main_process:
        kept = [
            line
            for line in (history.read_text().splitlines()[1:] if run_info and history.is_file() else [])
            if _history_step(line) is not None and _history_step(line) <= start_step
        ]
        write_text(history, "\n".join([HISTORY_HEADER, *kept]) + "\n")
    run_id = tracker.start(run_info.get("run_id")) if tracker and accelerator.is_main_process else None
    run_info = {"fingerprint": fingerprint, "run_id": run_id, "finished": False, "task": task.name}
    if accelerator.is_main_process:
        write_json(run_file, run_info)

    sampler = MicroBatches(
        len(task.dataset),
        cfg.batch_size,
        cfg.seed,
        start_step * cfg.grad_accum,
        cfg.steps * cfg.grad_accum,
        accelerator.process_index,
        accelerator.num_processes,
    )
    from vimi.data.clips import collate_batch

    loader = torch.utils.data.DataLoader(
        task.dataset, batch_sampler=sampler, collate_fn=collate_batch, num_workers=cfg.num_workers
    )
    clips_per_step = cfg.batch_size * cfg.grad_accum * accelerator.num_processes
    losses: list[float] = []
    last_loss, last_good = float("nan"), (Path(resumed_from).name if resumed_from else None)
    step, micro = start_step, start_step * cfg.grad_accum
    window_start, window_steps, load_seconds, compute_seconds = time.perf_counter(), 0, 0.0, 0.0
    busy_seconds = 0.0  # loading + stepping, without checkpoints and samples
    grad_norm = torch.tensor(0.0)
    model.train()
    bars = ExitStack()
    tick = (
        bars.enter_context(counter(cfg.steps - start_step, f"training {task.name}", "step"))
        if accelerator.is_main_process
        else (lambda n: None)
    )
    batches = iter(loader)
    try:
        while step < cfg.steps:
            t_load = time.perf_counter()
            batch = next(batches)
            t_compute = time.perf_counter()
            load_seconds += t_compute - t_load
            torch.manual_seed(micro_generator(cfg.seed, micro, accelerator.process_index).initial_seed() % (2**63))
            generators = sample_generators(
                cfg.seed, micro, accelerator.process_index, cfg.batch_size, accelerator.num_processes
            )
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss = task.loss(model, batch, generators)
                if not torch.isfinite(loss.detach()):
                    where = (
                        f"; the last good checkpoint ({last_good}) is kept in {checkpoint_dir}"
                        if last_good
                        else "; no checkpoint had been written yet"
                    )
                    raise VimiError(
                        f"Training {task.name} diverged: the loss is {loss.item()} at step {step + 1}"
                        f"{where}. Lower the learning rate (params.yaml) and resume with --resume."
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            compute_seconds += time.perf_counter() - t_compute
            busy_seconds += time.perf_counter() - t_load
            micro += 1
            # the logged loss is the global batch's: every process' share averaged
            losses.append(
                float(accelerator.reduce(loss.detach(), "mean"))
                if accelerator.num_processes > 1
                else float(loss.detach())
            )
            if not accelerator.sync_gradients:
                continue
            step += 1
            ema.step(params)
            last_loss = float(np.mean(losses[-cfg.grad_accum :]))
            window_steps += 1
            tick(1)
            if step % cfg.log_every == 0 or step == cfg.steps:
                elapsed = time.perf_counter() - window_start
                metrics = {
                    "loss": float(np.mean(losses[-cfg.log_every * cfg.grad_accum :])),
                    "lr": float(scheduler.get_last_lr()[0]),
                    "grad_norm": float(grad_norm),
                    "clips_per_s": window_steps * clips_per_step / max(elapsed, 1e-9),
                    "loader_share": load_seconds / max(load_seconds + compute_seconds, 1e-9),
                    "ema_decay": float(ema.cur_decay_value or 0.0),
                }
                if accelerator.is_main_process:
                    with history.open("a") as f:
                        f.write(f"{step},{metrics['loss']:.6g},{metrics['lr']:.6g},{metrics['grad_norm']:.6g}\n")
                if tracker and accelerator.is_main_process:
                    tracker.metrics(metrics, step)
                window_start, window_steps, load_seconds, compute_seconds = time.perf_counter(), 0, 0.0, 0.0
            if step % cfg.checkpoint_every == 0 and step < cfg.steps and accelerator.is_main_process:
                last_good = _save_checkpoint(
                    checkpoint_dir,
                    step,
                    accelerator.unwrap_model(model),
                    ema,
                    optimizer,
                    scheduler,
                    {"loss": last_loss, "run_id": run_id},
                    cfg.keep_checkpoints,
                ).name
            if (
                cfg.sample_every
                and step % cfg.sample_every == 0
                and step < cfg.steps
                and tracker
                and accelerator.is_main_process
            ):
                frames = _ema_samples(task, accelerator.unwrap_model(model), ema, params)
                if frames is not None:
                    tracker.sample(frames, step)
                model.train()
    except VimiError as exc:
        if tracker and accelerator.is_main_process:
            tracker.fail(str(exc))
        raise
    finally:
        bars.close()

    summary: dict[str, Any] = {
        "steps": cfg.steps,
        "final_loss": round(last_loss, 6),
        "resumed_from": resumed_from,
        "mixed_precision": precision,
        "device": str(device),
        "run_id": run_id,
        "processes": accelerator.num_processes,
        "main_process": accelerator.is_main_process,
        "clips_per_step": clips_per_step,
        "checkpoint_dir": str(checkpoint_dir),
        "clips_per_s": round((cfg.steps - start_step) * clips_per_step / max(busy_seconds, 1e-9), 2),
    }
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        ema.store(params)
        ema.copy_to(params)  # the pipeline ships the EMA weights
        out_dir = Path(out_dir)
        tmp = out_dir.with_name(f".{out_dir.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        task.save(unwrapped, tmp)
        frames = task.samples(unwrapped)
        if frames is not None:
            from vimi.models.pipeline import save_videos

            summary["sample_gif"] = str(out_dir / "samples" / "final.gif")
            save_videos(frames, tmp / "samples" / "final", formats=("gif", "mp4"))
            if tracker:
                tracker.sample(frames, cfg.steps)
        shutil.copyfile(history, tmp / "loss.csv")  # the loss curve (DVC plots, the run report)
        (tmp / "training.json").write_text(json.dumps(summary, indent=1))
        replace_dir(tmp, out_dir)
        ema.restore(params)
        write_json(run_file, {**run_info, "finished": True})
        if tracker:
            tracker.finish(out_dir, summary)
    accelerator.wait_for_everyone()
    return summary


def _ema_samples(task: Task, model, ema, params) -> np.ndarray | None:
    ema.store(params)
    ema.copy_to(params)
    try:
        model.eval()
        return task.samples(model)
    finally:
        ema.restore(params)

"""The pretraining loop: AdamW, warm-up + cosine schedule, clipping, accumulation, validation,
metrics.jsonl, checkpoints and exact resume.

The loop sees a `Task` (batches, loss, validation) and a model; it knows nothing of FASTA or
HDF5, nor of DDP/FSDP (`sciformer.train.distributed`). Data order is a pure function of
(seed, micro-batch index) — see `sciformer.tasks` — so the data position is the step counter,
and an exact resume needs model, optimizer, scheduler, step and every rank's RNG states, all
of which a checkpoint holds. A run of N steps and a run stopped after k steps and resumed in
a fresh process give identical weights and loss curves on CPU (tests/test_resume_kill.py).

The run directory is the user's data, so `pretrain` (see `claim_run_dir`) holds an advisory
lock on it for the whole run (a second process is refused), starts a new run only in a new or
empty folder, never deletes a file it did not create, and when a new run fails before its
first checkpoint removes everything it wrote (so a corrected rerun is not blocked). A loss or
gradient norm that is NaN or infinite stops training with a one-line error naming the step,
before the optimizer applies it, and weights that are not finite are never saved.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sciformer import compiling
from sciformer.config import RunConfig, TrainConfig, read_run_config, save_config
from sciformer.errors import CheckpointError, SciformerError
from sciformer.io.atomic import make_parents, remove_created, write_json_atomic, write_text_atomic
from sciformer.io.lock import LOCK_NAME, RunLock
from sciformer.model import SciFormer
from sciformer.precision import autocast, native_cpu_bf16
from sciformer.progress import progress_bar
from sciformer.provenance import PROVENANCE, provenance
from sciformer.runs import pick_device, state_to_dict
from sciformer.tasks import Task, build_task, micro_seed
from sciformer.train import checkpoint as ckpt
from sciformer.train.data import BatchSource
from sciformer.train.distributed import Distributed, TaskStep


def warn_slow_precision(device: torch.device, precision: str) -> None:
    """One warning when bf16 autocast is asked for on a CPU that only emulates bf16."""
    if precision == "bf16" and device.type == "cpu" and not native_cpu_bf16():
        warnings.warn("train.precision=bf16: this CPU has no native bf16 matrix instructions "
                      "(AVX-512-BF16 or AMX), so autocast emulates them and trains far slower than "
                      "fp32 (`python -m benchmarks` measures both matmul speeds)", stacklevel=3)


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on biases, norms, embeddings' scale)."""
    params = [p for p in model.parameters() if p.requires_grad]  # not a frozen FNO anchor
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then cosine decay to `lr_min_ratio` at `max_steps`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class MetricsLog:
    """metrics.jsonl: one JSON object per line; on resume, lines past the step are dropped
    (and a line cut short by a kill, which is not valid JSON)."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            keep = [ln for ln in path.read_text().splitlines()
                    if _step_of(ln) is not None and _step_of(ln) <= resume_step]
            write_text_atomic(path, "".join(ln + "\n" for ln in keep))
        elif resume_step is None:
            write_text_atomic(path, "")

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


def _step_of(line: str) -> int | None:
    """The step of one metrics.jsonl line, None for a blank or partial line."""
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return None


class DivergedError(SciformerError):
    """Training produced a NaN or infinite loss, gradient norm or weight."""


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@dataclass
class Trainer:
    """Holds the pieces of one run; `fit()` runs it to `max_steps`."""

    cfg: RunConfig
    task: Task
    model: nn.Module
    run_dir: Path
    dist: Distributed
    device: torch.device
    progress: bool

    def __post_init__(self) -> None:
        self.raw_model = self.model.to(self.device)
        # DDP/FSDP wrap, and torch.compile compiles, the whole step: task.loss calls
        # model.encode / model.decode, which a compiled model's forward would never see
        self.model = self.dist.wrap(TaskStep(self.task, self.raw_model))
        self.step_fn = self.model
        if self.cfg.train.compile:
            compiling.prepare()
            self.step_fn = torch.compile(self.model)
        self.optimizer = build_optimizer(self.raw_model, self.cfg.train)  # after FSDP sharding
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.cfg.train))
        self.step, self.best = 0, math.inf
        tc = self.cfg.train
        self.batches = BatchSource(self.task, self.dist.rank, self.dist.world,
                                   self.cfg.data.num_workers, tc.max_steps * tc.grad_accum)

    # ---- state ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything but the weights that a resume needs (collective under DDP/FSDP)."""
        return {"step": self.step, "best": self.best,
                "optimizer": self.dist.optimizer_state(self.raw_model, self.optimizer),
                "scheduler": self.scheduler.state_dict(),
                "rank_rng": self.dist.gather_rng_states(),  # dropout differs per rank
                "world": self.dist.world, "fsdp": self.dist.fsdp}

    def restore(self, folder: Path) -> None:
        """Continue from a complete checkpoint folder (every rank reads the same files)."""
        tensors = ckpt.read_weights(self.raw_model, folder / ckpt.WEIGHTS)
        state = ckpt.load_train_state(folder / ckpt.STATE)
        saved = (state.get("world", 1), bool(state.get("fsdp", False)))
        if saved != (self.dist.world, self.dist.fsdp):
            raise CheckpointError(f"{folder}: saved with {saved[0]} processes (fsdp={saved[1]}), "
                                  f"resumed with {self.dist.world} (fsdp={self.dist.fsdp})")
        self.dist.load_model_state(self.raw_model, tensors)
        try:  # a state of the right structure but not of this run (e.g. another model)
            self.dist.load_optimizer_state(self.raw_model, self.optimizer, state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.dist.restore_rng(state)
        except (ValueError, KeyError, IndexError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"{folder / ckpt.STATE}: does not fit this run "
                                  f"({str(exc).splitlines()[0] if str(exc) else exc!r})") from None
        self.step, self.best = int(state["step"]), float(state["best"])

    # ---- loop -------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches; statistics averaged over ranks."""
        tc = self.cfg.train
        self.model.train()
        stats: dict[str, float] = {"loss": 0.0}
        for micro in range(tc.grad_accum):
            index = self.step * tc.grad_accum + micro  # rank r takes index * world + r
            batch = self.batches.get(index)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with self.dist.no_sync(self.model, last=micro == tc.grad_accum - 1):
                with autocast(self.device, tc.precision):
                    loss, s = self.step_fn(batch)  # TaskStep: task.loss(model, batch)
                (loss / tc.grad_accum).backward()
            stats["loss"] += float(s["loss"]) / tc.grad_accum
        grad_norm = self.dist.clip_grad_norm(self.raw_model, tc.clip_norm)  # global: same on
        if tc.clip_norm > 0 and not math.isfinite(grad_norm):  # every rank (nan: no clipping)
            raise self.diverged(self.step + 1, "gradient norm", grad_norm)  # before it is used
        try:
            self.optimizer.step()
        except RuntimeError as exc:  # an update beyond float range (a huge train.lr)
            if "overflow" not in str(exc):
                raise
            raise self.diverged(self.step + 1, "an update", math.inf) from None
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        stats.update(grad_norm=float(grad_norm), lr=self.scheduler.get_last_lr()[0])
        stats = self.dist.mean(stats)
        if not math.isfinite(stats["loss"]):
            raise self.diverged(self.step, "loss", stats["loss"])
        return stats

    def diverged(self, step: int, what: str, value: float) -> DivergedError:
        """The one-line error for a non-finite `what` at `step` (1-based, as logged)."""
        latest = ckpt.latest_checkpoint(self.run_dir)
        kept = (f"{self.run_dir} keeps the checkpoint of step {int(latest.name.split('_')[1])}"
                if latest is not None else "nothing was saved")
        return DivergedError(
            f"training diverged at step {step}: {what} is {value} (lower train.lr, "
            f"now {self.cfg.train.lr:g}, or raise train.warmup_steps); {kept}")

    def check_finite_weights(self) -> None:
        """DivergedError unless every weight is finite (all ranks agree: one collective)."""
        local = [p.to_local() if hasattr(p, "to_local") else p  # this rank's FSDP shard
                 for p in self.raw_model.parameters()]
        bad = any(not bool(torch.isfinite(p).all()) for p in local)
        if self.dist.mean({"bad": float(bad)})["bad"] > 0:
            raise self.diverged(self.step, "a weight", math.nan)

    def validate(self) -> dict[str, float]:
        """Held-out statistics (each example counted once, see `Distributed.validate`)."""
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.cfg.train.precision):
            return self.dist.validate(self.task, self.raw_model)

    def fit(self) -> dict[str, float]:
        """Train to `max_steps`, logging, validating and checkpointing; final validation.
        Batch workers and the progress bar are closed however it ends."""
        tc = self.cfg.train
        log = MetricsLog(self.run_dir / "metrics.jsonl", self.step) if self.dist.is_main else None
        bar = progress_bar(tc.max_steps, "pretrain", "step", self.progress, initial=self.step)
        try:
            return self._loop(log, bar)
        finally:
            self.batches.close()
            bar.close()

    def _loop(self, log: MetricsLog | None, bar: Any) -> dict[str, float]:
        tc = self.cfg.train
        last_val: dict[str, float] = {}
        t0, seen = time.perf_counter(), 0
        while self.step < tc.max_steps:
            stats = self.train_step()
            seen += 1
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}")
            record: dict[str, Any] = {}
            if self.step % tc.log_every == 0 or self.step == tc.max_steps:
                record = {"step": self.step, **stats,
                          "steps_per_s": seen / (time.perf_counter() - t0)}
            if self.step % tc.eval_every == 0 or self.step == tc.max_steps:
                last_val = self.validate()
                record = {"step": self.step, **stats, **record, **last_val}
                bar.set_postfix(loss=f"{stats['loss']:.3f}", val=f"{last_val['val_loss']:.3f}")
            if record and log is not None:
                log.write(record)
            if self.step % tc.checkpoint_every == 0 or self.step == tc.max_steps:
                self.save(last_val)
        return last_val

    def save(self, val: dict[str, float]) -> None:
        """Checkpoint the step (rank 0 writes; every rank takes part in the gathers); weights
        that are not finite are refused."""
        self.check_finite_weights()
        is_best = bool(val) and val["val_loss"] < self.best
        if is_best:
            self.best = val["val_loss"]
        weights = self.dist.model_state(self.raw_model)  # collective under FSDP
        state = self.state()  # collective under DDP/FSDP: every rank gathers
        if self.dist.is_main:
            ckpt.save_checkpoint(self.run_dir, weights, state, self.step,
                                 self.cfg.train.keep_checkpoints, best=is_best)
        self.dist.barrier()


def prepare_run_dir(run_dir: Path, resume: bool) -> Path | None:
    """Check the run directory; return the checkpoint to resume from (or None).

    A run killed before its first checkpoint resumes from step 0 with its saved config.
    """
    if resume:
        latest = ckpt.latest_checkpoint(run_dir)
        if latest is None and not (run_dir / ckpt.CONFIG).exists():
            raise CheckpointError(f"{run_dir}: nothing to resume (no complete checkpoint in "
                                  f"{run_dir / 'checkpoints'})")
        if latest is None:
            warnings.warn(f"{run_dir}: no complete checkpoint yet; starting again from step 0",
                          UserWarning, stacklevel=2)
        return latest
    if (run_dir / ckpt.CONFIG).exists():
        raise SciformerError(f"{run_dir}: already holds a run; pass --resume to continue it "
                             "or choose another --out-dir")
    return None


def check_same_data(run_dir: Path, task: Task) -> None:
    """A resume must train on the data the run started with: the split the task computes
    now (record counts, held-out ids or trajectories, and content fingerprints where the task
    records them) must equal split.json; only the file paths may differ (moved data)."""
    path = run_dir / "split.json"
    if not path.exists():
        return  # killed before split.json was written: it is written again from this data
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    now = json.loads(json.dumps(task.split()))  # as it would be written
    for key in sorted((set(saved) | set(now)) - {"files"}):
        if saved.get(key) != now.get(key):
            raise CheckpointError(f"{run_dir}: --resume with other data than the run was "
                                  f"trained on (split.json {key!r} differs); resume with the "
                                  "same files, or start a new run in another --out-dir")


def build_trainer(data: list[str | Path], cfg: RunConfig, run_dir: str | Path,
                  dist: Distributed, *, resume: bool = False,
                  progress: bool | None = None) -> Trainer:
    """Everything `pretrain` sets up before `fit()`: task, model, wrapping, restored state."""
    run_dir = Path(run_dir)
    folder = prepare_run_dir(run_dir, resume)
    dist.barrier()  # every rank has looked at the run directory before rank 0 writes to it
    if resume:
        saved, _ = read_run_config(run_dir / ckpt.CONFIG)
        saved.train.max_steps = cfg.train.max_steps  # the only thing a resume may change
        cfg = saved
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.init_from and not resume:  # fine-tuning: the source run's architecture
        from sciformer.train.finetune import finetune_config

        cfg = finetune_config(cfg)
    if progress is None:
        progress = sys.stderr.isatty()
    task = build_task(cfg, list(data), folder, progress and dist.is_main)
    if resume:
        check_same_data(run_dir, task)
    cfg = task.cfg  # completed for the task (derived model fields)
    seed_everything(cfg.train.seed)  # same initial weights on every rank (FSDP needs it)
    model = SciFormer(cfg.model)
    if cfg.train.init_from and folder is None:
        from sciformer.train.finetune import load_init_weights

        load_init_weights(model, cfg.train.init_from)
    if hasattr(task, "init_model"):  # parts fitted on this run's data; a restore overwrites them
        task.init_model(model)
    seed_everything(micro_seed(cfg.train.seed, dist.rank, salt=7))  # dropout differs per rank
    device = dist.device(pick_device(cfg.train.device))
    if dist.is_main:
        warn_slow_precision(device, cfg.train.precision)
    model.checkpointing = cfg.train.checkpoint_activations
    trainer = Trainer(cfg, task, model, run_dir, dist, device, progress and dist.is_main)
    if folder is not None:
        trainer.restore(folder)
    if dist.is_main:
        ckpt.clean_partial(run_dir)
    if folder is None and dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / ckpt.CONFIG, extra=state_to_dict(task.state()))
        write_json_atomic(run_dir / "split.json", task.split())
        write_json_atomic(run_dir / PROVENANCE, provenance())
    dist.barrier()
    return trainer


#: What a run writes at the top of its directory: all a failed new run has to remove.
RUN_OUTPUTS = (ckpt.CONFIG, "split.json", PROVENANCE, "metrics.jsonl", ckpt.WEIGHTS,
               ckpt.STATE, "checkpoints")


@contextlib.contextmanager
def claim_run_dir(run_dir: Path, resume: bool) -> Iterator[None]:
    """Hold `run_dir` for one run (rank 0 only): create it (and missing parents), lock it,
    and check that a new run starts in an empty folder. If a new run then fails before its
    first checkpoint, everything it wrote is removed, then the folders it created.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise SciformerError(f"{run_dir}: is a file, not a run directory")
    created = make_parents(run_dir)
    try:
        with RunLock(run_dir):
            if not resume:
                _check_empty(run_dir)
            try:
                yield
            except BaseException:
                if not resume and ckpt.latest_checkpoint(run_dir) is None:
                    _remove_outputs(run_dir)
                raise
    finally:
        remove_created(created)  # only what is empty: a run that wrote something stays


def _check_empty(run_dir: Path) -> None:
    """A new run goes into an empty folder: never mixes with, truncates or deletes the files
    of another run or of the user."""
    if (run_dir / ckpt.CONFIG).exists():
        raise SciformerError(f"{run_dir}: already holds a run; pass --resume to continue it "
                             "or choose another --out-dir")
    others = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise SciformerError(f"{run_dir}: is not empty ({shown}) and holds no run; pretrain "
                             "writes a new run into a new or empty folder")


def _remove_outputs(run_dir: Path) -> None:
    """Remove what a new run wrote (the folder was empty when it started, and is locked)."""
    for name in RUN_OUTPUTS:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def pretrain(data: list[str | Path], cfg: RunConfig, run_dir: str | Path, *,
             resume: bool = False, progress: bool | None = None) -> dict[str, float]:
    """Pretrain on `data` files into `run_dir`; returns the final validation metrics.

    Under ``torchrun`` (WORLD_SIZE > 1) this is one rank of a data-parallel run; rank 0 holds
    the run directory (`claim_run_dir`).
    """
    dist = Distributed.from_env(cfg.train)
    run_dir = Path(run_dir)
    claim = claim_run_dir(run_dir, resume) if dist.is_main else contextlib.nullcontext()
    try:
        with claim:
            trainer = build_trainer(data, cfg, run_dir, dist, resume=resume, progress=progress)
            val = trainer.fit()
            if dist.is_main and wants_calibration(trainer, run_dir):
                from sciformer.calibrate import calibrate

                calibrate(run_dir, device=str(trainer.device))
            return val
    finally:
        dist.close()


def wants_calibration(trainer: Trainer, run_dir: Path) -> bool:
    """Whether the run ends by fitting its spread recalibration (`sciformer.calibrate`): a
    forecasting run with `train.calibrate` and validation trajectories of its training files
    to fit it on (split.json `heldout_origin`; a zoo corpus, split by system, has none)."""
    if not (trainer.cfg.train.calibrate and trainer.task.name == "forecast"):
        return False
    from sciformer.runs import read_split

    return bool(read_split(run_dir).get("heldout_origin"))

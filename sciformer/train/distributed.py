"""Process-group plumbing for data-parallel training, kept out of the model and the loop.

Modes (torchtitan keeps parallelism in its own module; so do we):

- one process: every method is a cheap no-op;
- DDP: under ``torchrun`` (WORLD_SIZE > 1) the group is initialised from the environment (gloo
  on CPU, nccl on GPU) and the training step is wrapped in DistributedDataParallel;
- FSDP2: with ``train.fsdp: true`` each layer of every ``nn.ModuleList`` and then the whole step
  are sharded with ``torch.distributed.fsdp.fully_shard`` (parameters, gradients and optimizer
  state split across ranks), for models that do not fit on one device.

The model never sees any of this: `TaskStep` runs ``task.loss(model, batch)`` inside its
``forward``, so DDP's gradient hooks and FSDP's gather/reshard hooks see the whole step even
though the tasks call ``model.encode``/``model.decode`` rather than ``model(...)``.

Data: the loop asks rank r for micro-batch ``index * world + r`` of the task's seeded stream,
so ranks take disjoint batches of one global order (a new order every epoch, from the shared
seed), masking randomness differs per rank, and N ranks with ``grad_accum = a`` see exactly
the batches of one process with ``grad_accum = a * N`` (the equivalence the tests check).

Validation: rank 0 scores the whole held-out set once with the unwrapped model and broadcasts
the numbers, so no example is counted twice and none is padded in (a sharded
``DistributedSampler`` pads the last shard with repeats). Under FSDP every rank runs the same
validation (each layer's parameters are gathered collectively) and gets the same numbers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from sciformer.config import TrainConfig
from sciformer.errors import SciformerError


class TaskStep(nn.Module):
    """`forward(batch)` = ``task.loss(model, batch)``: the unit that DDP/FSDP wrap."""

    def __init__(self, task: Any, model: nn.Module) -> None:
        super().__init__()
        self.task = task
        self.model = model

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        return self.task.loss(self.model, batch)


@dataclass
class Distributed:
    """This process's place in the group, and the collectives the loop needs."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""  # "" (one process) | "gloo" | "nccl"
    fsdp: bool = False
    _sharded: nn.Module | None = None  # the FSDP root, for gathering its own parameters

    @classmethod
    def from_env(cls, cfg: TrainConfig) -> Distributed:
        """One process unless WORLD_SIZE > 1 (set by torchrun); then join the process group."""
        world = check_launch_env()
        if world <= 1:
            return cls()
        use_nccl = torch.cuda.is_available() and cfg.device != "cpu"
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_nccl else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                   dist.get_backend(), cfg.fsdp)

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes logs and checkpoints."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: cuda:LOCAL_RANK under a multi-process GPU run."""
        if device.type == "cuda" and self.world > 1:
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def _comm_device(self) -> torch.device:
        """Where small tensors for collectives live (nccl needs them on the GPU)."""
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    # ---- wrapping -----------------------------------------------------------------------
    def wrap(self, step: TaskStep) -> nn.Module:
        """The step as the loop will call it: plain, DDP-wrapped or FSDP2-sharded."""
        if self.world <= 1:
            return step
        if self.fsdp:
            return self._fully_shard(step)
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if next(step.parameters()).is_cuda else None
        return DistributedDataParallel(step, device_ids=ids)  # broadcasts rank 0's weights

    def _fully_shard(self, step: TaskStep) -> nn.Module:
        """FSDP2: one shard group per layer (each ModuleList entry), then the rest at the root."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        device = next(step.parameters()).device
        mesh = init_device_mesh(device.type, (self.world,))
        layers = [layer for m in step.modules() if isinstance(m, nn.ModuleList) for layer in m]
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        self._sharded = fully_shard(step, mesh=mesh)
        return self._sharded

    def no_sync(self, step: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch."""
        if self.world <= 1:
            return contextlib.nullcontext()
        if self.fsdp:
            step.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last else step.no_sync()

    def clip_grad_norm(self, model: nn.Module, max_norm: float) -> float:
        """Clip by global gradient norm (over all shards under FSDP); the norm before clipping."""
        if max_norm <= 0:
            return float("nan")
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
            norm = norm.full_tensor()
        return float(norm)

    # ---- statistics ---------------------------------------------------------------------
    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        """Average float statistics over ranks (identical dict on every rank)."""
        if self.world <= 1:
            return stats
        keys = sorted(stats)
        t = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist())}

    def validate(self, task: Any, model: nn.Module) -> dict[str, float]:
        """Held-out statistics over the whole held-out set, each example counted once."""
        if self.fsdp and self.world > 1:  # collective: every rank gathers every layer
            self._sharded.unshard()  # the root's own parameters (embeddings, norms, heads)
            try:
                return task.validate(model)
            finally:
                self._sharded.reshard()
        out = [task.validate(model) if self.is_main else None]
        if self.world > 1:
            dist.broadcast_object_list(out, src=0, device=self._comm_device())
        return out[0]

    # ---- state for checkpoints ----------------------------------------------------------
    def model_state(self, model: nn.Module) -> dict[str, Tensor]:
        """Full, contiguous CPU weights (gathered from the shards under FSDP: collective)."""
        out = {}
        for name, value in model.state_dict().items():
            if hasattr(value, "full_tensor"):
                value = value.full_tensor()
            out[name] = value.detach().to("cpu").contiguous()
        return out

    def load_model_state(self, model: nn.Module, tensors: dict[str, Tensor]) -> None:
        """Load full weights (every rank holds them) into a plain, replicated or sharded model."""
        if self.fsdp and self.world > 1:
            import torch.distributed.checkpoint.state_dict as dsd

            dsd.set_model_state_dict(model, tensors,
                                     options=dsd.StateDictOptions(full_state_dict=True))
        else:
            model.load_state_dict(tensors)

    def optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's state dict; under FSDP the full one, keyed by parameter name."""
        if not (self.fsdp and self.world > 1):
            return optimizer.state_dict()  # replicated: rank 0's copy is everyone's
        import torch.distributed.checkpoint.state_dict as dsd

        opts = dsd.StateDictOptions(full_state_dict=True, cpu_offload=True)
        return dsd.get_optimizer_state_dict(model, optimizer, options=opts)

    def load_optimizer_state(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                             state: dict) -> None:
        """Inverse of `optimizer_state` (every rank reads the same saved dict)."""
        if not (self.fsdp and self.world > 1):
            optimizer.load_state_dict(state)
            return
        import torch.distributed.checkpoint.state_dict as dsd

        dsd.set_optimizer_state_dict(model, optimizer, state,
                                     options=dsd.StateDictOptions(full_state_dict=True))

    def gather_rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG states (torch, CUDA, numpy, python), gathered on every rank."""
        mine = rng_state()
        if self.world <= 1:
            return [mine]
        states: list[Any] = [None] * self.world
        dist.all_gather_object(states, mine)
        return states

    def restore_rng(self, state: dict[str, Any]) -> None:
        """Put back this rank's RNG states from a train state saved by `gather_rng_states`."""
        set_rng_state(state["rank_rng"][self.rank])

    # ---- lifetime -----------------------------------------------------------------------
    def barrier(self) -> None:
        """Wait for every rank (no-op alone)."""
        if self.world > 1:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def close(self) -> None:
        """Leave the process group."""
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def rng_state() -> dict[str, Any]:
    """This process's RNG states in types that load with ``torch.load(weights_only=True)``."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this rank's current device
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `rng_state` (older checkpoints may hold a bare torch state tensor)."""
    if isinstance(state, Tensor):
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["torch"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


#: What torchrun (and `launch`) set besides WORLD_SIZE; all are needed to join the group.
LAUNCH_VARS = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def check_launch_env() -> int:
    """The number of processes the environment says this run has (1 without WORLD_SIZE).

    A WORLD_SIZE or RANK left in the shell (a job script, an earlier torchrun session)
    without the rest of torchrun's variables is a one-line `SciformerError`, not a failed
    rendezvous or a rank that trains silently.
    """
    env = os.environ
    text = env.get("WORLD_SIZE", "1")
    try:
        world = int(text)
    except ValueError:
        raise SciformerError(f"environment variable WORLD_SIZE={text!r} is not a number of "
                             "processes; unset it (sciformer --nproc N starts processes itself)"
                             ) from None
    if world < 1:
        raise SciformerError(f"environment variable WORLD_SIZE={text} must be at least 1")
    if world > 1:
        missing = [k for k in LAUNCH_VARS if k not in env]
        if missing:
            raise SciformerError(f"environment variable WORLD_SIZE={world} is set but "
                                 f"{', '.join(missing)} are not: this is not a torchrun "
                                 "launch; unset WORLD_SIZE, or pass --nproc N")
    elif env.get("RANK", "0") != "0":
        raise SciformerError(f"environment variable RANK={env['RANK']} is set without "
                             "WORLD_SIZE > 1: this is not a torchrun launch; unset RANK")
    return world


def launch(nproc: int, args: list[str]) -> int:
    """Run ``python -m sciformer ARGS`` in `nproc` processes on this machine, as ``torchrun
    --standalone --nproc-per-node=N`` would; returns 0 or 1 (a worker failed)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if "OMP_NUM_THREADS" not in os.environ:  # N processes x all cores oversubscribes the CPU
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    try:
        elastic_launch(config, sys.executable)("-m", "sciformer", *args)
    except ChildFailedError:
        return 1  # the workers have printed their own one-line errors
    return 0

"""Process-group plumbing for data-parallel training (DDP), kept out of model and loop.

Single process: every method is a no-op. Under `torchrun` (WORLD_SIZE > 1) the process group
is initialised from the environment (gloo on CPU, nccl on GPU), the model is wrapped in
DistributedDataParallel, statistics are averaged across ranks and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sciformer.config import TrainConfig


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, cfg: TrainConfig) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            use_nccl = torch.cuda.is_available() and cfg.device != "cpu"
            dist.init_process_group(backend="nccl" if use_nccl else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        if device.type == "cuda" and self.world > 1:
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world <= 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if next(model.parameters()).is_cuda else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on all but the last micro-batch of an accumulation."""
        if self.world > 1 and not last:
            return model.no_sync()
        return contextlib.nullcontext()

    def mean(self, stats: dict[str, float]) -> dict[str, float]:
        if self.world <= 1:
            return stats
        keys = sorted(stats)
        t = torch.tensor([stats[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist())}

    def validate(self, task: Any, model: nn.Module) -> dict[str, float]:
        """Held-out statistics; computed once on rank 0 and broadcast (no double counting)."""
        out = [task.validate(model) if self.is_main else None]
        if self.world > 1:
            dist.broadcast_object_list(out, src=0)
        return out[0]

    def gather_rng_states(self) -> list[torch.Tensor]:
        """Every rank's torch RNG state (dropout differs per rank), gathered on all ranks."""
        state = torch.get_rng_state()
        if self.world <= 1:
            return [state]
        states = [torch.empty_like(state) for _ in range(self.world)]
        dist.all_gather(states, state)
        return states

    def restore_rng(self, state: dict[str, Any]) -> None:
        torch.set_rng_state(state["rank_rng"][self.rank])
        if "cuda" in state["rng"] and torch.cuda.is_available() and self.world <= 1:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

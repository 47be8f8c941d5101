"""Tasks turn files into batches and losses: masked residues (FASTA) and forecasting (HDF5).

A task is what the training loop talks to. Its contract:

- ``cfg``: the RunConfig completed for this task (`sciformer.config_tasks.for_task`: derived model
  fields filled in, settings of the other task refused); the user's config is not modified;
- ``state()``: the typed task state (`sciformer.runs.MaskedState` / `ForecastState`) saved in
  config.json so that inference can rebuild tokenizers and baselines;
- ``split()``: the held-out indices (split.json);
- ``batch(index, rank, world)``: micro-batch number ``index`` of the training stream, a pure
  function of (seed, index), so a resumed run sees exactly the batches it would have seen;
- ``loss(model, batch)``: scalar loss and a dict of float statistics;
- ``validate(model)``: held-out statistics, deterministic;
- ``init_model(model)`` (optional): give a new (or fine-tuned) model the parts fitted on this
  run's training data before the first step (the masked task's composition prior, the
  forecast task's NVAR or FNO anchor); a resumed run restores them from its checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from sciformer.config import RunConfig
from sciformer.config_tasks import for_task
from sciformer.errors import ConfigError, InputError
from sciformer.runs import TaskState

#: training trajectories read for the normalisation statistics and the anchor fits, at most
MAX_STAT_TRAJECTORIES = 256
FASTA_SUFFIXES = (".fa", ".fasta", ".faa", ".fas", ".fna")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nc")


class Task(Protocol):
    name: str
    cfg: RunConfig

    def state(self) -> TaskState: ...

    def split(self) -> dict[str, Any]: ...

    def batch(self, index: int, rank: int = 0, world: int = 1) -> dict[str, torch.Tensor]: ...

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to back-propagate and detached statistics (tensors, so a compiled step
        needs no host sync; the loop reads them as floats)."""

    def validate(self, model: torch.nn.Module) -> dict[str, float]: ...


def infer_task(paths: list[str | Path]) -> str:
    """'masked' for FASTA files, 'forecast' for HDF5 trajectories (by suffix, .gz allowed)."""
    kinds = set()
    for p in map(Path, paths):
        suffixes = [s.lower() for s in p.suffixes]
        if suffixes and suffixes[-1] == ".gz":
            suffixes = suffixes[:-1]
        last = suffixes[-1] if suffixes else ""
        if last in FASTA_SUFFIXES:
            kinds.add("masked")
        elif last in HDF5_SUFFIXES:
            kinds.add("forecast")
        else:
            raise InputError(f"{p}: cannot tell the data type from the suffix '{last}' "
                             f"(FASTA: {' '.join(FASTA_SUFFIXES)}; HDF5: {' '.join(HDF5_SUFFIXES)})")
    if len(kinds) > 1:
        raise InputError("cannot pretrain on FASTA and HDF5 files together: "
                         + ", ".join(map(str, paths)))
    return kinds.pop()


def build_task(cfg: RunConfig, paths: list[str | Path], restore_from: Path | None = None,
               progress: bool = False) -> Task:
    """The task for these files (or cfg.data.task when set). `restore_from`: the checkpoint
    folder a resumed run continues from (parts fitted on the data that are expensive to fit
    again, the FNO anchor, are read from it); `progress`: bars for such fits."""
    name = infer_task(paths) if cfg.data.task == "auto" else cfg.data.task
    if name in ("masked", "forecast"):
        for_task(cfg, name)  # refuse settings of the other task before reading any data
    if name == "masked":
        from sciformer.tasks.masked import MaskedTask

        return MaskedTask(cfg, [Path(p) for p in paths])
    if name == "forecast":
        from sciformer.tasks.forecast import ForecastTask
        from sciformer.tasks.zoo import ZooTask, is_zoo_corpus

        corpora = [p for p in paths if is_zoo_corpus(p)]
        if corpora and len(paths) > 1:
            raise InputError(f"{corpora[0]}: a zoo corpus is pretrained on alone, not with "
                             "other files")
        if corpora:
            return ZooTask(cfg, Path(corpora[0]))

        return ForecastTask(cfg, [Path(p) for p in paths], restore_from, progress)
    raise ConfigError(f"config field 'data.task': unknown task '{name}'")


def spread_subset(items: list[int], most: int = MAX_STAT_TRAJECTORIES) -> list[int]:
    """At most `most` of `items`, evenly spread over them (all of them when fewer)."""
    pick = np.unique(np.linspace(0, len(items) - 1, most).round().astype(int))
    return [items[i] for i in pick]


def micro_seed(seed: int, index: int, salt: int = 0) -> int:
    """A 63-bit seed for micro-batch `index`, independent across indices (SplitMix64 mix)."""
    z = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + salt * 0x94D049BB133111EB)
    z &= (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) >> 1

"""Training batches, optionally built ahead of time by DataLoader worker processes.

Every task makes micro-batch `index` as a pure function of (seed, index, rank) (see
`sciformer.tasks`), so batches can be built anywhere, in any process, and still be exactly the
ones a single process would build: `data.num_workers > 0` only changes *when* they are built
(by torch DataLoader workers, while the model trains on earlier ones), never *what* they are,
and an exact resume stays exact. Trajectory windows are read from HDF5 in the workers, each of
which opens its own file handle (`TrajectoryFile` re-opens after a fork).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from sciformer.tasks import Task

PREFETCH = 4  # batches each worker keeps ready


class _IndexedBatches(Dataset):
    """Item i = the task's micro-batch `first + i` for one rank (no collation needed)."""

    def __init__(self, task: Task, first: int, count: int, rank: int, world: int) -> None:
        self.task, self.first, self.count, self.rank, self.world = task, first, count, rank, world

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.task.batch(self.first + i, self.rank, self.world)


class BatchSource:
    """`get(index)` = ``task.batch(index, rank, world)``, prefetched by `workers` processes.

    Consecutive indices stream from one DataLoader; asking for any other index (a resume, a
    test calling steps out of order) restarts the stream there. `workers = 0` builds each
    batch in this process, on demand.
    """

    def __init__(self, task: Task, rank: int, world: int, workers: int, last: int) -> None:
        self.task, self.rank, self.world, self.workers = task, rank, world, workers
        self.last = last  # one past the last index the run will ask for
        self._stream: Iterator[dict[str, Tensor]] | None = None
        self._next = -1

    def get(self, index: int) -> dict[str, Tensor]:
        """Micro-batch `index` of this rank."""
        if self.workers == 0 or index >= self.last:
            return self.task.batch(index, self.rank, self.world)
        if self._stream is None or index != self._next:
            self._start(index)
        self._next = index + 1
        return next(self._stream)

    def _start(self, index: int) -> None:
        self.close()
        data = _IndexedBatches(self.task, index, self.last - index, self.rank, self.world)
        # own generator: DataLoader draws its workers' base seed from it, and drawing from the
        # global one would shift this process's dropout masks (batches never use that seed)
        loader = DataLoader(data, batch_size=None, shuffle=False, num_workers=self.workers,
                            prefetch_factor=PREFETCH, generator=torch.Generator())
        self._stream = iter(loader)

    def close(self) -> None:
        """Stop the workers: the DataLoader iterator shuts them down when it is released."""
        self._stream = None

"""DataLoader workers (data.num_workers) build exactly the batches one process would."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from sciformer.config import load_config
from sciformer.simulate import simulate_to_file
from sciformer.tasks.forecast import ForecastTask
from sciformer.train.data import BatchSource
from sciformer.train.loop import pretrain
from tests.conftest import metrics_log

TINY = ["model.d_model=16", "model.n_heads=2", "model.n_encoder_layers=1",
        "model.n_decoder_layers=1", "model.d_ff=32", "model.dropout=0.1", "data.context=8",
        "data.horizon=4", "data.patch_len=4", "train.batch_size=4", "train.max_steps=6",
        "train.warmup_steps=1", "train.eval_every=3", "train.log_every=1",
        "train.checkpoint_every=3", "data.val_fraction=0.25"]


def test_batch_source_streams_the_task_batches_in_any_order(tmp_path: Path):
    data = simulate_to_file("lorenz63", tmp_path / "l63.h5", 4, 60, seed=0)
    task = ForecastTask(load_config(None, TINY), [data])
    source = BatchSource(task, rank=1, world=2, workers=2, last=20)
    try:
        for index in [0, 1, 2, 7, 8, 3, 19, 25]:  # jumps restart the stream; >= last: direct
            torch.testing.assert_close(source.get(index), task.batch(index, 1, 2), rtol=0, atol=0)
    finally:
        source.close()


def _curve(run: Path) -> list[float]:
    return [r["loss"] for r in metrics_log(run)]


def test_training_with_workers_equals_training_without(tmp_path: Path):
    """Same weights and loss curve with 0 and 2 workers, and after a resume with workers."""
    data = simulate_to_file("lorenz63", tmp_path / "l63.h5", 4, 60, seed=0)
    runs = {}
    for workers in (0, 2):
        runs[workers] = tmp_path / f"w{workers}"
        pretrain([data], load_config(None, [*TINY, f"data.num_workers={workers}"]),
                 runs[workers], progress=False)
    shutil.rmtree(runs[2] / "checkpoints" / "step_00000006")  # as if killed after step 3
    pretrain([data], load_config(None, [*TINY, "data.num_workers=2"]), runs[2], resume=True,
             progress=False)
    a, b = (load_file(str(r / "model.safetensors")) for r in runs.values())
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _curve(runs[0]) == _curve(runs[2])

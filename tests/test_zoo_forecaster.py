"""The shipped zoo forecaster (data/runs/zoo-forecaster): small, traceable, and it forecasts a
system with a channel count it never saw."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from click.testing import CliRunner

from sciformer.cli import main
from sciformer.io.trajectory_writer import write_trajectories
from sciformer.simulate import simulate

RUN = Path(__file__).resolve().parents[1] / "data" / "runs" / "zoo-forecaster"


def test_shipped_run_is_small_and_records_its_provenance():
    assert (RUN / "model.safetensors").stat().st_size <= 25 * 2**20
    cfg = json.loads((RUN / "config.json").read_text())
    assert cfg["channel_agnostic"] and cfg["model"]["channel_attention"] is True
    prov = json.loads((RUN / "provenance.json").read_text())
    assert prov["workflow"] == "workflows/dynamics-zoo.yaml" and prov["seed"] == 0
    assert len(prov["git_commit"]) == 40
    split = json.loads((RUN / "split.json").read_text())
    held_out = {"rossler", "hyper_rossler", "halvorsen", "lorenz84", "dadras"}
    assert held_out <= set(split["held_out_base_systems"])
    assert held_out.isdisjoint(cfg["base_systems"])
    assert not (RUN / "train_state.pt").exists()  # weights only, no pickled optimizer state


def test_predict_with_the_shipped_run_on_a_channel_count_it_never_saw(tmp_path):
    prov = json.loads((RUN / "provenance.json").read_text())
    assert 5 not in prov["train_channel_counts"]
    sim = simulate("lorenz96", 2, 272, seed=3, params={"n": 5})
    data = tmp_path / "l96.h5"  # a 256-step context; the 16 steps after it are the truth
    write_trajectories(data, sim.states[:, :256].astype(np.float32), dt=sim.dt,
                       system="lorenz96")
    out = tmp_path / "pred.h5"
    res = CliRunner().invoke(main, ["predict", str(RUN), str(data), "--out", str(out),
                                    "--horizon", "16", "--samples", "8"])
    assert res.exit_code == 0, res.output
    truth, scale = sim.states[:, 256:272], sim.states.std(axis=(0, 1))
    with h5py.File(out) as f:
        pred = f["states"][...]
    assert pred.shape == (2, 16, 5) and np.isfinite(pred).all()
    nrmse = np.sqrt(((pred - truth) ** 2).mean(axis=(0, 1))) / scale
    assert nrmse.mean() < NRMSE_16_STEPS

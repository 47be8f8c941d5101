"""The shipped zoo-pretrained run (data/pretrained/dynamics-zoo): forecasts a user's file with
no training, carries its provenance, and still beats context parroting zero-shot on a
held-out system it never saw."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
from click.testing import CliRunner

from sciformer.cli import main
from sciformer.pipelines import load
from sciformer.simulate import simulate_to_file, write_system_trajectories
from sciformer.simulate.systems import HELD_OUT

RUN = Path(__file__).resolve().parents[1] / "data" / "pretrained" / "dynamics-zoo"


def test_the_shipped_run_is_small_and_says_what_made_it():
    assert (RUN / "model.safetensors").stat().st_size <= 25 * 2**20
    prov = json.loads((RUN / "provenance.json").read_text())
    assert "workflows/dynamics-zoo.yaml" in prov["command"]
    assert len(prov["source"]["commit"]) == 40 and prov["source"]["dirty"] is False
    cfg = json.loads((RUN / "config.json").read_text())
    assert cfg["train"]["seed"] == 0 and cfg["data"]["anchor"] == "analog"
    # never trained on a system it may claim zero-shot skill on
    assert not set(cfg["base_systems"]) & set(HELD_OUT)


def test_predict_forecasts_any_channel_count_with_no_training(tmp_path):
    src = simulate_to_file("lorenz96", tmp_path / "l96.h5", 2, 300, seed=0, params={"n": 6})
    out = tmp_path / "forecast.h5"
    res = CliRunner().invoke(main, ["predict", str(RUN), str(src), "--out", str(out),
                                    "--horizon", "40", "--samples", "4"])
    assert res.exit_code == 0, res.output
    with h5py.File(out) as f:
        assert f["states"].shape == (2, 40, 6) and np.isfinite(f["states"][...]).all()


def test_zero_shot_on_a_held_out_system_beats_context_parroting(tmp_path):
    from sciformer.evaluation.run import evaluate

    data = tmp_path / "rossler.h5"
    write_system_trajectories("rossler", data, 2, 900, seed=3)
    fc = load(RUN, device="cpu")
    assert fc.state.channel_agnostic
    m = evaluate(RUN, data, tmp_path / "eval", samples=8, device="cpu")
    assert m["zero_shot"] is True
    model, parrot = m["model"]["nrmse_1lt"], m["baselines"]["parroting_ctx"]["nrmse_1lt"]
    assert model < parrot, (model, parrot)

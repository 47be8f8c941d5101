"""The first-patch correction (model output statistics) of hybrid forecasting runs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sciformer.errors import InputError
from sciformer.evaluation.chaos_baselines import NVAR
from sciformer.model.anchor import NVARAnchor
from sciformer.pipelines.first_patch import (
    FILE,
    FirstPatchCorrection,
    anchor_features,
    fit_first_patch,
)
from sciformer.simulate import simulate

P = 4  # patch length


@pytest.fixture(scope="module")
def biased():
    """A 'model' whose median first patch is a deliberately over-damped NVAR's rollout (its
    error is a smooth function of the state), on Lorenz-63 in data units; token units =
    data units (loc 0, scale 1 per feature)."""
    states = simulate("lorenz63", 6, 700, seed=4).states.astype(np.float64)
    nvar = NVAR(delays=(2,), alphas=[30.0], horizon=8).fit(list(states[:4]))
    model = SimpleNamespace(anchor=NVARAnchor.from_nvar(nvar))
    tok = SimpleNamespace(loc=[0.0] * 3, scale=[1.0] * 3)

    def median(ctx: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.anchor.rollout(torch.from_numpy(ctx).float(), P).double().numpy()

    def windows(trajs: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray]:
        w = np.stack([x[s:s + 16 + P] for x in trajs for s in range(0, 700 - 16 - P, step)])
        return w[:, :16], w[:, 16:]

    return model, tok, median, windows(states[:4], 3), windows(states[4:5], 5), \
        windows(states[5:], 7)


def test_fit_lowers_the_error_on_unseen_trajectories_and_round_trips(biased, tmp_path):
    model, tok, median, fit, choose, unseen = biased
    corr = fit_first_patch(model, tok, median, fit, choose)
    assert corr is not None and len(corr.about["ridge_per_step"]) == P
    assert all(a < b for a, b in zip(corr.about["choice_rmse_after"],
                                     corr.about["choice_rmse_before"]))
    ctx, fut = unseen
    shift = corr.shift(model, tok, ctx)
    assert shift.shape == fut.shape
    before = np.sqrt(((median(ctx) - fut) ** 2).mean(axis=(0, 2)))
    after = np.sqrt(((median(ctx) + shift - fut) ** 2).mean(axis=(0, 2)))
    assert np.all(after < 0.5 * before), (after, before)
    # the shift is the ridge map of the anchor's features, in data units (scale 2 doubles it)
    x = anchor_features(model, tok, ctx)
    np.testing.assert_allclose(shift.reshape(len(ctx), -1), x @ corr.coef + corr.bias)
    tok2 = SimpleNamespace(loc=[0.0] * 3, scale=[2.0] * 3)
    doubled = FirstPatchCorrection(corr.coef, corr.bias, {}).shift(model, tok2, 2 * ctx)
    np.testing.assert_allclose(doubled, 2 * shift, rtol=1e-9, atol=1e-12)
    # saved as float32 safetensors with what was chosen; loaded back
    corr.save(tmp_path)
    back = FirstPatchCorrection.load(tmp_path)
    np.testing.assert_allclose(back.coef, corr.coef, rtol=1e-6, atol=1e-6)
    assert back.about == json.loads(json.dumps(corr.about))
    assert FirstPatchCorrection.load(tmp_path / "none") is None
    (tmp_path / FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="unreadable first-patch correction"):
        FirstPatchCorrection.load(tmp_path)


def test_no_correction_where_nothing_gains(biased):
    """A 'model' whose median is the truth: no ridge strength lowers the error -> None."""
    model, tok, _, fit, choose, _ = biased
    futures = {id(a): b for a, b in (fit, choose)}
    exact = lambda ctx: futures[id(ctx)]  # noqa: E731
    assert fit_first_patch(model, tok, exact, fit, choose) is None


def test_mismatched_correction_is_refused(biased):
    model, tok, _, fit, _, _ = biased
    wrong = FirstPatchCorrection(np.zeros((5, 12)), np.zeros(12), {})
    with pytest.raises(InputError, match="predictors"):
        wrong.shift(model, tok, fit[0][:2])


def test_sampler_shifts_the_first_patch_of_every_path_only():
    """With the same seed, the first P steps of every path move by the shift exactly; later
    steps continue from the shifted states (so they differ, but stay finite)."""
    import tempfile

    from sciformer.config import load_config
    from sciformer.io.trajectories import write_trajectories
    from sciformer.model import SciFormer
    from sciformer.pipelines.forecast import sample_paths
    from sciformer.tasks.forecast import ForecastTask

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "l63.h5"
        write_trajectories(path, simulate("lorenz63", 4, 200, seed=0).states, dt=0.01)
        cfg = load_config(None, ["model.d_model=32", "model.n_heads=4", "model.d_ff=64",
                                 "model.n_encoder_layers=1", "model.n_decoder_layers=1",
                                 "data.context=16", "data.horizon=8", f"data.patch_len={P}",
                                 "data.quantiles=[0.1, 0.5, 0.9]", "data.anchor=persistence"])
        task = ForecastTask(cfg, [path])
    torch.manual_seed(0)
    model = SciFormer(task.cfg.model).eval()
    ctx = task.batch(0)["window"][:3, :16]
    shift = torch.linspace(-1, 1, 3 * P * 3).view(3, P, 3)
    plain = sample_paths(model, task.tokenizer, ctx, 12, 8, [0.1, 0.5, 0.9], 5, seed=2)
    moved = sample_paths(model, task.tokenizer, ctx, 12, 8, [0.1, 0.5, 0.9], 5, seed=2,
                         first_shift=shift)
    torch.testing.assert_close(moved[:, :, :P], plain[:, :, :P] + shift[None])
    assert not torch.allclose(moved[:, :, P:], plain[:, :, P:])
    assert torch.isfinite(moved).all()


def test_a_correction_file_in_a_run_without_nvar_anchor_is_refused(tmp_path):
    """first_patch.safetensors beside a persistence-anchored run: one-line error on load."""
    from sciformer.config import load_config
    from sciformer.errors import ConfigError
    from sciformer.io.trajectories import write_trajectories
    from sciformer.pipelines import load
    from sciformer.train.loop import pretrain

    path = tmp_path / "l63.h5"
    write_trajectories(path, simulate("lorenz63", 4, 120, seed=0).states, dt=0.01)
    cfg = load_config(None, ["model.d_model=16", "model.n_heads=2", "model.d_ff=32",
                             "model.n_encoder_layers=1", "model.n_decoder_layers=1",
                             "data.context=8", "data.horizon=4", "data.patch_len=4",
                             "data.anchor=persistence", "train.max_steps=2",
                             "train.batch_size=4", "train.warmup_steps=1",
                             "train.eval_every=2", "train.checkpoint_every=2",
                             "train.calibrate=false"])
    pretrain([path], cfg, tmp_path / "run", progress=False)
    assert load(tmp_path / "run", "cpu").first_patch is None
    FirstPatchCorrection(np.zeros((3, 12)), np.zeros(12), {}).save(tmp_path / "run")
    with pytest.raises(ConfigError, match="has no NVAR anchor"):
        load(tmp_path / "run", "cpu")

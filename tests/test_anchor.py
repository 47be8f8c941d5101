"""The NVAR anchor of a hybrid forecaster (`data.anchor: nvar`): fit, torch rollout, training
and inference, save/load, refusals, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from sciformer.cli import main
from sciformer.config import load_config
from sciformer.errors import CheckpointError, ConfigError, InputError
from sciformer.evaluation.chaos_baselines import NVAR
from sciformer.io.trajectories import write_trajectories
from sciformer.model import SciFormer
from sciformer.model.anchor import NVARAnchor
from sciformer.pipelines import load
from sciformer.pipelines.forecast import patch_quantiles, sample_paths
from sciformer.runs import load_model
from sciformer.tasks.forecast import ForecastTask, teacher_forced_loss
from sciformer.tasks.zoo import require_agnostic
from sciformer.train.loop import pretrain

TINY = ["model.d_model=32", "model.n_heads=4", "model.n_encoder_layers=1",
        "model.n_decoder_layers=1", "model.d_ff=64", "model.dropout=0.0", "data.context=16",
        "data.horizon=8", "data.patch_len=4", "train.batch_size=8", "train.max_steps=10",
        "train.warmup_steps=2", "train.eval_every=10", "train.log_every=10",
        "train.checkpoint_every=10", "data.val_fraction=0.25", "data.quantiles=[0.1, 0.5, 0.9]",
        "data.samples=4"]
LEVELS = [0.1, 0.5, 0.9]
OMEGA = 0.3  # radians per step


def rotation(n_traj: int, n_time: int, seed: int = 0, t0: int = 0) -> np.ndarray:
    """Circles x_t = r (cos(phi + w t), sin(phi + w t)) + c: a linear map x_{t+1} - c =
    R (x_t - c) that NVAR represents exactly; (n_traj, n_time, 2)."""
    rng = np.random.default_rng(seed)
    r, phi = rng.uniform(0.5, 2.0, (n_traj, 1)), rng.uniform(0, 2 * np.pi, (n_traj, 1))
    t = np.arange(t0, t0 + n_time)[None, :]
    return np.stack([3.0 + r * np.cos(phi + OMEGA * t), -1.0 + r * np.sin(phi + OMEGA * t)],
                    axis=-1).astype(np.float32)


@pytest.fixture(scope="module")
def circles(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("anchor") / "circles.h5"
    write_trajectories(path, rotation(8, 200), dt=0.1)
    return path


def task_for(path: Path, *extra: str) -> ForecastTask:
    return ForecastTask(load_config(None, [*TINY, *extra]), [path])


def zero_head(model: SciFormer) -> SciFormer:
    """The model with its value head zeroed: every predicted quantile is the anchor."""
    with torch.no_grad():
        for p in model.value_head.parameters():
            p.zero_()
    return model.eval()


def test_torch_anchor_is_the_numpy_nvar_rollout():
    """`NVARAnchor.rollout` reproduces `NVAR.predict` (quadratic features, several delays,
    standardisation) to float32 rounding, on a nonlinear system."""
    from sciformer.simulate import simulate

    states = simulate("lorenz63", 4, 600, seed=0).states  # (4, 600, 3)
    nvar = NVAR(delays=(1, 2, 3), horizon=8).fit(list(states[:3]))
    anchor = NVARAnchor.from_nvar(nvar)
    assert anchor.delays == nvar.k_ and anchor.span == nvar.span()
    ctx = states[3:, 100:132].astype(np.float64)
    want = nvar.predict(ctx, 8)
    got = anchor.rollout(torch.from_numpy(ctx).float(), 8).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3 * np.abs(want).max())


def test_anchor_of_a_patch_rolls_out_from_the_previous_patch():
    """forward: token j (P steps, time-major) -> NVAR's P-step forecast after it."""
    nvar = NVAR(delays=(2,)).fit(list(rotation(4, 120)))  # two delayed states
    anchor = NVARAnchor.from_nvar(nvar)
    x = torch.from_numpy(rotation(3, 12, seed=5))  # (3, 12, 2): 3 patches of 4 steps
    tokens = x.reshape(3, 3, 8)
    out = anchor(tokens, 4).reshape(3, 3, 4, 2)
    for j in range(3):
        torch.testing.assert_close(out[:, j], anchor.rollout(x[:, 4 * j:4 * j + 4], 4))
    torch.testing.assert_close(out[:, :2].reshape(3, 8, 2), x[:, 4:], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="a patch has 1"):
        anchor(x.reshape(3, 12, 2), 1)


def test_hybrid_at_init_forecasts_like_nvar_persistence_does_not(circles):
    """With a zeroed value head every quantile is the anchor: the NVAR-anchored model
    continues the rotation exactly over several chunks (re-encoded contexts included), the
    persistence-anchored one repeats the last state."""
    truth = torch.from_numpy(rotation(2, 48, seed=9))  # unseen circles
    ctx, fut = truth[:, :16], truth[:, 16:]
    torch.manual_seed(0)
    task = task_for(circles, "data.anchor=nvar")
    assert task.anchor is not None and task.cfg.data.anchor == "nvar"
    model = SciFormer(task.cfg.model)
    task.init_model(model)
    paths = sample_paths(zero_head(model), task.tokenizer, ctx, 32, 8, LEVELS, samples=3)
    assert torch.equal(paths[0], paths[2])  # no spread: all quantiles coincide
    torch.testing.assert_close(paths[0], fut, atol=2e-3, rtol=0)
    # NVAR is exact on the rotation: its measured error (the offset unit) is float32 rounding
    assert task.anchor.scale.max().item() < 1e-4
    loss = teacher_forced_loss(model, task.tokenizer, ctx, fut[:, :8], LEVELS)
    assert loss.item() < 0.5  # pinball loss in offset units: within the anchor's own error

    plain = task_for(circles, "data.anchor=persistence")
    assert plain.anchor is None and plain.cfg.data.anchor == "persistence"
    torch.manual_seed(0)
    model = zero_head(SciFormer(plain.cfg.model))
    assert model.anchor is None
    paths = sample_paths(model, plain.tokenizer, ctx, 32, 8, LEVELS, samples=3)
    torch.testing.assert_close(paths[0], ctx[:, -1:].expand(2, 32, 2))
    assert (paths[0] - fut).abs().max() > 0.5


def test_persistence_quantiles_are_offsets_on_the_last_state(circles):
    task = task_for(circles, "data.anchor=persistence")
    model = SciFormer(task.cfg.model).eval()
    src = task.tokenizer.encode_context(torch.from_numpy(rotation(2, 16)))[0]
    h = model(src, src)
    q = patch_quantiles(model, task.tokenizer, h, src, 3)
    raw = model.values(h).unflatten(-1, (8, 3))
    last = src[..., -2:].repeat(1, 1, 4)
    torch.testing.assert_close(q, raw + last[..., None])


def test_nvar_anchor_is_fitted_on_training_trajectories_only(circles, monkeypatch):
    """The fit reads the task's training items and never a held-out one."""
    from sciformer.tasks import forecast as task_mod

    seen = []
    real = task_mod.TrajectoryCollection.window

    def spy(self, item, start, length):
        seen.append(item)
        return real(self, item, start, length)

    monkeypatch.setattr(task_mod.TrajectoryCollection, "window", spy)
    task = task_for(circles, "data.anchor=nvar")
    held = {task.data.items[i] for i in task.val_idx}
    assert held and seen and not held & set(seen)
    info = task.state().anchor
    assert info["delays"] <= 4 and info["n_features"] > 1  # delays fit in one patch of 4


def test_anchor_round_trips_through_the_run_directory(circles, tmp_path):
    run = tmp_path / "run"
    pretrain([circles], load_config(None, [*TINY, "data.anchor=nvar"]), run, progress=False)
    tensors = load_file(str(run / "model.safetensors"))
    assert {"anchor.coef", "anchor.pairs", "anchor.lo", "anchor.skip"} <= set(tensors)
    task = task_for(circles, "data.anchor=nvar")  # the same fit, recomputed
    for name, value in task.anchor.state_tensors().items():
        torch.testing.assert_close(tensors[name], value)
    resumed = load_config(None, [*TINY, "data.anchor=nvar", "train.max_steps=12"])
    pretrain([circles], resumed, run, resume=True, progress=False)  # restores anchor.* too
    model, cfg, state = load_model(run)
    assert isinstance(model.anchor, NVARAnchor) and cfg.data.anchor == "nvar"
    for name, value in task.anchor.state_tensors().items():
        torch.testing.assert_close(load_file(str(run / "model.safetensors"))[name], value)
    assert state.anchor["delays"] == model.anchor.delays
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["anchor"] == "nvar" and config["anchor"]["delays"] >= 1
    fc = load(run, "cpu")
    a = fc.sample(rotation(2, 16, seed=3), 12, samples=4, seed=0)
    b = fc.sample(rotation(2, 16, seed=3), 12, samples=4, seed=0)
    assert a.shape == (4, 2, 12, 2) and np.isfinite(a).all() and np.array_equal(a, b)

    # weights without the anchor tensors contradict config.json: refused, one line
    save_file({k: v for k, v in tensors.items() if not k.startswith("anchor.")},
              str(run / "model.safetensors"))
    with pytest.raises(CheckpointError, match="has no NVAR anchor tensors"):
        load_model(run)


def test_persistence_run_has_no_anchor_and_old_configs_load(circles, tmp_path):
    """A persistence run writes no anchor tensors; a config.json without data.anchor (a run
    from before the field) loads as persistence-anchored."""
    run = tmp_path / "run"
    pretrain([circles], load_config(None, [*TINY, "data.anchor=persistence"]), run,
             progress=False)
    assert not any(k.startswith("anchor.") for k in load_file(str(run / "model.safetensors")))
    config = json.loads((run / "config.json").read_text())
    del config["data"]["anchor"], config["anchor"]
    (run / "config.json").write_text(json.dumps(config))
    model, cfg, state = load_model(run)
    assert model.anchor is None and state.anchor is None and cfg.data.anchor == "auto"


@pytest.mark.parametrize("extra", [["data.channels=independent"], ["data.tokenizer=bins"],
                                   ["data.scaling=instance"]])
def test_nvar_anchor_refused_without_whole_state_dataset_scaled_patches(circles, extra):
    with pytest.raises(ConfigError, match="data.anchor=nvar needs whole-state patch tokens"):
        task_for(circles, "data.anchor=nvar", *extra)
    assert task_for(circles, "data.anchor=auto", *extra).cfg.data.anchor == "persistence"
    assert task_for(circles).cfg.data.anchor == "nvar"  # the default, auto: nvar here


def test_nvar_anchor_refused_for_fields_and_zoo(tmp_path):
    field = tmp_path / "field.h5"
    rng = np.random.default_rng(0)
    write_trajectories(field, rng.normal(size=(4, 40, 8, 8, 1)).astype(np.float32), dt=0.1)
    with pytest.raises(ConfigError, match="this run has field_patch tokens"):
        task_for(field, "data.anchor=nvar", "data.space_patch=4")
    cfg = require_agnostic(load_config(None, ["data.anchor=auto"]), "zoo.h5")
    assert cfg.data.anchor == "analog"  # a zoo model's default: computed from the context
    with pytest.raises(ConfigError, match="data.anchor='nvar' cannot be used"):
        require_agnostic(load_config(None, ["data.anchor=nvar"]), "zoo.h5")


def test_cli_pretrain_and_evaluate_a_hybrid_run(circles, tmp_path):
    run, out = tmp_path / "run", tmp_path / "eval"
    sets = [a for s in [*TINY, "data.anchor=nvar"] for a in ("--set", s)]
    res = CliRunner().invoke(main, ["pretrain", str(circles), "--out-dir", str(run), *sets])
    assert res.exit_code == 0, res.output
    test = tmp_path / "test.h5"
    write_trajectories(test, rotation(2, 80, seed=4), dt=0.1)
    res = CliRunner().invoke(main, ["evaluate", str(run), str(test), "--out-dir", str(out),
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(m["model"]["nrmse"]) and m["baselines"]["nvar"]["nrmse"] < 1e-2
    res = CliRunner().invoke(main, ["pretrain", str(circles), "--out-dir", str(tmp_path / "x"),
                                    *sets, "--set", "data.tokenizer=bins"])
    assert res.exit_code != 0 and "data.anchor=nvar needs" in res.output


def test_failed_nvar_fit_is_an_error_or_with_auto_an_explicit_fallback(circles, monkeypatch):
    from sciformer.tasks import anchors as task_mod

    def broken(*args):
        raise np.linalg.LinAlgError("NVAR: no (k, alpha) on the grid gave a finite fit")

    monkeypatch.setattr(task_mod, "fit_anchor", broken)
    with pytest.raises(InputError, match="data.anchor=nvar: the NVAR fit .* failed"):
        task_for(circles, "data.anchor=nvar")
    with pytest.warns(UserWarning, match="persistence-anchored"):
        task = task_for(circles, "data.anchor=auto")
    assert task.anchor is None and task.cfg.data.anchor == "persistence"


def test_finetune_from_a_hybrid_run_refits_the_anchor_on_the_new_data(circles, tmp_path):
    src, dst, other = tmp_path / "src", tmp_path / "dst", tmp_path / "other.h5"
    pretrain([circles], load_config(None, [*TINY, "data.anchor=nvar"]), src, progress=False)
    write_trajectories(other, 2.0 * rotation(8, 200, seed=7), dt=0.1)
    pretrain([other], load_config(None, [*TINY, f"train.init_from={src}"]), dst,
             progress=False)
    model, cfg, _ = load_model(dst)
    assert cfg.data.anchor == "nvar"  # the source's anchor kind
    want = task_for(other, "data.anchor=nvar").anchor.state_tensors()  # fitted on `other`
    got, old = model.anchor.state_tensors(), load_model(src)[0].anchor.state_tensors()
    for name in want:
        torch.testing.assert_close(got[name], want[name])
    assert not torch.equal(got["anchor.mu"], old["anchor.mu"])


def test_offset_scale_is_the_anchors_rms_error_per_step_and_feature():
    """`fit_scale` = RMS over (patch, next patch) pairs of the anchor's forecast error, per
    step and feature, time-major; it grows with the step on a chaotic flow."""
    from sciformer.simulate import simulate

    states = simulate("lorenz63", 3, 400, seed=0).states.astype(np.float64)
    z = [(x - x.mean(0)) / x.std(0) for x in states]
    anchor = NVARAnchor.from_nvar(NVAR(delays=(1,), alphas=[1e-2], horizon=8).fit(z))
    assert anchor.scale is None and "anchor.scale" not in anchor.state_tensors()
    scale = anchor.fit_scale(z, 4)
    assert scale.shape == (12,)
    starts = np.unique(np.linspace(0, 400 - 8, 8192 // 3).astype(int))
    pairs = torch.as_tensor(np.stack([x[s:s + 8] for x in z for s in starts])).float()
    err = anchor.rollout(pairs[:, :4], 4) - pairs[:, 4:]
    want = err.double().pow(2).mean(0).sqrt().flatten().float()
    torch.testing.assert_close(scale, want)
    per_step = scale.view(4, 3).pow(2).mean(1)
    assert bool((per_step[1:] > per_step[:-1]).all())
    # saved and rebuilt with the weights; runs without it load with unit offsets
    again = NVARAnchor.from_tensors(anchor.state_tensors())
    torch.testing.assert_close(again.scale, scale)
    old = {k: v for k, v in anchor.state_tensors().items() if k != "anchor.scale"}
    assert NVARAnchor.from_tensors(old).scale is None
    with pytest.raises(ValueError, match="scale must be positive"):
        NVARAnchor.from_tensors({**anchor.state_tensors(), "anchor.scale": -scale})


def test_scaled_offsets_and_loss_in_offset_units(circles):
    """With an offset scale s: quantiles = anchor + s * head output, and the training loss
    is the pinball loss of (quantiles / s) against (truth / s)."""
    from sciformer.tokenizers.timeseries import pinball_loss

    task = task_for(circles, "data.anchor=nvar")
    torch.manual_seed(0)
    model = SciFormer(task.cfg.model).eval()
    task.init_model(model)
    s = torch.linspace(0.5, 2.0, 8)
    model.anchor.scale = s
    x = torch.from_numpy(rotation(2, 24, seed=3))
    src = task.tokenizer.encode_context(x[:, :16])[0]
    h = model(src, src)
    q = patch_quantiles(model, task.tokenizer, h, src, 3)
    raw = model.values(h).unflatten(-1, (8, 3))
    torch.testing.assert_close(q, raw * s[:, None] + model.anchor(src, 4)[..., None])
    loss = teacher_forced_loss(model, task.tokenizer, x[:, :16], x[:, 16:24], LEVELS)
    state = task.tokenizer.fit_state(x[:, :16])
    enc_src = task.tokenizer.encode(x[:, :16], state)
    tgt = task.tokenizer.encode(x[:, 16:24], state)
    dec_in = torch.cat([enc_src[:, -1:], tgt[:, :-1]], dim=1)
    qq = patch_quantiles(model, task.tokenizer, model(enc_src, dec_in), dec_in, len(LEVELS))
    want = pinball_loss(qq / s[:, None], tgt / s, torch.tensor(LEVELS))
    torch.testing.assert_close(loss, want)
    assert abs(loss.item() - pinball_loss(qq, tgt, torch.tensor(LEVELS)).item()) > 1e-4

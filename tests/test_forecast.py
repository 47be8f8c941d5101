"""Forecasting: task batches and split, losses, decoding and rollout, evaluation, predict."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import xarray as xr
from click.testing import CliRunner

from sciformer.cli import main
from sciformer.config import load_config
from sciformer.errors import ConfigError, InputError
from sciformer.evaluation.run import evaluate
from sciformer.io.trajectories import TrajectoryFile, write_trajectories
from sciformer.model import SciFormer
from sciformer.pipelines import load
from sciformer.pipelines.forecast import (
    _patch_chunk,
    inverse_cdf,
    normal_scores,
    patch_quantiles,
    sample_patch_tokens,
    sample_paths,
    summarise,
)
from sciformer.runs import load_model as load_run
from sciformer.simulate import simulate_to_file
from sciformer.tasks import forecast as task_mod
from sciformer.tasks.forecast import ForecastTask, rollout_loss, rollout_plan, teacher_forced_loss
from sciformer.train.loop import pretrain

TINY = ["model.d_model=32", "model.n_heads=4", "model.n_encoder_layers=1",
        "model.n_decoder_layers=1", "model.d_ff=64", "model.dropout=0.0", "data.context=16",
        "data.horizon=8", "data.patch_len=4", "train.batch_size=8", "train.max_steps=20",
        "train.warmup_steps=2", "train.eval_every=10", "train.log_every=10",
        "train.checkpoint_every=20", "data.val_fraction=0.25", "data.quantiles=[0.1, 0.5, 0.9]",
        "data.samples=16"]
LEVELS = [0.1, 0.5, 0.9]


def labelled_file(path: Path, n_traj: int = 8, n_time: int = 40) -> Path:
    """States whose channel 0 is the trajectory index and channel 1 the time step."""
    t = np.arange(n_time, dtype=np.float32)
    states = np.stack([np.stack([np.full(n_time, i, np.float32), t], axis=1)
                       for i in range(n_traj)])
    write_trajectories(path, states, dt=0.1)
    return path


def tiny_task(path: Path, *extra: str) -> ForecastTask:
    return ForecastTask(load_config(None, [*TINY, *extra]), [path])


def l63_run(root: Path, train_shape: tuple[int, int], test_shape: tuple[int, int]
            ) -> dict[str, Path]:
    """A Lorenz-63 training file and a held-out file of (trajectories, steps) from another
    seed, and a 20-step TINY run on the training file."""
    train = simulate_to_file("lorenz63", root / "train.h5", *train_shape, seed=0)
    test = simulate_to_file("lorenz63", root / "test.h5", *test_shape, seed=1)
    run = root / "run"
    pretrain([train], load_config(None, TINY), run, progress=False)
    return {"train": train, "test": test, "run": run, "root": root}


@pytest.fixture(scope="module")
def l63(tmp_path_factory) -> dict[str, Path]:
    """8 training and 3 held-out trajectories of 420 steps, and a 20-step run."""
    return l63_run(tmp_path_factory.mktemp("l63"), (8, 420), (3, 420))


# ---- task: batches and split ----------------------------------------------------------------
def test_batches_are_deterministic_and_from_training_trajectories_only(tmp_path):
    task = tiny_task(labelled_file(tmp_path / "lab.h5"))
    split = task.split()
    assert split["unit"] == "trajectory"
    assert sorted(split["train"] + split["heldout"]) == list(range(8))
    assert not set(split["train"]) & set(split["heldout"]) and len(split["heldout"]) == 2
    assert split["heldout_origin"] == [[0, i] for i in split["heldout"]]
    a, b, c = task.batch(3)["window"], task.batch(3)["window"], task.batch(4)["window"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (8, 24, 2)
    for win in torch.cat([task.batch(i)["window"] for i in range(20)]):
        assert int(win[0, 0]) in split["train"]  # only training trajectories
        assert torch.all(win[:, 0] == win[0, 0])  # one whole trajectory per window
        assert torch.equal(win[:, 1] - win[0, 1], torch.arange(24.0))  # consecutive steps


@pytest.mark.parametrize(("n_traj", "fraction", "held"),
                         [(12, 0.1, 3), (8, 0.1, 2), (40, 0.1, 4), (3, 0.1, 1), (12, 0.0, 0)])
def test_validation_holds_enough_trajectories_to_calibrate_on(tmp_path, n_traj, fraction, held):
    """At least VALIDATION_TRAJECTORIES (at most a quarter) whatever data.val_fraction gives:
    the default 0.1 of 12 trajectories would leave one to fit the recalibration on."""
    path = labelled_file(tmp_path / "lab.h5", n_traj=n_traj)
    task = tiny_task(path, f"data.val_fraction={fraction}")
    assert len(task.val_idx) == held and len(task.train_idx) == n_traj - held


def test_teacher_forced_loss_decreases_on_one_batch(l63):
    torch.manual_seed(0)
    task = tiny_task(l63["train"])
    model = SciFormer(task.cfg.model)
    batch = task.batch(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = task.loss(model, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]



# ---- training on the model's own rollouts ----------------------------------------------------
def _loss_inputs(monkeypatch, model):
    """Record what the loss feeds the model (src, dec_in) and scores against (targets)."""
    seen = {"calls": []}
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda src, dec_in, **kw: (
        seen["calls"].append((src.detach().clone(), dec_in.detach().clone(),
                              torch.is_grad_enabled())) or forward(src, dec_in, **kw)))
    pinball = task_mod.pinball_loss
    monkeypatch.setattr(task_mod, "pinball_loss", lambda q, tgt, lv: (
        seen.__setitem__("target", tgt.clone()) or pinball(q, tgt, lv)))
    return seen


def test_rollout_plan_curriculum_and_window_length(tmp_path):
    path = labelled_file(tmp_path / "lab.h5", n_time=80)
    task = tiny_task(path, "data.pushforward=2", "data.pushforward_warmup=0.5",
                     "train.max_steps=100", "data.sampled_inputs=0.25")
    assert task.batch(0)["window"].shape == (8, 16 + 3 * 8, 2)  # context + (1 + K) horizons
    rng = np.random.default_rng(0)
    early = [rollout_plan(task.cfg, i, rng)[0] for i in range(25)]  # K_now = 0 then 1
    late = [rollout_plan(task.cfg, 60, rng)[0] for _ in range(300)]
    assert set(early[:24]) <= {0, 1} and early[0] == 0
    assert set(late) == {0, 1, 2}
    shares = [rollout_plan(task.cfg, 60, rng)[1] for _ in range(2000)]
    assert abs(np.mean(shares) - 0.25) < 0.04
    late = tiny_task(path, "data.sampled_inputs=1", "data.sampled_inputs_from=0.5",
                     "train.max_steps=100").cfg  # teacher forcing first, then own draws
    assert [rollout_plan(late, i, rng)[1] for i in (0, 49, 50, 99)] == [0, 0, 1, 1]
    cfg = tiny_task(path).cfg  # defaults: plain teacher forcing
    assert {rollout_plan(cfg, i, rng)[:2] for i in range(50)} == {(0, 0)}


@pytest.mark.parametrize("bad", ["data.pushforward=-1", "data.sampled_inputs=1.5",
                                 "data.sampled_inputs_from=-0.1", "data.input_noise=-0.1",
                                 "data.pushforward_warmup=2"])
def test_rollout_options_are_validated(bad):
    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        load_config(None, [bad])


def test_validation_reports_the_rollout_loss_too(l63):
    task = tiny_task(l63["train"], "data.pushforward=1", "data.sampled_inputs=0.5")
    model = SciFormer(task.cfg.model)
    a, b = task.validate(model), task.validate(model)
    assert set(a) == {"val_loss", "val_rollout_loss"} and a == b  # fixed windows and seeds
    assert set(tiny_task(l63["train"]).validate(model)) == {"val_loss"}

def test_pushforward_scores_the_truth_after_the_models_own_rollout(l63, monkeypatch):
    """With one chunk pushed forward, the scored context ends with the model's own sampled
    chunk (drawn without gradient), and the target is the true chunk after it."""
    torch.manual_seed(0)
    task = tiny_task(l63["train"], "data.pushforward=1")
    model, tok, d = SciFormer(task.cfg.model), task.tokenizer, task.cfg.data
    x = task.batch(0)["window"]  # (8, 16 + 16, 3)
    seen = _loss_inputs(monkeypatch, model)
    loss = rollout_loss(model, tok, d, x, pushed=1, sampled=False, seed=7)
    loss.backward()
    with torch.no_grad():
        src0, state = tok.encode_context(x[:, :16])
        own = tok.decode(sample_patch_tokens(model, tok, src0, 2, LEVELS,
                                             torch.Generator().manual_seed(7)), state)
    ctx = torch.cat([x[:, 8:16], own], dim=1)  # the last 16 steps: 8 true, 8 the model's
    (src, dec_in, grad_on), = seen["calls"]  # one differentiated pass; rollout used no forward
    assert grad_on
    torch.testing.assert_close(src, tok.encode(ctx, tok.fit_state(ctx)))
    torch.testing.assert_close(seen["target"], tok.encode(x[:, 24:32], state))
    assert not torch.allclose(own, x[:, 16:24])  # the rollout is the model's, not the truth


def test_sampled_decoder_inputs_are_the_models_draws(l63, monkeypatch):
    torch.manual_seed(0)
    task = tiny_task(l63["train"])
    model, tok = SciFormer(task.cfg.model), task.tokenizer
    x = task.batch(0)["window"]
    seen = _loss_inputs(monkeypatch, model)
    teacher_forced_loss(model, tok, x[:, :16], x[:, 16:24], LEVELS, sampled=True,
                        gen=torch.Generator().manual_seed(3))
    src = tok.encode(x[:, :16], tok.fit_state(x[:, :16]))
    with torch.no_grad():
        draws = sample_patch_tokens(model, tok, src, 1, LEVELS, torch.Generator().manual_seed(3))
    (_, dec_in, _), = seen["calls"]
    torch.testing.assert_close(dec_in, torch.cat([src[:, -1:], draws], dim=1))
    torch.testing.assert_close(seen["target"], tok.encode(x[:, 16:24], tok.fit_state(x[:, :16])))


def test_input_noise_perturbs_inputs_never_targets(l63, monkeypatch):
    torch.manual_seed(0)
    task = tiny_task(l63["train"], "data.input_noise=0.1")
    model, tok = SciFormer(task.cfg.model), task.tokenizer
    x = task.batch(0)["window"]
    seen = _loss_inputs(monkeypatch, model)
    rollout_loss(model, tok, task.cfg.data, x, pushed=0, sampled=False, seed=1)
    state = tok.fit_state(x[:, :16])
    src, tgt = tok.encode(x[:, :16], state), tok.encode(x[:, 16:24], state)
    (got_src, got_dec, _), = seen["calls"]
    noise = torch.cat([(got_src - src).flatten(), (got_dec[:, 1:] - tgt[:, :1]).flatten()])
    assert abs(noise.std().item() - 0.1) < 0.01 and abs(noise.mean().item()) < 0.01
    torch.testing.assert_close(seen["target"], tgt)  # the truth, untouched
    seen["calls"].clear()
    rollout_loss(model, tok, task.cfg.data, x, pushed=0, sampled=False, seed=1, noise=False)
    torch.testing.assert_close(seen["calls"][0][0], src)  # validation: no noise


# ---- sampling -----------------------------------------------------------------------------
def test_inverse_cdf_reproduces_a_gaussian_exactly_tails_included():
    """Quantiles of N(mu, sigma) are linear in normal scores, so interpolating (and
    extrapolating) linearly in z gives back mu + sigma * z for any z."""
    levels = [0.1, 0.25, 0.5, 0.75, 0.9]
    z_levels = normal_scores(levels, torch.device("cpu"))
    mu, sigma = torch.tensor([[2.0], [-1.0]]), torch.tensor([[0.5], [3.0]])
    q = (mu + sigma * z_levels.float())[:, None, :]  # (2, 1, n_q)
    for z in (-3.0, -1.0, 0.0, 0.3, 1.2, 2.5):
        got = inverse_cdf(q, z_levels, torch.full((2, 1, 1), z, dtype=torch.float64))
        torch.testing.assert_close(got, (mu + sigma * z).float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokenizer", ["patch", "bins"])
def test_sample_paths_shapes_seeds_and_rollout(l63, tokenizer):
    torch.manual_seed(0)
    task = tiny_task(l63["train"], f"data.tokenizer={tokenizer}", "data.n_bins=64")
    model = SciFormer(task.cfg.model).eval()
    ctx = task.batch(0)["window"][:3, :16]
    for horizon in (5, 8, 21):  # shorter than, equal to and longer than the trained 8 steps
        paths = sample_paths(model, task.tokenizer, ctx, horizon, 8, LEVELS, samples=6, seed=1)
        assert paths.shape == (6, 3, horizon, 3) and torch.isfinite(paths).all()
    a = sample_paths(model, task.tokenizer, ctx, 21, 8, LEVELS, samples=6, seed=1)
    b = sample_paths(model, task.tokenizer, ctx, 8, 8, LEVELS, samples=6, seed=1)
    c = sample_paths(model, task.tokenizer, ctx, 21, 8, LEVELS, samples=6, seed=2)
    torch.testing.assert_close(a[:, :, :8], b)  # a rollout starts with the one-chunk draws
    assert not torch.equal(a, c)  # another seed, other paths
    assert not torch.equal(a[0], a[1])  # paths differ from one another


def test_a_diverged_path_is_nan_afterwards_and_leaves_the_others_alone(l63, monkeypatch):
    """A path whose chunk comes out non-finite is NaN from the next chunk on (its context
    would be refused by the tokenizer); every other path is the one drawn without it."""
    torch.manual_seed(0)
    task = tiny_task(l63["train"])
    model = SciFormer(task.cfg.model).eval()
    ctx = task.batch(0)["window"][:3, :16]
    tok = task.tokenizer
    clean = sample_paths(model, tok, ctx, 21, 8, LEVELS, samples=4, seed=1)
    decode, calls = tok.decode, []

    def blow_up_once(*args, **kwargs):
        out = decode(*args, **kwargs)
        if not calls:
            out[1, 3] = float("inf")  # path 0 of context 1 (sample-major rows), first chunk
        calls.append(1)
        return out

    monkeypatch.setattr(tok, "decode", blow_up_once)
    paths = sample_paths(model, tok, ctx, 21, 8, LEVELS, samples=4, seed=1)
    assert len(calls) == 3 and torch.isinf(paths[0, 1, 3]).all()
    assert torch.isnan(paths[0, 1, 8:]).all()
    keep = torch.ones(4, 3, dtype=torch.bool)
    keep[0, 1] = False
    torch.testing.assert_close(paths[keep], clean[keep])


@pytest.mark.parametrize("draws", ["patch", "element"])
def test_sampled_paths_are_the_models_own_feedback(l63, draws):
    """Each sampled patch is the inverse CDF, at that step's uniform draws (one per patch, or
    one per value), of the quantiles the model predicts when fed the path's own previous draws
    (teacher forcing on the path)."""
    torch.manual_seed(1)
    task = tiny_task(l63["train"])
    model, tok = SciFormer(task.cfg.model).eval(), task.tokenizer
    ctx = task.batch(0)["window"][:4, :16]
    width = 1 if draws == "patch" else 12  # token = 4 steps x 3 channels
    with torch.no_grad():
        gen = torch.Generator().manual_seed(5)
        drawn = _patch_chunk(model, tok, ctx, 8, LEVELS, gen, draws)  # (B, 8, F): 2 patches
        src, state = tok.encode_context(ctx)
        own = tok.encode(drawn, state)  # the path's patches as tokens (B, 2, P*F)
        dec_in = torch.cat([src[:, -1:], own[:, :-1]], dim=1)
        q = patch_quantiles(model, tok, model(src, dec_in), dec_in, 3).sort(dim=-1).values
        gen = torch.Generator().manual_seed(5)
        u = torch.stack([torch.rand(4, 1, width, generator=gen, dtype=torch.float64)
                         for _ in range(2)], dim=1)[:, :, 0]  # (B, 2, width)
        z = np.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)
        again = inverse_cdf(q, normal_scores(LEVELS, ctx.device), z.expand(4, 2, 12)[..., None])
    torch.testing.assert_close(tok.decode(again, state), drawn, rtol=1e-4, atol=1e-4)


def test_summarise_is_empirical_quantiles():
    paths = np.random.default_rng(0).normal(size=(2001, 2, 3, 1))
    med, q = summarise(paths, [0.1, 0.5, 0.9])
    np.testing.assert_allclose(med, np.median(paths, axis=0))
    np.testing.assert_allclose(q[0], np.quantile(paths, 0.1, axis=0))
    assert abs(q[2].mean() - 1.2816) < 0.1  # N(0, 1): 90% quantile


def test_forecaster_api_returns_xarray_on_continued_time(l63):
    fc = load(l63["run"], "cpu")
    with TrajectoryFile(l63["test"]) as f:
        ctx = f.windows(0, 2, 100, 40)  # (2, 40, 3)
    ds = fc.forecast(ctx, horizon=12, samples=8)
    assert ds["median"].dims == ("trajectory", "time", "field")
    assert ds["median"].shape == (2, 12, 3) and ds["samples"].shape == (8, 2, 12, 3)
    assert list(ds["quantile"].values) == LEVELS
    np.testing.assert_allclose(ds["time"].values, (40 + np.arange(12)) * fc.state.dt)
    np.testing.assert_allclose(ds["median"].values, np.median(ds["samples"].values, axis=0),
                               rtol=1e-5, atol=1e-6)
    da = xr.DataArray(ctx[0], dims=("time", "field"),
                      coords={"time": 5.0 + 0.01 * np.arange(40)})
    one = fc.forecast(da, horizon=4, samples=8)
    np.testing.assert_allclose(one["time"].values, 5.0 + 0.01 * np.arange(40, 44))
    with pytest.raises(InputError, match="context: shape"):
        fc.forecast(np.zeros((2, 40, 4)), horizon=4)


def test_teacher_forced_loss_is_finite_for_bins(l63):
    task = tiny_task(l63["train"], "data.tokenizer=bins", "data.n_bins=64")
    model = SciFormer(task.cfg.model)
    w = task.batch(0)["window"]
    loss = teacher_forced_loss(model, task.tokenizer, w[:, :16], w[:, 16:], LEVELS)
    assert torch.isfinite(loss) and loss.item() > 0


# ---- evaluate ------------------------------------------------------------------------------
MODEL_KEYS = {"nrmse", "nrmse_ch", "smape", "vpt", "vpt_smape", "vpt_unit", "crps", "per_step",
              "nrmse_at", "nrmse_1lt"}


def test_evaluate_writes_contract_metrics_and_plots(l63):
    out = l63["root"] / "eval"
    m = evaluate(l63["run"], l63["test"], out, device="cpu")
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["model"]["nrmse"] == pytest.approx(m["model"]["nrmse"])
    for key in ("task", "n_examples", "n_trajectories", "context", "horizon", "dt",
                "lyapunov_time", "scope", "model", "baselines"):
        assert key in on_disk, key
    assert m["task"] == "forecast" and m["context"] == 16 and m["n_trajectories"] == 3
    steps_per_lt = m["lyapunov_time"] / m["dt"]
    assert m["horizon"] == int(np.ceil(3 * steps_per_lt))  # default: 3 Lyapunov times
    assert m["n_examples"] == 3 * 8 and "all 3 trajectories" in m["scope"]
    assert set(m["baselines"]) == {"persistence", "mean", "ridge_ar", "parroting", "nvar"}
    for row in [m["model"], *m["baselines"].values()]:
        assert MODEL_KEYS <= set(row) and "vrmse" not in row  # an ODE state: no VRMSE
        assert len(row["per_step"]["nrmse"]) == m["horizon"]
        assert row["vpt_unit"] == "lyapunov_times"
        first = row["per_step"]["nrmse"][: round(steps_per_lt)]
        assert row["nrmse_1lt"] == pytest.approx(np.mean(first))
    assert MODEL_KEYS <= set(m["model"]) and len(m["model"]["per_step"]["crps"]) == m["horizon"]
    # climatological scale: the mean baseline scores about 1
    assert 0.6 < m["baselines"]["mean"]["nrmse"] < 1.4
    assert m["baselines"]["persistence"]["nrmse_at"]["h1"] < 0.2
    for png in ("forecast.png", "error_vs_horizon.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert "forecast.png" in (out / "summary.md").read_text()


def test_evaluate_training_file_scores_only_heldout_trajectories(l63, monkeypatch):
    monkeypatch.setattr("sciformer.evaluation.forecast.draw_plots", lambda *a, **k: [])  # speed
    m = evaluate(l63["run"], l63["train"], l63["root"] / "eval_train", device="cpu",
                 horizon=12, context=12)
    held = json.loads((l63["run"] / "split.json").read_text())["heldout"]
    assert m["n_trajectories"] == len(held) == 2 and "held-out" in m["scope"]
    assert m["horizon"] == 12 and m["context"] == 12
    assert len(m["model"]["per_step"]["nrmse"]) == 12


def test_evaluate_field_draws_spacetime(tmp_path):
    x = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    t = np.arange(120) * 0.1
    phase = np.arange(6)[:, None, None]
    states = np.sin(x[None, None, :] - t[None, :, None] + phase)[..., None].astype(np.float32)
    data = tmp_path / "waves.h5"
    write_trajectories(data, states, dt=0.1, x=x)
    run = tmp_path / "run"
    pretrain([data], load_config(None, [*TINY, "train.max_steps=4"]), run, progress=False)
    m = evaluate(run, data, tmp_path / "eval", device="cpu")
    assert m["horizon"] == 4 * 8 and m["lyapunov_time"] is None  # no Lyapunov time: 4 x trained
    assert m["model"]["vpt_unit"] == "steps" and "nrmse_1lt" not in m["model"]
    assert (tmp_path / "eval" / "spacetime.png").is_file()


def test_evaluate_rejects_other_channel_count(l63, tmp_path):
    bad = simulate_to_file("lorenz96", tmp_path / "l96.h5", 2, 400, seed=0, params={"n": 5})
    with pytest.raises(InputError, match="l96.h5.*channel count"):
        evaluate(l63["run"], bad, tmp_path / "eval", device="cpu")


def test_evaluate_rejects_too_short_file(l63, tmp_path):
    short = simulate_to_file("lorenz63", tmp_path / "short.h5", 2, 100, seed=3)
    with pytest.raises(InputError, match="short.h5.*fewer than context 16 \\+ horizon"):
        evaluate(l63["run"], short, tmp_path / "eval", device="cpu")


# ---- predict -------------------------------------------------------------------------------
def test_predict_writes_states_and_quantiles_readable_by_xarray(l63, tmp_path):
    out = tmp_path / "pred.h5"
    res = CliRunner().invoke(main, ["predict", str(l63["run"]), str(l63["test"]), "--out",
                                    str(out), "--horizon", "20", "--device", "cpu",
                                    "--samples", "12", "--write-samples"])
    assert res.exit_code == 0, res.output
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        assert ds["states"].shape == (3, 20, 3)
        assert ds["samples"].dims == ("sample", "trajectory", "time", "field")
        assert ds["samples"].shape == (12, 3, 20, 3) and ds.attrs["samples"] == 12
        np.testing.assert_allclose(ds["states"].values, ds["samples"].median("sample").values,
                                   rtol=1e-5, atol=1e-5)
        assert ds["quantiles"].shape == (3, 3, 20, 3)
        assert list(ds["quantiles"].attrs["levels"]) == LEVELS
        q = ds["quantiles"].values
        assert np.all(q[0] <= q[1]) and np.all(q[1] <= q[2])
        np.testing.assert_allclose(ds["states"].values, q[1], rtol=1e-6)
    model, _, _ = load_run(l63["run"])
    assert not model.training


def test_predict_streams_blocks_equal_to_one_forecast(l63, tmp_path):
    """With batch_size 4, 11 trajectories are forecast and written in 3 blocks; the file equals
    one forecast of all contexts at once, and no block is missing or repeated."""
    from sciformer.predict import predict_forecast

    data = simulate_to_file("lorenz63", tmp_path / "many.h5", 11, 60, seed=3)
    fc = load(l63["run"], "cpu")
    fc.cfg.train.batch_size = 4
    out = predict_forecast(fc, data, tmp_path / "f.h5", 12, 8, True, False)
    with TrajectoryFile(data) as f:
        ctx = f.windows(0, 11, 60 - 16, 16)
    paths = fc.sample(ctx, 12, 8, batch=4)
    med, q = summarise(paths, LEVELS)
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["states"][()], med, atol=1e-5)
        np.testing.assert_allclose(f["quantiles"][()], q, atol=1e-5)
        np.testing.assert_allclose(f["samples"][()], paths, atol=1e-6)
        assert f["states"].shape == (11, 12, 3)


# ---- shipped workflows ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["lorenz96-forecast", "ks-forecast"])
def test_forecast_workflows_load(name):
    from sciformer.cli import main as cli
    from sciformer.workflow import load_workflow

    path = Path(__file__).resolve().parents[1] / "workflows" / f"{name}.yaml"
    wf = load_workflow(path, cli.commands)
    verbs = [v for v, *_ in wf["parsed"]]
    assert verbs[:3] == ["simulate", "simulate", "pretrain"] and "evaluate" in verbs
    (args,) = [s["pretrain"] for s in wf["stages"] if "pretrain" in s]
    data = args["config"]["data"]
    assert data["context"] % data["patch_len"] == 0 and data["horizon"] % data["patch_len"] == 0
    sims = [s["simulate"] for s in wf["stages"] if "simulate" in s]
    assert sims[0]["seed"] != sims[1]["seed"]  # the held-out file is a separate simulation

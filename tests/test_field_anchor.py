"""The FNO anchor of hybrid field runs (`data.anchor: fno`): token folding, saving, fitting,
the frozen weights, and a tiny pretrain + evaluate through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import sciformer.evaluation.forecast as fe
from sciformer.config import TrainConfig, load_config
from sciformer.errors import ConfigError
from sciformer.evaluation.fno import FNO2d, FNOBaseline
from sciformer.model.field_anchor import PREFIX, FNOAnchor, is_fno
from sciformer.tokenizers.fields import FieldPatchTokenizer
from sciformer.train.loop import build_optimizer


def shifting_fields(n: int = 4, steps: int = 16, size: int = 16, seed: int = 0) -> np.ndarray:
    """Smooth random fields moving one cell along x per step: (n, steps, size, size, 1)."""
    rng = np.random.default_rng(seed)
    k2 = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2
    out = []
    for _ in range(n):
        spec = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size)))
        f0 = np.fft.ifft2(spec * np.exp(-40 * k2)).real
        out.append(np.stack([np.roll(f0, t, axis=0) for t in range(steps)]))
    return np.stack(out)[..., None]


def small_anchor(patch_len: int = 2, n_in: int = 2, seed: int = 0) -> FNOAnchor:
    torch.manual_seed(seed)
    net = FNO2d(n_in * 2, patch_len * 2, width=6, modes=3, layers=2)
    return FNOAnchor(net, (8, 12, 2, 4, patch_len, n_in), torch.tensor([0.1, -0.2]),
                     torch.tensor([1.5, 0.5]))


def test_the_anchor_of_tokens_is_the_fno_forecast_of_their_frames() -> None:
    """Folding a decoder input's tokens to frames, forecasting the next patch with the FNO
    and cutting it back into tokens gives the anchor, time patch by time patch."""
    anchor, L = small_anchor(), 2
    tok = FieldPatchTokenizer(L, (8, 12, 2), 4, loc=[0.0, 0.0], scale=[1.0, 1.0])
    x = torch.randn(3, 3 * L, 8 * 12 * 2)  # three time patches per window
    state = tok.fit_state(x)
    dec_in = tok.encode(x, state)  # (3, 3 * S, token_dim)
    got = anchor(dec_in, L)
    assert got.shape == dec_in.shape
    for j in range(3):
        frames = x[:, j * L:(j + 1) * L].view(3, L, 8, 12, 2)
        want = tok.encode(anchor.frames_forecast(frames).reshape(3, L, -1), state)
        s = tok.space_tokens
        torch.testing.assert_close(got[:, j * s:(j + 1) * s], want)
    with pytest.raises(ValueError, match="patches of 2 steps"):
        anchor(dec_in, 3)


def test_the_anchor_round_trips_through_its_saved_tensors() -> None:
    anchor = small_anchor()
    anchor.scale = torch.rand(anchor.tok.token_dim) + 0.1
    tensors = {PREFIX + k: v for k, v in anchor.state_dict().items()}
    assert is_fno(tensors) and not is_fno({"anchor.coef": torch.zeros(1)})
    back = FNOAnchor.from_tensors(tensors)
    frames = torch.randn(2, 2, 8, 12, 2)
    torch.testing.assert_close(back.frames_forecast(frames), anchor.frames_forecast(frames))
    torch.testing.assert_close(back.scale, anchor.scale)
    assert FNOAnchor.from_tensors({"model.x": torch.zeros(1)}) is None
    del tensors[PREFIX + "geometry"]
    with pytest.raises(ValueError, match="FNO anchor: tensors incomplete"):
        FNOAnchor.from_tensors(tensors)


def test_training_mode_reuses_the_patches_it_computed() -> None:
    """Training feeds true inputs, so a window's anchor is computed once; the cached value is
    the computed one, and eval mode never caches (sample paths are new every time)."""
    anchor, L = small_anchor(patch_len=2, n_in=1), 2
    tok = anchor.tok
    x = torch.randn(4, 2 * L, 8 * 12 * 2)
    dec_in = tok.encode(x, anchor._unit(4, x))
    want = anchor.eval()(dec_in, L)
    assert not anchor._cache
    anchor.train()
    torch.testing.assert_close(anchor(dec_in, L), want)
    assert len(anchor._cache) == 4 * 2  # one entry per window and time patch
    calls = []
    anchor.net.register_forward_hook(lambda *a: calls.append(1))
    torch.testing.assert_close(anchor(dec_in[:2], L), want[:2])
    assert not calls  # all from the cache
    anchor(tok.encode(x + 1, anchor._unit(4, x)), L)
    assert calls and len(anchor._cache) == 16


def test_a_full_training_cache_still_returns_the_whole_batch(monkeypatch) -> None:
    """When new patches overflow the cache it is dropped, but a batch mixing patches cached
    before and new ones still gets every value (training on own rollouts brings new inputs in
    every batch: this was a KeyError)."""
    import sciformer.model.field_anchor as fa

    anchor, L = small_anchor(patch_len=2, n_in=1), 2
    tok = anchor.tok
    x = torch.randn(4, 2 * L, 8 * 12 * 2)
    dec_in = tok.encode(x, anchor._unit(4, x))
    want = anchor.eval()(dec_in, L)
    anchor.train()
    anchor(dec_in[:2], L)  # 2 windows x 2 patches cached
    per = 2 * 8 * 12 * 2 * 4  # bytes of one patch (float32)
    monkeypatch.setattr(fa, "CACHE_BYTES", 6 * per)  # room for 6 patches, 8 asked
    torch.testing.assert_close(anchor(dec_in, L), want)
    assert len(anchor._cache) == 4  # dropped, then the 4 new patches kept


def test_an_fno_anchored_runs_fno_baseline_is_its_anchor_alone() -> None:
    from sciformer.evaluation.fno import AnchorFNOBaseline

    anchor = small_anchor(patch_len=2, n_in=2).eval()
    loc, scale = [1.0, -2.0], [3.0, 0.5]
    base = AnchorFNOBaseline(anchor, loc, scale, {"steps": 7})
    ctx = np.random.default_rng(0).normal(size=(3, 5, 8 * 12 * 2))
    pred = base.predict(ctx, 5)
    z = (ctx[:, -2:].reshape(3, 2, 8, 12, 2) - loc) / scale
    want = anchor.rollout(torch.as_tensor(z, dtype=torch.float32), 5).double().numpy()
    np.testing.assert_allclose(pred, (want * scale + loc).reshape(3, 5, -1), rtol=1e-6,
                               atol=1e-6)
    assert base.describe()["steps"] == 7 and "anchor" in base.describe()["source"]


def test_a_fitted_anchor_forecasts_a_moving_field_and_measures_its_error() -> None:
    """An FNO predicting 2 frames at once learns a shift (a map its Fourier layers represent
    exactly) far better than persistence; the offset scale is its RMS error per step."""
    fields = shifting_fields()
    trajs = [f.reshape(16, -1) for f in fields]
    fno = FNOBaseline((16, 16, 1), n_in=2, n_out=2, width=8, modes=8, layers=1, steps=150,
                      lr=2e-2, batch_size=8).fit(trajs)
    anchor = FNOAnchor.from_baseline(fno, 8, 2)
    frames = torch.as_tensor(fields[0, :4], dtype=torch.float32)[None]  # (1, 4, 16, 16, 1)
    err = (anchor.frames_forecast(frames[:, :2]) - frames[:, 2:]).abs().mean()
    persist = (frames[:, 1:2] - frames[:, 2:]).abs().mean()
    assert float(err) < 0.1 * float(persist)
    # the FNO baseline's own rollout agrees with the anchor's patch forecast
    pred = fno.predict(trajs[0][None, :2], 3)[0]  # two calls of 2 frames, cut to 3
    torch.testing.assert_close(torch.as_tensor(pred[:2], dtype=torch.float32),
                               anchor.frames_forecast(frames[:, :2])[0].reshape(2, -1),
                               atol=1e-5, rtol=1e-5)
    scale = anchor.fit_scale(trajs).view(2, 8, 8, 1)  # token layout (time, x, y, field)
    assert bool((scale == scale[:, :1, :1]).all())  # one value per step and field
    both = torch.as_tensor(np.stack([t[s:s + 4] for t in trajs for s in range(13)]),
                           dtype=torch.float32).view(-1, 4, 16, 16, 1)
    rms = (anchor.frames_forecast(both[:, :2]) - both[:, 2:]).pow(2).mean(dim=(0, 2, 3, 4))
    torch.testing.assert_close(scale[:, 0, 0, 0], rms.sqrt(), rtol=1e-4, atol=1e-7)


def test_fno_anchor_needs_a_2d_field(tmp_path: Path) -> None:
    from sciformer.io.trajectory_writer import write_trajectories
    from sciformer.tasks.forecast import ForecastTask

    write_trajectories(tmp_path / "ode.h5", np.random.default_rng(0).normal(
        size=(4, 40, 3)).astype(np.float32), dt=0.1)
    cfg = load_config(None, ["data.anchor=fno", "data.context=8", "data.horizon=4",
                             "data.patch_len=4"])
    with pytest.raises(ConfigError, match="data.anchor=fno needs field patch tokens"):
        ForecastTask(cfg, [tmp_path / "ode.h5"])


def test_the_optimizer_leaves_a_frozen_anchor_alone() -> None:
    model = torch.nn.Module()
    model.lin = torch.nn.Linear(3, 3)
    model.anchor = small_anchor()
    opt = build_optimizer(model, TrainConfig())
    held = {id(p) for g in opt.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.lin.parameters()}


def test_tiny_fno_anchored_pretrain_and_evaluate(tmp_path: Path, monkeypatch) -> None:
    import sciformer.calibrate as cal_mod
    from sciformer.cli import main
    from sciformer.io.trajectory_writer import write_trajectories
    from sciformer.pipelines import load

    monkeypatch.setattr(fe, "FNO_STEPS", 3)
    monkeypatch.setattr(cal_mod, "FIELD_PER_TRAJECTORY", 1)  # fields: few calibration windows
    data = tmp_path / "f.h5"
    write_trajectories(data, shifting_fields(4, 40).astype(np.float32), dt=0.1)
    run, out = tmp_path / "run", tmp_path / "eval"
    sets = ["data.context=4", "data.horizon=2", "data.patch_len=2", "data.space_patch=8",
            "data.anchor=fno", "data.anchor_steps=5", "model.d_model=16", "model.n_heads=2",
            "model.n_encoder_layers=1", "model.n_decoder_layers=1", "model.d_ff=32",
            "train.batch_size=4", "train.max_steps=3", "train.eval_every=3",
            "train.checkpoint_every=3", "data.val_fraction=0.25", "data.samples=2"]
    args = ["pretrain", str(data), "--out-dir", str(run)]
    res = CliRunner().invoke(main, args + [a for s in sets for a in ("--set", s)])
    assert res.exit_code == 0, res.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["anchor"] == "fno"
    fitted = json.loads((run / "calibration.json").read_text())["fitted"]
    assert fitted["windows_per_trajectory"] == 1
    fc = load(run)
    assert isinstance(fc.model.anchor, FNOAnchor)
    assert fc.model.anchor.scale.shape == (2 * 8 * 8,)
    res = CliRunner().invoke(main, ["evaluate", str(run), str(data), "--out-dir", str(out),
                                    "--horizon", "6"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert np.isfinite(m["model"]["vrmse_lead_bins"]["2-6"])
    fit = m["baselines"]["fno"]["fit"]
    assert "anchor" in fit["source"] and fit["steps"] == 5  # the anchor, not a refit


def test_a_resumed_run_reads_its_anchor_instead_of_fitting_again(tmp_path: Path,
                                                                  monkeypatch) -> None:
    from safetensors.torch import load_file

    from sciformer.cli import main
    from sciformer.io.trajectory_writer import write_trajectories
    from sciformer.tasks import anchors as task_mod

    data = tmp_path / "f.h5"
    write_trajectories(data, shifting_fields(4, 16).astype(np.float32), dt=0.1)
    run = tmp_path / "run"
    sets = ["data.context=2", "data.horizon=2", "data.patch_len=2", "data.space_patch=8",
            "data.anchor=fno", "data.anchor_steps=2", "model.d_model=16", "model.n_heads=2",
            "model.n_encoder_layers=1", "model.n_decoder_layers=1", "model.d_ff=32",
            "train.batch_size=2", "train.eval_every=2", "train.checkpoint_every=2",
            "data.val_fraction=0.25"]
    base = ["pretrain", str(data), "--out-dir", str(run)] + [a for s in sets
                                                             for a in ("--set", s)]
    res = CliRunner().invoke(main, base + ["--steps", "2"])
    assert res.exit_code == 0, res.output
    first = {k: v for k, v in load_file(str(run / "model.safetensors")).items()
             if k.startswith("anchor.")}

    def refuse(*args, **kwargs):
        raise AssertionError("the anchor was fitted again")

    monkeypatch.setattr(task_mod, "fit_fno_anchor", refuse)
    res = CliRunner().invoke(main, base + ["--steps", "4", "--resume"])
    assert res.exit_code == 0, res.output
    after = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(after[k], v) for k, v in first.items())
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["anchor"]["fit"]["steps"] == 2  # the provenance of the original fit


@pytest.mark.parametrize("nx,ny,modes", [(64, 64, 12), (16, 16, 8), (16, 12, 7), (6, 10, 3),
                                          (8, 8, 4)])
def test_spectral_conv_by_truncated_dft_equals_the_fft_form(nx, ny, modes) -> None:
    """The truncated DFT products give what a full rfft2, the kept modes times the weights
    and an irfft2 of the zero-padded spectrum give (Nyquist bins included)."""
    from benchmarks.fno_forward import textbook_spectral
    from sciformer.evaluation.fno import SpectralConv2d

    torch.manual_seed(0)
    conv = SpectralConv2d(5, modes).double()
    x = torch.randn(3, 5, nx, ny, dtype=torch.float64)
    with torch.no_grad():
        want = textbook_spectral(conv, x)
        torch.testing.assert_close(conv(x), want, rtol=1e-10, atol=1e-12)


def test_spectral_conv_weights_kept_for_inference_follow_the_weights() -> None:
    """Inference keeps the real form of the mode weights between calls; an update of the
    weights (an optimizer step, a load) is seen by the next call, and with gradients on the
    output is the same and the weights get a gradient."""
    from sciformer.evaluation.fno import SpectralConv2d

    torch.manual_seed(0)
    conv = SpectralConv2d(4, 3)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        before = conv(x)
        conv.weight.mul_(2.0)  # in place, as an optimizer step is
        after = conv(x)
    torch.testing.assert_close(after, 2.0 * before)
    out = conv(x)  # gradients on: built afresh from the weights
    torch.testing.assert_close(out.detach(), after)
    out.square().sum().backward()
    assert conv.weight.grad is not None and float(conv.weight.grad.abs().sum()) > 0


def test_pointwise_product_equals_the_1x1_convolution() -> None:
    """The FNO's pointwise layers as batched matrix products give conv(x) (+ add)."""
    from sciformer.evaluation.fno import pointwise

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5, 7, 1)
    x, add = torch.randn(3, 5, 6, 4), torch.randn(3, 7, 6, 4)
    torch.testing.assert_close(pointwise(conv, x), conv(x))
    torch.testing.assert_close(pointwise(conv, x, add=add), conv(x) + add)

"""The analogue forecast (`sciformer.model.analog`) and zoo models anchored on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_anchor import zero_head
from test_zoo_model import TINY, fake_corpus

from sciformer.config import load_config
from sciformer.errors import ConfigError
from sciformer.model.analog import AnalogAnchor, analog_forecast
from sciformer.pipelines import load
from sciformer.pipelines.forecast import analog_tokens
from sciformer.simulate import simulate_to_file
from sciformer.tasks import build_task
from sciformer.tasks.forecast import teacher_forced_loss
from sciformer.tokenizers.timeseries import pinball_loss
from sciformer.train.loop import pretrain

ANALOG = ["data.anchor=analog"]


def test_a_periodic_signal_is_continued_exactly_past_the_context_end():
    t = torch.arange(200, dtype=torch.float64)
    x = torch.stack([torch.sin(2 * np.pi * t / 23), 40 * torch.cos(2 * np.pi * t / 23)], -1)
    pred = analog_forecast(x[None, :120], 80, motif=4, theiler=8, neighbours=3)
    torch.testing.assert_close(pred[0], x[120:], atol=1e-9, rtol=0)


def test_neighbours_are_averaged_and_the_theiler_window_is_respected():
    # a ramp: the present's best match is always the stretch just before it, which the
    # Theiler window forbids; the closest allowed ones end `theiler` steps before the end
    x = torch.arange(40, dtype=torch.float64)[None, :, None]
    one = analog_forecast(x, 3, motif=2, theiler=5, neighbours=1)
    torch.testing.assert_close(one[0, :, 0], torch.tensor([35.0, 36.0, 37.0], dtype=torch.float64))
    two = analog_forecast(x, 1, motif=2, theiler=5, neighbours=2)
    assert float(two[0, 0, 0]) == pytest.approx((35.0 + 34.0) / 2)


def test_channels_weigh_by_their_own_spread_not_their_units():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 64, 3, generator=gen, dtype=torch.float64).cumsum(1)
    scaled = x * torch.tensor([1.0, 1e4, 1e-3], dtype=torch.float64)
    a, b = analog_forecast(x, 10), analog_forecast(scaled, 10)
    torch.testing.assert_close(b / torch.tensor([1.0, 1e4, 1e-3], dtype=torch.float64), a)


def test_a_context_too_short_for_one_candidate_is_refused():
    with pytest.raises(ValueError, match="at least motif 4 \\+ Theiler window 8"):
        analog_forecast(torch.zeros(1, 11, 3), 5, motif=4, theiler=8)


def test_zoo_batches_carry_the_anchor_computed_on_the_whole_state(tmp_path):
    corpus = fake_corpus(tmp_path / "zoo.h5", [3, 4, 6, 3], n_time=100)
    task = build_task(load_config(None, [*TINY, *ANALOG, "data.context=64"]), [corpus])
    c, h = task.cfg.data.context, task.cfg.data.horizon
    b = task.batch(0)
    assert b["anchor"].shape == (len(b["window"]), h, 1) and torch.isfinite(b["anchor"]).all()
    # one channel of a 3-channel window: its anchor comes from the whole state's analogues,
    # which here differ from those of the channel alone
    gen = np.random.default_rng(0)
    whole = gen.normal(size=(c + h, 3)).cumsum(axis=0).astype(np.float32)
    packed = task._pack([(whole, slice(1, 2))])
    full = analog_forecast(torch.from_numpy(whole[None, :c]), h)[0, :, 1]
    alone = analog_forecast(torch.from_numpy(whole[None, :c, 1:2]), h)[0, :, 0]
    torch.testing.assert_close(packed["anchor"][0, :, 0], full)
    assert not torch.allclose(full, alone)


def test_zoo_refuses_an_anchor_fitted_on_training_data(tmp_path):
    corpus = fake_corpus(tmp_path / "zoo.h5", [3, 4])
    with pytest.raises(ConfigError, match="data.anchor='nvar'.*'analog' or 'persistence'"):
        build_task(load_config(None, [*TINY, "data.anchor=nvar"]), [corpus])


@pytest.fixture(scope="module")
def analog_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("analog")
    corpus = fake_corpus(root / "zoo.h5", [3, 4, 5, 3], n_time=80)
    pretrain([corpus], load_config(None, [*TINY, *ANALOG]), root / "run", progress=False)
    return root / "run"


def test_an_analog_run_records_and_reloads_its_anchor(analog_run):
    cfg = json.loads((analog_run / "config.json").read_text())
    assert cfg["data"]["anchor"] == "analog" and cfg["anchor"]["kind"] == "analog"
    fc = load(analog_run, device="cpu")
    assert isinstance(fc.model.anchor, AnalogAnchor)


def test_with_a_silent_head_the_forecast_is_the_analogue_forecast(analog_run):
    """The anchor reaches inference: zero offsets give back the analogue forecast of every
    chunk, computed from each path's own context."""
    fc = load(analog_run, device="cpu")
    zero_head(fc.model)
    t = np.arange(120)
    ctx = np.stack([np.sin(2 * np.pi * t / 9), 5 + np.cos(2 * np.pi * t / 9)], -1)[None]
    horizon = 3 * fc.trained_horizon  # three chunks, each re-anchored on its own context
    paths = fc.sample(ctx, horizon, samples=2, calibrated=False)
    use = fc.check_context_length(ctx.shape[1], "ctx")
    expect = ctx[:, -use:]
    for _ in range(3):
        nxt = analog_forecast(torch.from_numpy(expect[:, -use:]), fc.trained_horizon).numpy()
        expect = np.concatenate([expect, nxt], axis=1)
    np.testing.assert_allclose(paths[0], expect[:, use:], atol=1e-4)
    np.testing.assert_allclose(paths[1], paths[0])


def test_training_loss_uses_the_anchor_given_for_one_channel_rows(analog_run):
    fc = load(analog_run, device="cpu")
    zero_head(fc.model)
    tok, levels = fc.tokenizer, [0.1, 0.5, 0.9]
    gen = torch.Generator().manual_seed(1)
    ctx, fut = torch.randn(2, 16, 1, generator=gen), torch.randn(2, 8, 1, generator=gen)
    anchor = torch.randn(2, 8, 1, generator=gen)  # as a zoo batch gives it, per row
    loss = teacher_forced_loss(fc.model, tok, ctx, fut, levels, anchor_future=anchor)
    state = tok.fit_state(ctx)
    base = tok.encode(anchor, state)[..., None].expand(-1, -1, -1, 3)
    want = pinball_loss(base, tok.encode(fut, state), torch.tensor(levels))
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)
    # without a given anchor the loss anchors on the analogue forecast of `ctx` itself
    own = analog_tokens(fc.model, tok, ctx, state, 2)
    base = own[..., None].expand(-1, -1, -1, 3)
    want = pinball_loss(base, tok.encode(fut, state), torch.tensor(levels))
    loss = teacher_forced_loss(fc.model, tok, ctx, fut, levels)
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-5)


def test_the_decoder_reads_the_anchor_and_refuses_to_go_without_it(analog_run):
    fc = load(analog_run, device="cpu")
    model, d = fc.model, fc.model.cfg.input_dim
    assert model.cfg.anchor_input and model.anchor_in is not None
    src, dec = torch.randn(2, 4, d), torch.randn(2, 2, d)
    memory = model.encode(src)
    with pytest.raises(ValueError, match="reads the anchor"):
        model.decode(dec, memory)
    a, b = torch.zeros(2, 2, d), torch.ones(2, 2, d)
    with torch.no_grad():
        assert not torch.allclose(model.decode(dec, memory, anchor=a),
                                  model.decode(dec, memory, anchor=b))


def test_zoo_batches_follow_the_sampled_inputs_schedule_and_refuse_pushforward(tmp_path):
    corpus = fake_corpus(tmp_path / "zoo.h5", [3, 4, 6, 3], n_time=64)
    task = build_task(load_config(None, [*TINY, *ANALOG, "data.sampled_inputs=1.0"]), [corpus])
    batch = task.batch(3)
    assert int(batch["plan"][0]) == 1
    from sciformer.model import SciFormer

    model = SciFormer(task.cfg.model)
    task.init_model(model)
    loss, _ = task.loss(model, batch)
    assert torch.isfinite(loss)
    plain = build_task(load_config(None, [*TINY, *ANALOG]), [corpus])
    assert int(plain.batch(3)["plan"][0]) == 0
    torch.testing.assert_close(plain.batch(3)["window"], batch["window"])  # same windows
    with pytest.raises(ConfigError, match="pushforward is not supported"):
        build_task(load_config(None, [*TINY, "data.pushforward=1"]), [corpus])


def test_a_context_too_short_for_the_anchor_is_a_config_error(tmp_path):
    corpus = fake_corpus(tmp_path / "zoo.h5", [3, 4])
    with pytest.raises(ConfigError, match="needs data.context >= 12 steps"):
        build_task(load_config(None, [*TINY, "data.context=8"]), [corpus])
    train = simulate_to_file("lorenz63", tmp_path / "l63.h5", 4, 100, seed=0)
    with pytest.raises(ConfigError, match="needs data.context >= 12 steps"):
        build_task(load_config(None, [*TINY, *ANALOG, "data.context=8"]), [train])


def test_fine_tuning_an_analog_zoo_run_on_a_trajectory_file_keeps_its_anchor(analog_run,
                                                                          tmp_path):
    """`--init-from` a zoo run onto one system's file (a per-dataset task, whole-state
    windows): the new run keeps the analogue anchor and the decoder's anchor input, its
    first loss is the source model's, and it forecasts."""
    from click.testing import CliRunner

    from sciformer.cli import main
    from sciformer.runs import load_model

    data = simulate_to_file("lorenz63", tmp_path / "l63.h5", 4, 120, seed=2)
    run = tmp_path / "ft"
    sets = [a for s in ["train.max_steps=2", "train.log_every=1", "train.batch_size=8",
                        "train.warmup_steps=1", "data.val_fraction=0.25"] for a in ("--set", s)]
    res = CliRunner().invoke(main, ["pretrain", str(data), "--out-dir", str(run),
                                    "--init-from", str(analog_run), *sets])
    assert res.exit_code == 0, res.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["anchor"] == "analog" and cfg["model"]["anchor_input"] is True
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    source = load_model(analog_run, device="cpu")[0].eval()
    task = build_task(load_config(None, [*TINY, *ANALOG, "data.channels=independent",
                                         "data.scaling=instance", "train.max_steps=2",
                                         "data.val_fraction=0.25"]), [data])
    with torch.no_grad():
        expected = task.loss(source, task.batch(0))[0].item()
    assert first["loss"] == pytest.approx(expected, rel=1e-5)
    fc = load(run, device="cpu")
    assert isinstance(fc.model.anchor, AnalogAnchor)
    ds = fc.forecast(np.random.default_rng(0).normal(size=(1, 40, 3)), horizon=12, samples=2)
    assert np.isfinite(ds["median"].values).all()


def test_a_window_s_forecast_does_not_depend_on_the_rest_of_the_batch():
    gen = torch.Generator().manual_seed(3)
    quiet = torch.randn(1, 64, 2, generator=gen, dtype=torch.float64).cumsum(1)
    quiet[..., 1] = 1e-6 * quiet[..., 1]  # a channel of tiny, not negligible, spread
    loud = 1e6 * torch.randn(1, 64, 2, generator=gen, dtype=torch.float64).cumsum(1)
    alone = analog_forecast(quiet, 10)
    torch.testing.assert_close(analog_forecast(torch.cat([quiet, loud]), 10)[:1], alone)

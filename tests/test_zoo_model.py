"""Channel-agnostic forecasting, zoo pretraining, context-only baselines, fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sciformer.cli import main
from sciformer.config import load_config
from sciformer.errors import InputError
from sciformer.pipelines import load
from sciformer.simulate import simulate_to_file
from sciformer.tokenizers.agnostic import ChannelAgnosticPatchTokenizer
from sciformer.train.loop import pretrain

TINY = ["model.d_model=32", "model.n_heads=4", "model.n_encoder_layers=1",
        "model.n_decoder_layers=1", "model.d_ff=64", "model.dropout=0.0", "data.context=16",
        "data.horizon=8", "data.patch_len=4", "train.batch_size=8", "train.max_steps=10",
        "train.warmup_steps=2", "train.eval_every=10", "train.log_every=1",
        "train.checkpoint_every=10", "data.val_fraction=0.25", "data.quantiles=[0.1, 0.5, 0.9]",
        "data.samples=4"]
AGNOSTIC = ["data.channels=independent", "data.scaling=instance"]


@pytest.fixture(scope="module")
def agnostic_run(tmp_path_factory) -> dict[str, Path]:
    """A 10-step channel-agnostic run on 3-channel Lorenz-63 data."""
    root = tmp_path_factory.mktemp("agn")
    train = simulate_to_file("lorenz63", root / "train.h5", 4, 200, seed=0)
    run = root / "run"
    pretrain([train], load_config(None, [*TINY, *AGNOSTIC]), run, progress=False)
    return {"root": root, "train": train, "run": run}


# ---- 1. channel-agnostic tokens -------------------------------------------------------------
def test_agnostic_tokenizer_round_trips_any_channel_count():
    tok = ChannelAgnosticPatchTokenizer(4)
    for f in (1, 3, 64):
        x = torch.randn(2, 16, f) * 3 + 5
        tokens, state = tok.encode_context(x)
        assert tokens.shape == (2 * f, 4, 4)
        torch.testing.assert_close(tok.decode(tokens, state), x)


def test_agnostic_run_records_it_and_forecasts_a_five_channel_file(agnostic_run, tmp_path):
    cfg = json.loads((agnostic_run["run"] / "config.json").read_text())
    assert cfg["channel_agnostic"] is True and cfg["tokenizer"]["name"] == "patch_any"
    l96 = simulate_to_file("lorenz96", tmp_path / "l96.h5", 2, 40, seed=0, params={"n": 5})
    out = tmp_path / "pred.h5"
    res = CliRunner().invoke(main, ["predict", str(agnostic_run["run"]), str(l96), "--out",
                                    str(out), "--horizon", "8", "--samples", "4"])
    assert res.exit_code == 0, res.output
    with h5py.File(out) as f:
        assert f["states"].shape == (2, 8, 5)
        assert np.isfinite(f["states"][...]).all()


def test_per_dataset_run_still_refuses_other_channel_counts(tmp_path):
    train = simulate_to_file("lorenz63", tmp_path / "train.h5", 4, 100, seed=0)
    pretrain([train], load_config(None, [*TINY, "train.max_steps=1"]), tmp_path / "run",
             progress=False)
    fc = load(tmp_path / "run", device="cpu")
    with pytest.raises(InputError, match="channel count"):
        fc.check_state_shape((5,), "x.h5")


# ---- 2. pretraining on a zoo corpus ---------------------------------------------------------
def fake_corpus(path: Path, dims: list[int], n_traj: int = 2, n_time: int = 64) -> Path:
    """A corpus in the zoo format whose group g has dims[g] channels, every value equal to
    the group index g (so a window tells which group it came from)."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "sciformer-zoo"
        f.attrs["format_version"] = 1
        f.attrs["base_systems"] = ["chen", "lu"]
        f.attrs["held_out_systems"] = ["rossler", "halvorsen"]
        for g, dim in enumerate(dims):
            grp = f.create_group(f"systems/{g:05d}_chen")
            grp["states"] = np.full((n_traj, n_time, dim), float(g), np.float32)
            grp["states"][:, :, 0] += np.sin(np.arange(n_time) / 3.0)  # not constant
            grp.attrs.update(system="chen", base_systems=["chen"], params="{}", coupling="",
                             dt=0.01, period=1.0, timescale=1.0, lyapunov_time=1.0,
                             field_names=[f"x{j}" for j in range(dim)])
    return path


def test_zoo_task_reads_mixed_dimensions_and_never_trains_on_heldout_groups(tmp_path):
    from sciformer.tasks import build_task

    corpus = fake_corpus(tmp_path / "zoo.h5", [3, 4, 6, 3, 5, 9, 3, 4])
    task = build_task(load_config(None, [*TINY, "data.val_fraction=0.25"]), [corpus])
    assert type(task).__name__ == "ZooTask" and len(task.val_idx) == 2
    assert sorted(task.train_idx + task.val_idx) == list(range(8))
    seen = set()
    for i in range(40):
        b = task.batch(i)
        w, groups = b["window"], b["channels"]
        assert len(groups) == 8 and w.shape == (int(groups.sum()), 24, 1)
        seen |= {int(round(v)) for v in w[:, :, 0].max(dim=1).values.floor().tolist()}
    assert seen <= set(task.train_idx) and not seen & set(task.val_idx)
    assert len(seen) >= 4  # systems of several dimensions were drawn
    state = task.state()
    assert state.channel_agnostic and state.base_systems == ["chen", "lu"]
    split = task.split()
    assert split["unit"] == "system" and set(split["heldout_systems"]).isdisjoint(
        split["train_systems"])


def test_pretrain_cli_recognises_a_corpus_and_records_base_systems(tmp_path):
    corpus = fake_corpus(tmp_path / "zoo.h5", [3, 5, 4, 6])
    run = tmp_path / "run"
    sets = [a for s in [*TINY, "train.max_steps=2"] for a in ("--set", s)]
    res = CliRunner().invoke(main, ["pretrain", str(corpus), "--out-dir", str(run), *sets])
    assert res.exit_code == 0, res.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["base_systems"] == ["chen", "lu"] and cfg["channel_agnostic"] is True
    assert cfg["data"]["scaling"] == "instance" and cfg["data"]["channels"] == "independent"


def test_zoo_corpus_refuses_explicit_dataset_scaling(tmp_path):
    from sciformer.errors import ConfigError
    from sciformer.tasks import build_task

    corpus = fake_corpus(tmp_path / "zoo.h5", [3, 4])
    with pytest.raises(ConfigError, match="data.scaling='dataset'"):
        build_task(load_config(None, [*TINY, "data.scaling=dataset"]), [corpus])


# ---- 3. zero-shot evaluation with context-only baselines ------------------------------------
def test_context_parroting_continues_a_periodic_signal_exactly():
    from sciformer.evaluation.context_baselines import context_baselines

    t = np.arange(96 + 40)
    x = np.stack([np.sin(2 * np.pi * t / 12), np.cos(2 * np.pi * t / 12) * 3], axis=1)
    wins = np.stack([x[s:s + 96 + 20] for s in (0, 5, 17)])  # (3, 116, 2)
    base = context_baselines()
    pred = base["parroting_ctx"].predict(wins[:, :96], 20)
    np.testing.assert_allclose(pred, wins[:, 96:], atol=1e-12)
    np.testing.assert_allclose(base["persistence"].predict(wins[:, :96], 3),
                               np.repeat(wins[:, 95:96], 3, axis=1))
    np.testing.assert_allclose(base["mean_ctx"].predict(wins[:, :96], 1)[:, 0],
                               wins[:, :96].mean(axis=1))
    # a linear recursion is learned exactly from the context by ridge AR and NVAR
    for name in ("ridge_ctx", "nvar_ctx"):
        err = np.abs(base[name].predict(wins[:, :96], 20) - wins[:, 96:]).max()
        assert err < 1e-2, (name, err)


def test_zero_shot_evaluate_scores_context_only_baselines_on_five_channels(agnostic_run,
                                                                          tmp_path):
    from sciformer.evaluation.run import evaluate

    l96 = simulate_to_file("lorenz96", tmp_path / "l96.h5", 2, 120, seed=0, params={"n": 5})
    m = evaluate(agnostic_run["run"], l96, tmp_path / "eval", horizon=16, samples=4,
                 device="cpu")
    assert m["zero_shot"] is True
    assert m["baselines_context_only"] == ["analog_ctx", "mean_ctx", "nvar_ctx",
                                           "parroting_ctx", "persistence", "ridge_ctx"]
    assert set(m["baselines"]) == set(m["baselines_context_only"])
    assert len(m["channels"]) == 5 and np.isfinite(m["model"]["nrmse"])
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["baselines"]["parroting_ctx"]["fit"]["fit"].startswith("context only")


# ---- 4. fine-tuning with --init-from --------------------------------------------------------
def test_init_from_loads_the_weights_first_loss_equals_the_source_models(agnostic_run,
                                                                        tmp_path):
    from sciformer.runs import load_model
    from sciformer.tasks import build_task

    new_data = simulate_to_file("lorenz96", tmp_path / "l96.h5", 4, 100, seed=2,
                                params={"n": 5})
    run = tmp_path / "ft"
    sets = [a for s in ["train.max_steps=1", "train.log_every=1", "train.batch_size=8",
                        "train.warmup_steps=1", "data.val_fraction=0.25", "train.lr=1e-3"]
            for a in ("--set", s)]
    res = CliRunner().invoke(main, ["pretrain", str(new_data), "--out-dir", str(run),
                                    "--init-from", str(agnostic_run["run"]), *sets])
    assert res.exit_code == 0, res.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["init_from"] == str(agnostic_run["run"])
    assert cfg["model"]["d_model"] == 32 and cfg["data"]["context"] == 16  # the source's
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    source = load_model(agnostic_run["run"], device="cpu")[0].eval()
    task = build_task(load_config(None, [*TINY, *AGNOSTIC, "train.max_steps=1",
                                         "data.val_fraction=0.25"]), [new_data])
    with torch.no_grad():
        expected = task.loss(source, task.batch(0))[0].item()
    assert first["loss"] == pytest.approx(expected, rel=1e-5)


def test_init_from_refuses_a_masked_run_with_one_line(tmp_path):
    from conftest import TINY_MASKED, write_fasta

    fasta = write_fasta(tmp_path / "p.fasta")
    masked = tmp_path / "masked"
    pretrain([fasta], load_config(None, [*TINY_MASKED, "train.max_steps=1"]), masked,
             progress=False)
    data = simulate_to_file("lorenz63", tmp_path / "l63.h5", 4, 100, seed=0)
    res = CliRunner().invoke(main, ["pretrain", str(data), "--out-dir", str(tmp_path / "ft"),
                                    "--init-from", str(masked)])
    assert res.exit_code != 0
    assert res.output.strip().splitlines() == [
        f"Error: {masked}: --init-from needs a forecasting run; this is a 'masked' run"]


def test_init_from_refuses_a_per_dataset_run_on_another_channel_count(tmp_path):
    train = simulate_to_file("lorenz63", tmp_path / "l63.h5", 4, 100, seed=0)
    src = tmp_path / "src"
    pretrain([train], load_config(None, [*TINY, "train.max_steps=1"]), src, progress=False)
    l96 = simulate_to_file("lorenz96", tmp_path / "l96.h5", 4, 100, seed=0, params={"n": 5})
    res = CliRunner().invoke(main, ["pretrain", str(l96), "--out-dir", str(tmp_path / "ft"),
                                    "--init-from", str(src)])
    assert res.exit_code != 0 and "incompatible with this data" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_agnostic_forecaster_api_takes_any_channel_count(agnostic_run):
    fc = load(agnostic_run["run"], device="cpu")
    ctx = np.random.default_rng(0).normal(size=(2, 32, 7)).cumsum(axis=1)
    ds = fc.forecast(ctx, horizon=8, samples=4)
    assert ds["median"].shape == (2, 8, 7)


def test_unseen_file_of_the_trained_system_is_not_called_zero_shot(agnostic_run, tmp_path):
    from sciformer.evaluation.run import evaluate

    other = simulate_to_file("lorenz63", tmp_path / "l63b.h5", 1, 60, seed=5)
    m = evaluate(agnostic_run["run"], other, tmp_path / "eval", horizon=8, samples=2,
                 device="cpu")
    assert m["zero_shot"] is False and m["trained_on_system"] == "lorenz63"
    assert "parroting_ctx" in m["baselines_context_only"]

"""Channel attention for channel-agnostic forecasts: grouping, equivariance, old runs, zoo
batches of whole windows."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sciformer.cli import main
from sciformer.config import ModelConfig, load_config
from sciformer.errors import ConfigError
from sciformer.io.trajectory_writer import write_trajectories
from sciformer.model.channels import group_layout
from sciformer.model.transformer import SciFormer
from sciformer.pipelines import load
from sciformer.simulate import simulate, simulate_to_file
from sciformer.train.loop import pretrain

TINY = ["model.d_model=32", "model.n_heads=4", "model.n_encoder_layers=2",
        "model.n_decoder_layers=1", "model.d_ff=64", "model.dropout=0.0", "data.context=16",
        "data.horizon=8", "data.patch_len=4", "train.batch_size=4", "train.max_steps=3",
        "train.warmup_steps=1", "train.eval_every=3", "train.log_every=1",
        "train.checkpoint_every=3", "data.val_fraction=0.25", "data.quantiles=[0.1, 0.5, 0.9]",
        "data.samples=2"]


def mixing_model(seed: int = 0) -> SciFormer:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=1, d_ff=64,
                      dropout=0.0, vocab_size=0, input_dim=4, output_dim=12,
                      channel_attention=True)
    return SciFormer(cfg).eval()


def test_channel_attention_is_permutation_equivariant_over_channels():
    model = mixing_model()
    b, c, n = 3, 5, 6
    src, tgt = torch.randn(b * c, n, 4), torch.randn(b * c, 2, 4)
    perm = torch.tensor([3, 0, 4, 1, 2])
    rows = (torch.arange(b)[:, None] * c + perm[None, :]).reshape(-1)  # permuted within windows
    with torch.no_grad():
        out = model(src, tgt, channels=c)
        out_p = model(src[rows], tgt[rows], channels=c)
    torch.testing.assert_close(out_p, out[rows], atol=1e-5, rtol=1e-5)
    # and the channels do meet: changing channel 1 of window 0 moves channel 0 of window 0,
    # never a row of another window
    changed = src.clone()
    changed[1] += 1.0
    with torch.no_grad():
        mem, mem2 = model.encode(src, channels=c), model.encode(changed, channels=c)
    assert (mem2[0] - mem[0]).abs().max() > 1e-3
    torch.testing.assert_close(mem2[c:], mem[c:])


def test_packed_windows_of_different_channel_counts_equal_separate_encodes():
    model = mixing_model(1)
    sizes = [3, 1, 5, 2]
    wins = [torch.randn(s, 4, 4) for s in sizes]
    with torch.no_grad():
        packed = model.encode(torch.cat(wins), channels=torch.tensor(sizes))
        alone = torch.cat([model.encode(w, channels=len(w)) for w in wins])
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)


def test_grouping_is_checked_and_required():
    model = mixing_model()
    with pytest.raises(ValueError, match="needs the channels"):
        model.encode(torch.randn(6, 4, 4))
    with pytest.raises(ValueError, match="not whole windows"):
        model.encode(torch.randn(7, 4, 4), channels=3)
    with pytest.raises(ValueError, match="do not partition"):
        group_layout(torch.tensor([3, 3]), 7)


def test_channel_attention_needs_independent_channels():
    with pytest.raises(ConfigError, match="model.channel_attention"):
        load_config(None, ["model.channel_attention=true", "data.channels=joint"])


# ---- zoo batches: whole windows -------------------------------------------------------------
def coded_corpus(path: Path, dims: list[int], n_traj: int = 3, n_time: int = 80) -> Path:
    """A zoo-format corpus whose value at (group g, trajectory t, step s, channel c) is
    g * 1e5 + t * 1e4 + s * 10 + c, exact in float32, so a row says where it came from."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "sciformer-zoo"
        f.attrs["base_systems"] = ["chen"]
        f.attrs["held_out_systems"] = ["rossler"]
        for g, dim in enumerate(dims):
            t, s, c = np.meshgrid(np.arange(n_traj), np.arange(n_time), np.arange(dim),
                                  indexing="ij")
            grp = f.create_group(f"systems/{g:05d}_chen")
            grp["states"] = (g * 1e5 + t * 1e4 + s * 10 + c).astype(np.float32)
            grp.attrs.update(system="chen", base_systems=["chen"], params="{}", coupling="",
                             dt=0.01, period=1.0, timescale=1.0, lyapunov_time=1.0,
                             field_names=[f"x{j}" for j in range(dim)])
    return path


def test_zoo_batches_never_mix_channels_of_different_windows(tmp_path):
    from sciformer.tasks import build_task

    dims = [3, 4, 6, 1, 5, 9, 3, 2]
    task = build_task(load_config(None, [*TINY, "train.batch_size=6",
                                         "model.channel_attention=true",
                                         "data.channels=independent"]),
                      [coded_corpus(tmp_path / "zoo.h5", dims)])
    for i in range(30):
        b = task.batch(i)
        rows, groups = b["window"][:, :, 0].double().numpy(), b["channels"].tolist()
        assert len(groups) == 6 and sum(groups) == len(rows)
        first = 0
        for size in groups:
            win = rows[first:first + size]  # (C, T): the rows of one window
            first += size
            g, t = (win[:, 0] // 1e5).astype(int), (win[:, 0] % 1e5 // 1e4).astype(int)
            start = (win[:, 0] % 1e4 // 10).astype(int)
            ch = (win[:, 0] % 10).astype(int)
            assert len(set(g)) == len(set(t)) == len(set(start)) == 1  # one window
            assert size == dims[g[0]] and ch.tolist() == list(range(size))  # all its channels
            assert g[0] in task.train_idx
            steps = np.arange(win.shape[1]) * 10
            np.testing.assert_array_equal(win - win[:, :1], np.broadcast_to(steps, win.shape))


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("zoo_ca")
    corpus = coded_corpus(root / "zoo.h5", [3, 4, 2, 5])
    with h5py.File(corpus, "r+") as f:  # chaotic-looking values instead of the codes
        rng = np.random.default_rng(0)
        for name in f["systems"]:
            x = f["systems"][name]["states"]
            x[...] = np.cumsum(rng.normal(size=x.shape), axis=1).astype(np.float32)
    run = root / "run"
    pretrain([corpus], load_config(None, [*TINY, "model.channel_attention=true",
                                         "data.channels=independent"]), run,
             progress=False)
    return run


@pytest.mark.parametrize("channels", [1, 64])
def test_zoo_run_with_channel_attention_predicts_any_channel_count(zoo_run, tmp_path,
                                                                   channels):
    cfg = json.loads((zoo_run / "config.json").read_text())
    assert cfg["model"]["channel_attention"] is True
    data = tmp_path / "x.h5"
    if channels == 1:  # one channel of Lorenz-63
        res = simulate("lorenz63", 2, 40, seed=0)
        write_trajectories(data, res.states[:, :, :1].astype(np.float32), dt=res.dt,
                           system="lorenz63_x")
    else:
        data = simulate_to_file("lorenz96", data, 2, 40, seed=0, params={"n": channels})
    out = tmp_path / "pred.h5"
    res = CliRunner().invoke(main, ["predict", str(zoo_run), str(data), "--out", str(out),
                                    "--horizon", "12", "--samples", "2"])
    assert res.exit_code == 0, res.output
    with h5py.File(out) as f:
        assert f["states"].shape == (2, 12, channels)
        assert np.isfinite(f["states"][...]).all()


def test_a_run_saved_without_the_field_loads_unchanged(tmp_path):
    train = simulate_to_file("lorenz63", tmp_path / "train.h5", 4, 100, seed=0)
    run = tmp_path / "run"
    pretrain([train], load_config(None, [*TINY, "data.channels=independent",
                                         "data.scaling=instance"]), run, progress=False)
    ctx = np.asarray(h5py.File(train)["states"][:2, :32], dtype=np.float32)
    before = load(run, device="cpu").sample(ctx, 8, samples=2)
    raw = json.loads((run / "config.json").read_text())
    assert raw["model"].pop("channel_attention") is False  # an old run's config.json
    (run / "config.json").write_text(json.dumps(raw))
    fc = load(run, device="cpu")
    assert fc.model.cfg.channel_attention is False and fc.model.channel_layers is None
    np.testing.assert_array_equal(fc.sample(ctx, 8, samples=2), before)


def test_zoo_batches_without_channel_attention_are_one_channel_windows(tmp_path):
    from sciformer.tasks import build_task

    dims = [3, 4, 6, 1, 5, 9, 3, 2]
    task = build_task(load_config(None, [*TINY, "train.batch_size=6"]),
                      [coded_corpus(tmp_path / "zoo.h5", dims)])
    assert not task.cfg.model.channel_attention  # off unless asked for
    seen = set()
    for i in range(30):
        b = task.batch(i)
        rows = b["window"][:, :, 0].double().numpy()
        assert b["channels"].tolist() == [1] * 6 and rows.shape[0] == 6
        g = (rows[:, 0] // 1e5).astype(int)
        assert set(g) <= set(task.train_idx)
        seen.update((rows[:, 0] % 10).astype(int).tolist())
        steps = np.arange(rows.shape[1]) * 10  # one channel's consecutive steps
        np.testing.assert_array_equal(rows - rows[:, :1], np.broadcast_to(steps, rows.shape))
    assert len(seen) > 3  # channels other than the first are drawn

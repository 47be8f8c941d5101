"""Two-dimensional fields: space-time patch tokens, the block-causal decoder, the FNO baseline,
VRMSE by lead bin, and a tiny 2-D pretrain + evaluate through the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sciformer.config import ModelConfig
from sciformer.evaluation import forecast as fe
from sciformer.evaluation.fno import FNOBaseline
from sciformer.evaluation.metrics import ForecastScore, lead_bin_means
from sciformer.model import SciFormer
from sciformer.model.attention import KERNELS, AttnMask, LinearKernel
from sciformer.tokenizers.fields import FieldPatchTokenizer
from sciformer.tokenizers.timeseries import tokenizer_from_config


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def field_tok(shape=(8, 12, 2), p=4, pt=2) -> FieldPatchTokenizer:
    n_f = shape[-1]
    return FieldPatchTokenizer(pt, shape, p, loc=[0.5 * i for i in range(n_f)],
                               scale=[1.0 + i for i in range(n_f)])


# ---- tokenizer -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(8, 12, 2), (4, 8, 4, 1)])
def test_field_tokens_round_trip_exactly(shape) -> None:
    tok = field_tok(shape)
    x = torch.randn(3, 6, math.prod(shape), dtype=torch.float64)  # (B, T, F)
    state = tok.fit_state(x)
    tokens = tok.encode(x, state)
    s = math.prod(n // 4 for n in shape[:-1])
    assert tok.space_tokens == s
    assert tokens.shape == (3, 3 * s, 2 * 4 ** (len(shape) - 1) * shape[-1])
    assert torch.equal(tok.decode(tokens, state), x) or \
        (tok.decode(tokens, state) - x).abs().max() < 1e-12
    again = tokenizer_from_config(json.loads(json.dumps(tok.to_config())))
    assert isinstance(again, FieldPatchTokenizer)
    assert torch.equal(again.encode(x, state), tokens)


def test_field_token_layout() -> None:
    """Token i*S + s holds spatial patch s (row-major) of time patch i, time outermost inside,
    each field scaled by its own mean and std."""
    tok = field_tok((8, 12, 2), p=4, pt=2)
    x = torch.randn(1, 4, 8 * 12 * 2, dtype=torch.float64)
    tokens = tok.encode(x, tok.fit_state(x))
    grid = x.view(1, 4, 8, 12, 2)
    z = (grid - torch.tensor([0.0, 0.5], dtype=torch.float64)) / torch.tensor([1.0, 2.0],
                                                                              dtype=torch.float64)
    i, gx, gy = 1, 1, 2  # time patch 1, patch row 1, column 2 (of a 2 x 3 grid)
    want = z[0, 2 * i:2 * i + 2, 4 * gx:4 * gx + 4, 4 * gy:4 * gy + 4, :].reshape(-1)
    assert torch.equal(tokens[0, i * 6 + gx * 3 + gy], want)


def test_space_patch_must_divide_the_grid() -> None:
    with pytest.raises(ValueError, match="space_patch=5 does not divide"):
        FieldPatchTokenizer(1, (8, 8, 1), 5, loc=[0.0], scale=[1.0])


# ---- block-causal decoder ------------------------------------------------------------------
def test_block_causal_mask_matrix() -> None:
    allowed = AttnMask(causal=True, block=2).dense(5, 5, torch.device("cpu"))[0, 0]
    want = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0],
                         [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(allowed, want)
    # with a cache: queries 2..3 (the second block) see keys 0..3, none later
    late = AttnMask(causal=True, block=2, q_offset=2).dense(2, 6, torch.device("cpu"))[0, 0]
    assert torch.equal(late, torch.tensor([[1, 1, 1, 1, 0, 0]] * 2, dtype=torch.bool))


def field_model(kind: str, space_tokens: int = 4) -> SciFormer:
    cfg = ModelConfig(d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=2, d_ff=32,
                      dropout=0.0, attention=kind, window=3, vocab_size=0, input_dim=5,
                      output_dim=3, space_tokens=space_tokens)
    return SciFormer(cfg).double().eval()


@pytest.mark.parametrize("kind", sorted(KERNELS))
def test_no_token_sees_a_later_time_patch(kind: str, monkeypatch) -> None:
    monkeypatch.setattr(LinearKernel, "chunk", 4)  # chunks cross block borders
    model = field_model(kind)
    src, tgt = torch.randn(2, 8, 5, dtype=torch.float64), torch.randn(2, 12, 5,
                                                                      dtype=torch.float64)
    with torch.no_grad():
        base = model(src, tgt)
        later = tgt.clone()
        later[:, 8:] += 1.0  # the third time patch (tokens 8..11)
        moved = model(src, later)
        same_block = tgt.clone()
        same_block[:, 7] += 1.0  # last token of the second time patch
        inside = model(src, same_block)
    assert (moved[:, :8] - base[:, :8]).abs().max() < 1e-12  # earlier patches unchanged
    assert (moved[:, 8:] - base[:, 8:]).abs().max() > 1e-3
    assert (inside[:, 4] - base[:, 4]).abs().max() > 1e-6  # a token sees its own block


@pytest.mark.parametrize("kind", sorted(KERNELS))
def test_cached_block_decoding_equals_teacher_forcing(kind: str, monkeypatch) -> None:
    monkeypatch.setattr(LinearKernel, "chunk", 4)
    model = field_model(kind)
    src, tgt = torch.randn(2, 8, 5, dtype=torch.float64), torch.randn(2, 16, 5,
                                                                      dtype=torch.float64)
    with torch.no_grad():
        full = model(src, tgt)
        memory, cache = model.encode(src), model.new_cache()
        blocks = [model.decode(tgt[:, i:i + 4], memory, cache=cache) for i in range(0, 16, 4)]
    assert (torch.cat(blocks, dim=1) - full).abs().max() < 1e-12


# ---- FNO baseline ----------------------------------------------------------------------------
def test_fno_learns_a_shift() -> None:
    """x_{t+1} = x_t shifted by one cell along x: a linear map the Fourier layers represent
    exactly; after a short fit a 3-step rollout is far better than persistence."""
    rng = np.random.default_rng(0)
    kx = np.fft.fftfreq(16)[:, None] ** 2 + np.fft.fftfreq(16)[None, :] ** 2
    trajs = []
    for _ in range(4):
        spec = (rng.normal(size=(16, 16)) + 1j * rng.normal(size=(16, 16))) * np.exp(-40 * kx)
        f0 = np.fft.ifft2(spec).real
        trajs.append(np.stack([np.roll(f0, t, axis=0) for t in range(12)]).reshape(12, -1))
    fno = FNOBaseline((16, 16, 1), n_in=1, width=8, modes=8, layers=1, steps=120, lr=2e-2,
                      batch_size=8).fit(trajs)
    pred = fno.predict(trajs[0][None, :1], 3)[0]
    err = np.abs(pred - trajs[0][1:4]).mean()
    persist = np.abs(trajs[0][:1] - trajs[0][1:4]).mean()
    assert err < 0.1 * persist
    assert fno.describe()["steps"] == 120


def test_fno_stops_at_its_cpu_budget_annealed() -> None:
    """The budget is CPU seconds of this process, and the cosine schedule follows it when it
    runs out before the steps: the last step's learning rate is near zero."""
    rng = np.random.default_rng(1)
    trajs = [rng.normal(size=(10, 64)) for _ in range(2)]
    fno = FNOBaseline((8, 8, 1), n_in=1, width=4, modes=2, layers=1, steps=10**6, lr=1e-2,
                      time_budget=0.3, batch_size=2).fit(trajs)
    info = fno.describe()
    assert 1 < info["steps"] < 10**6
    assert 0.3 <= info["cpu_seconds"] < 3.0 and info["cpu_budget"] == 0.3
    assert info["final_lr"] < 0.01 * 1e-2  # annealed: under 1% of the peak


# ---- VRMSE by lead bin ---------------------------------------------------------------------
def test_lead_bins_of_a_known_curve() -> None:
    curve = np.arange(1, 31, dtype=float)  # step k scores k
    assert lead_bin_means(curve) == {"1": 1.0, "2-6": 4.0, "7-12": 9.5, "13-30": 21.5}
    assert lead_bin_means(curve[:10]) == {"1": 1.0, "2-6": 4.0}  # 7-12 does not fit in 10
    two = lead_bin_means(np.stack([curve, 2 * curve], axis=1)[:6])
    assert two == {"1": [1.0, 2.0], "2-6": [4.0, 8.0]}


def test_vrmse_lead_bins_of_the_spatial_mean() -> None:
    """Forecasting each frame's spatial mean scores sqrt((X - 1) / X) at every lead."""
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(3, 12, 4 * 4 * 1))
    pred = np.repeat(truth.mean(axis=2, keepdims=True), 16, axis=2)
    score = ForecastScore(1.0, state_shape=(4, 4, 1))
    score.add(pred, truth)
    bins = score.result()["vrmse_lead_bins"]
    want = math.sqrt(15 / 16)
    assert set(bins) == {"1", "2-6", "7-12"}
    assert all(abs(v - want) < 1e-6 for v in bins.values())


# ---- training on the model's own rollouts -----------------------------------------------------
def field_task(tmp_path: Path, *extra: str):
    """A forecasting task on 16 x 16 fields (4 tokens per frame) with context 2, horizon 1."""
    from sciformer.config import load_config
    from sciformer.io.trajectory_writer import write_trajectories
    from sciformer.tasks.forecast import ForecastTask

    rng = np.random.default_rng(0)
    states = rng.normal(size=(4, 12, 16, 16, 1)).astype(np.float32)
    write_trajectories(tmp_path / "f.h5", states, dt=0.1)
    sets = ["data.context=2", "data.horizon=1", "data.patch_len=1", "data.space_patch=8",
            "model.d_model=16", "model.n_heads=2", "model.n_encoder_layers=1",
            "model.n_decoder_layers=1", "model.d_ff=32", "model.dropout=0.0", "train.batch_size=3",
            "data.val_fraction=0.25", "data.quantiles=[0.1,0.5,0.9]", *extra]
    return ForecastTask(load_config(None, sets), [tmp_path / "f.h5"])


def test_field_pushforward_scores_the_truth_after_the_models_own_frame(tmp_path: Path,
                                                                       monkeypatch) -> None:
    """data.pushforward works for field tokens: with one chunk pushed, the scored context ends
    with the model's own sampled frame (all S tokens of it, drawn without gradient) and the
    target is the true frame after it."""
    from sciformer.pipelines.forecast import sample_patch_tokens
    from sciformer.tasks import forecast as task_mod

    task = field_task(tmp_path, "data.pushforward=1", "data.sampled_inputs=0.5")
    assert task.pushforward == 1 and task.window_len == 2 + 2 * 1
    rng = np.random.default_rng(0)
    plans = {task_mod.rollout_plan(task.cfg, 5, rng)[:2] for _ in range(200)}
    assert plans == {(0, 0), (0, 1), (1, 0), (1, 1)}  # both kinds of own inputs are used
    model, tok, d = SciFormer(task.cfg.model), task.tokenizer, task.cfg.data
    x = task.batch(0)["window"]  # (3, 2 + 2, 256)
    seen: dict = {}
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda src, dec_in, **kw: (
        seen.__setitem__("src", src.detach().clone()) or forward(src, dec_in, **kw)))
    pinball = task_mod.pinball_loss
    monkeypatch.setattr(task_mod, "pinball_loss", lambda q, tgt, lv: (
        seen.__setitem__("target", tgt.clone()) or pinball(q, tgt, lv)))
    task_mod.rollout_loss(model, tok, d, x, pushed=1, sampled=False, seed=7).backward()
    with torch.no_grad():
        src0, state = tok.encode_context(x[:, :2])
        own = tok.decode(sample_patch_tokens(model, tok, src0, 1, d.quantiles,
                                             torch.Generator().manual_seed(7), d.draws), state)
    ctx = torch.cat([x[:, 1:2], own], dim=1)  # the last true frame, then the model's own
    torch.testing.assert_close(seen["src"], tok.encode(ctx, state))
    torch.testing.assert_close(seen["target"], tok.encode(x[:, 3:4], state))
    assert not torch.allclose(own, x[:, 2:3])


# ---- end to end ------------------------------------------------------------------------------
def test_tiny_2d_pretrain_and_evaluate_through_the_cli(tmp_path: Path, monkeypatch) -> None:
    from sciformer.cli import main
    from sciformer.io.trajectory_writer import write_trajectories

    monkeypatch.setattr(fe, "FNO_STEPS", 3)
    monkeypatch.setattr(fe, "MAX_DENSE_FEATURES", 64)  # 16 x 16: as a large field would
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 1, 16, 16, 1))
    states = np.concatenate([np.roll(base, t, axis=2) for t in range(24)], axis=1)
    data = tmp_path / "f.h5"
    write_trajectories(data, states.astype(np.float32), dt=0.1)
    run, out = tmp_path / "run", tmp_path / "eval"
    sets = ["data.context=2", "data.horizon=2", "data.patch_len=1", "data.space_patch=8",
            "model.d_model=16", "model.n_heads=2", "model.n_encoder_layers=1",
            "model.n_decoder_layers=1", "model.d_ff=32", "train.batch_size=4",
            "train.max_steps=3", "train.eval_every=3", "train.checkpoint_every=3",
            "data.val_fraction=0.25", "data.samples=2"]
    args = ["pretrain", str(data), "--out-dir", str(run)]
    res = CliRunner().invoke(main, args + [a for s in sets for a in ("--set", s)])
    assert res.exit_code == 0, res.output
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["tokenizer"] == "field_patch" and cfg["model"]["space_tokens"] == 4
    res = CliRunner().invoke(main, ["evaluate", str(run), str(data), "--out-dir", str(out),
                                    "--horizon", "7"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["model"]["vrmse_lead_bins"]) == {"1", "2-6"}  # 7-12 is past the horizon
    assert set(m["baselines"]) == {"persistence", "mean", "fno"}
    assert set(m["baselines_skipped"]) == {"ridge_ar", "nvar", "parroting"}
    assert (out / "field_frames.png").exists() and (out / "vrmse_vs_lead.png").exists()
    assert "VRMSE by lead" in (out / "summary.md").read_text()

"""Tests for sciformer.tokenizers.timeseries: exact inverses, context-only state, channel
independence, bin error bounds, degenerate series, trimming, pinball loss and the registry."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sciformer.errors import ConfigError
from sciformer.tokenizers.timeseries import (
    TOKENIZERS,
    BinTokenizer,
    PatchTokenizer,
    ScaleState,
    build_tokenizer,
    pinball_loss,
)

CHANNELS = ["joint", "independent"]


def _windows(seed: int, b: int, t: int, f: int, offset: float, scale: float) -> torch.Tensor:
    """Random walks of shape (B, T, F) around `offset` with spread `scale`, float32."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, f, generator=g, dtype=torch.float64).cumsum(dim=1)
    return (offset + scale * x).float()


def _assert_relative(decoded: torch.Tensor, x: torch.Tensor, rtol: float = 1e-5) -> None:
    """|decoded - x| <= rtol * max|x| of the same window and feature (plus float tiny)."""
    ref = x.abs().amax(dim=1, keepdim=True)
    assert (decoded - x).abs().le(rtol * ref + 1e-30).all()


# ---------------------------------------------------------------- patch tokenizer


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 3), n=st.integers(1, 4), p=st.integers(1, 5), f=st.integers(1, 4),
    offset=st.sampled_from([0.0, 1.0, -3.5, 1e4, -1e4]),
    log_scale=st.floats(-6, 3),
    channels=st.sampled_from(CHANNELS),
)
def test_patch_round_trip_is_identity(seed, b, n, p, f, offset, log_scale, channels):
    x = _windows(seed, b, n * p, f, offset, 10.0**log_scale)
    tok = PatchTokenizer(patch_len=p, n_features=f, channels=channels)
    state = tok.fit_state(x[:, : max(1, (n * p) // 2)])
    tokens = tok.encode(x, state)
    rows = b if channels == "joint" else b * f
    assert tokens.shape == (rows, n, tok.token_dim)
    assert torch.isfinite(tokens).all()
    decoded = tok.decode(tokens, state)
    assert decoded.shape == x.shape and decoded.dtype == x.dtype
    _assert_relative(decoded, x)


def test_patch_state_known_answer_uses_context_only():
    tok = PatchTokenizer(patch_len=1, n_features=1)
    x = torch.tensor([1.0, 2.0, 3.0, 100.0]).reshape(1, 4, 1)
    state = tok.fit_state(x[:, :3])
    assert state.loc.shape == (1, 1, 1) and state.scale.shape == (1, 1, 1)
    assert state.loc.item() == pytest.approx(2.0)
    assert state.scale.item() == pytest.approx(math.sqrt(2.0 / 3.0), rel=1e-6)  # population std
    assert tok.encode(x, state)[0, :, 0].tolist() == pytest.approx(
        [(v - 2.0) / math.sqrt(2.0 / 3.0) for v in (1.0, 2.0, 3.0, 100.0)], rel=1e-5
    )


@pytest.mark.parametrize("channels", CHANNELS)
@pytest.mark.parametrize("kind", ["patch", "bins"])
def test_future_does_not_change_state_or_context_tokens(kind, channels):
    x = _windows(1, 2, 12, 3, 5.0, 2.0)
    tok = PatchTokenizer(4, 3, channels) if kind == "patch" else BinTokenizer(64, 10.0, 3, channels)
    context_len = 8
    state = tok.fit_state(x[:, :context_len])
    x2 = x.clone()
    x2[:, context_len:] = x2[:, context_len:] * 50 + 1000  # a wildly different future
    state2 = tok.fit_state(x2[:, :context_len])
    assert torch.equal(state.loc, state2.loc) and torch.equal(state.scale, state2.scale)
    full_state = tok.fit_state(x2)
    assert not torch.equal(state.scale, full_state.scale)  # the future would have mattered
    t1, t2 = tok.encode(x, state), tok.encode(x2, state2)
    if kind == "patch":
        n_ctx = context_len // 4
        assert torch.equal(t1[:, :n_ctx], t2[:, :n_ctx]) and not torch.equal(t1, t2)
    else:
        n_ctx = context_len * (3 if channels == "joint" else 1)
        assert torch.equal(t1[:, :n_ctx], t2[:, :n_ctx]) and not torch.equal(t1, t2)


@pytest.mark.parametrize("kind", ["patch", "bins"])
def test_independent_channels_never_mix(kind):
    b, t, f = 2, 8, 4
    x = _windows(2, b, t, f, 0.5, 1.0)
    if kind == "patch":
        tok = PatchTokenizer(4, f, "independent")
    else:
        tok = BinTokenizer(256, 8.0, f, "independent")
    state = tok.fit_state(x)
    base = tok.encode(x, state)
    for j in range(f):
        x2 = x.clone()
        x2[1, :, j] += 3.0 * x2[1, :, j].abs().max() + 1.0
        changed = (tok.encode(x2, tok.fit_state(x2)) != base).flatten(1).any(dim=1)
        expected = torch.zeros(b * f, dtype=torch.bool)
        expected[1 * f + j] = True
        assert torch.equal(changed, expected), (j, changed)


def test_patch_joint_layout_is_time_major_within_a_patch():
    tok = PatchTokenizer(patch_len=2, n_features=3)
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    state = ScaleState(torch.zeros(2, 1, 3), torch.ones(2, 1, 3), 3, "joint")
    tokens = tok.encode(x, state)
    assert tokens.shape == (2, 2, 6)
    assert tokens[0, 1].tolist() == [6, 7, 8, 9, 10, 11]  # steps 2,3 x features 0,1,2
    indep = PatchTokenizer(2, 3, "independent")
    t_ind = indep.encode(x, ScaleState(state.loc, state.scale, 3, "independent"))
    assert t_ind.shape == (6, 2, 2) and t_ind[1 * 3 + 2, 1].tolist() == [20.0, 23.0]


@pytest.mark.parametrize("channels", CHANNELS)
def test_constant_series_gives_finite_tokens(channels):
    x = torch.zeros(2, 8, 2)
    x[1] = 1e4  # constant non-zero level
    patch = PatchTokenizer(4, 2, channels)
    tokens, state = patch.encode_context(x)
    assert torch.isfinite(tokens).all() and (state.scale > 0).all()
    # std 0 is floored relative to the level: eps * (1 + |loc|)
    assert state.scale[0, 0].tolist() == pytest.approx([1e-5, 1e-5], rel=1e-6)
    assert state.scale[1, 0].tolist() == pytest.approx([1e-5 * (1 + 1e4)] * 2, rel=1e-6)
    assert torch.equal(patch.decode(tokens, state), x)
    bins = BinTokenizer(100, 10.0, 2, channels)
    ids, bstate = bins.encode_context(x)
    assert (bstate.scale > 0).all() and bstate.scale[0].eq(1.0).all()  # zero mean-|x| -> 1
    decoded = bins.decode(ids, bstate)
    assert torch.isfinite(decoded).all()
    assert (decoded - x).abs().le(0.5 * bins.bin_width * bstate.scale * (1 + 1e-6)).all()


def test_encode_context_trims_oldest_steps():
    tok = PatchTokenizer(patch_len=4, n_features=1)
    context = torch.arange(10, dtype=torch.float32).reshape(1, 10, 1)
    tokens, state = tok.encode_context(context)
    assert tokens.shape == (1, 2, 4)
    assert state.loc.item() == pytest.approx(5.5)  # mean of the kept steps 2..9
    decoded = tok.decode(tokens, state)[0, :, 0].tolist()
    assert decoded == pytest.approx(list(range(2, 10)), abs=1e-5)
    with pytest.raises(ValueError, match="context length 3.*patch_len 4"):
        tok.encode_context(context[:, :3])


def test_patch_length_mismatch_names_lengths():
    tok = PatchTokenizer(patch_len=4, n_features=2)
    x = torch.randn(1, 10, 2)
    with pytest.raises(ConfigError, match="length 10 .*patch_len 4"):
        tok.encode(x, tok.fit_state(x))
    with pytest.raises(ValueError, match="3 features, tokenizer expects 2"):
        tok.fit_state(torch.randn(1, 8, 3))
    with pytest.raises(ValueError, match="NaN or Inf"):
        tok.fit_state(torch.tensor([[[1.0, float("nan")]]]))


# ---------------------------------------------------------------- bin tokenizer


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 3), t=st.integers(1, 12), f=st.integers(1, 4),
    n_bins=st.integers(1, 600), limit=st.floats(0.5, 20.0),
    offset=st.sampled_from([0.0, 2.0, -1e3]), log_scale=st.floats(-4, 4),
    channels=st.sampled_from(CHANNELS),
)
def test_bins_round_trip_error_is_bounded(
    seed, b, t, f, n_bins, limit, offset, log_scale, channels
):
    x = _windows(seed, b, t, f, offset, 10.0**log_scale)
    tok = BinTokenizer(n_bins, limit, f, channels)
    ids, state = tok.encode_context(x)
    assert ids.dtype == torch.int64
    assert ids.shape == ((b, t * f) if channels == "joint" else (b * f, t))
    assert ids.min() >= 2 and ids.max() < tok.vocab_size == n_bins + 2
    decoded = tok.decode(ids, state)
    assert decoded.shape == x.shape and torch.isfinite(decoded).all()
    s = state.scale.double()
    inside = x.double().abs() <= limit * s
    err = (decoded.double() - x.double()).abs()
    bound = 0.5 * tok.bin_width * s * (1 + 1e-5) + 1e-6 * x.double().abs()
    assert err.le(bound).logical_or(~inside).all()
    # beyond +-limit values are clipped to the end bins
    top = (limit - 0.5 * tok.bin_width) * s
    clipped = (x.double() / s).abs() > limit
    assert torch.allclose(decoded.double().abs()[clipped], top.expand_as(x)[clipped], rtol=1e-5)


def test_bins_known_answer_and_clipping():
    tok = BinTokenizer(n_bins=4, limit=2.0, n_features=1)  # edges -2,-1,0,1,2; centres +-0.5,+-1.5
    assert (tok.vocab_size, tok.pad_id, tok.bos_id) == (6, 0, 1)
    context = torch.tensor([1.0, -1.0, 1.0, -1.0]).reshape(1, 4, 1)  # mean |x| = 1
    state = tok.fit_state(context)
    assert state.scale.item() == 1.0 and state.loc.item() == 0.0
    x = torch.tensor([-5.0, -1.5, -0.2, 0.0, 0.7, 1.99, 9.0]).reshape(1, 7, 1)
    ids = tok.encode(x, state)
    assert ids.tolist() == [[2, 2, 3, 4, 4, 5, 5]]
    assert tok.decode(ids, state)[0, :, 0].tolist() == [-1.5, -1.5, -0.5, 0.5, 0.5, 1.5, 1.5]


def test_bins_joint_layout_is_time_major():
    tok = BinTokenizer(n_bins=10, limit=5.0, n_features=2)  # centres -4.5, ..., 4.5
    x = torch.tensor([[[-4.5, 4.5], [0.5, -0.5]]])  # (1, T=2, F=2)
    state = ScaleState(torch.zeros(1, 1, 2), torch.ones(1, 1, 2), 2, "joint")
    assert tok.encode(x, state).tolist() == [[2, 11, 7, 6]]  # position t*F + f


def test_bins_decode_rejects_special_ids():
    tok = BinTokenizer(8, 4.0, 1)
    state = tok.fit_state(torch.ones(1, 3, 1))
    with pytest.raises(ValueError, match="special or outside"):
        tok.decode(torch.tensor([[tok.bos_id, 3, 4]]), state)
    with pytest.raises(ValueError, match="rows"):
        tok.decode(torch.tensor([[3, 4], [3, 4]]), state)


# ---------------------------------------------------------------- loss and registry


def test_pinball_is_half_absolute_error_at_median():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 5, 1, generator=g), torch.randn(3, 5, generator=g)
    loss = pinball_loss(pred, target, torch.tensor([0.5]))
    assert loss.item() == pytest.approx(((target - pred[..., 0]).abs() / 2).mean().item(), rel=1e-6)


def test_pinball_hand_computation():
    pred = torch.tensor([[1.0, 2.0], [0.0, 4.0]])  # two targets, levels 0.1 and 0.9
    target = torch.tensor([3.0, 1.0])
    # row 0, y=3: q=0.1 p=1 -> 0.1*2 = 0.2 ; q=0.9 p=2 -> 0.9*1 = 0.9
    # row 1, y=1: q=0.1 p=0 -> 0.1*1 = 0.1 ; q=0.9 p=4 -> (0.9-1)*(-3) = 0.3
    loss = pinball_loss(pred, target, torch.tensor([0.1, 0.9]))
    assert loss.item() == pytest.approx((0.2 + 0.9 + 0.1 + 0.3) / 4)
    with pytest.raises(ValueError, match="levels"):
        pinball_loss(pred, target, torch.tensor([0.5]))


def test_registry_and_unknown_name():
    assert set(TOKENIZERS) == {"patch", "bins"}
    tok = build_tokenizer("patch", patch_len=2, n_features=3, channels="independent")
    assert isinstance(tok, PatchTokenizer) and tok.token_dim == 2
    again = build_tokenizer(**tok.to_config())
    assert again.to_config() == tok.to_config()
    bins = build_tokenizer("bins", n_bins=16, limit=3.0, n_features=2)
    assert isinstance(bins, BinTokenizer) and bins.vocab_size == 18
    assert build_tokenizer(**bins.to_config()).to_config() == bins.to_config()
    with pytest.raises(ConfigError, match="unknown name 'wavelet'; valid: bins, patch"):
        build_tokenizer("wavelet", n_features=1)
    with pytest.raises(ConfigError, match="tokenizer 'bins'"):
        build_tokenizer("bins", n_bins=16, n_features=2)  # limit missing
    msg = "channels: unknown mode 'mixed'; valid: joint, independent"
    with pytest.raises(ConfigError, match=msg):
        PatchTokenizer(2, 2, channels="mixed")

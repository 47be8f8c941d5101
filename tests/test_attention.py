"""Attention kernels and multi-head attention against references computed another way.

- `MultiHeadAttention(cfg, "scaled_dot")` against `torch.nn.MultiheadAttention` with shared weights.
- Each kernel against a by-hand dense formula: the blocked `local` path against the dense band
  mask, the chunked causal `linear` path against the dense causal form, `additive` against
  w^T tanh(q + k) written as loops (Bahdanau et al. 2015).
- Rotary positions: scores depend only on the offset i - j (Su et al. 2021).
- Unknown kernel / position names and a bad head count are one-line ConfigErrors.
All numerics are float64 on CPU at tiny sizes.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciformer.config import ModelConfig
from sciformer.errors import ConfigError
from sciformer.model import SciFormer
from sciformer.model.attention import (
    KERNELS,
    AttnMask,
    LinearKernel,
    LocalKernel,
    MultiHeadAttention,
    build_kernel,
)
from sciformer.model.positions import POSITIONS, Rotary, build_positions

D, H = 16, 4
DH = D // H
TOL = 1e-10


def kcfg(**kw) -> ModelConfig:
    """A ModelConfig for building kernels: d_model D, H heads (Dh = 4) unless given."""
    return ModelConfig(**{"d_model": D, "n_heads": H, **kw})


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def qkv(b: int, h: int, tq: int, tk: int, d: int) -> tuple[Tensor, Tensor, Tensor]:
    """Random float64 queries, keys and values (B, H, T, Dh)."""
    g = torch.Generator().manual_seed(1)
    shape_q, shape_k = (b, h, tq, d), (b, h, tk, d)
    return (torch.randn(shape_q, generator=g, dtype=torch.float64),
            torch.randn(shape_k, generator=g, dtype=torch.float64),
            torch.randn(shape_k, generator=g, dtype=torch.float64))


def right_pad(lengths: list[int], t: int) -> Tensor:
    """Key padding mask (B, T), True beyond each row's length."""
    return torch.arange(t)[None, :] >= torch.tensor(lengths)[:, None]


def dense_softmax(scores: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """Reference softmax attention: disallowed scores removed before normalising."""
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def allowed_mask(tq: int, tk: int, key_pad: Tensor | None, causal: bool = False,
                 window: int | None = None, q_offset: int = 0) -> Tensor:
    """Reference (B|1, 1, Tq, Tk) visibility built independently of AttnMask."""
    i = torch.arange(tq)[:, None] + q_offset
    j = torch.arange(tk)[None, :]
    ok = torch.ones(tq, tk, dtype=torch.bool)
    if causal:
        ok = ok & (j <= i)
    if window is not None:
        ok = ok & ((i - j).abs() <= window)
    ok = ok[None, None]
    if key_pad is not None:
        ok = ok & ~key_pad[:, None, None, :]
    return ok


# ---- 1. scaled dot-product MHA == torch.nn.MultiheadAttention ------------------------------
def shared_mha() -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    """Ours and torch's multi-head attention holding the same float64 weights."""
    ref = nn.MultiheadAttention(D, H, batch_first=True, dtype=torch.float64)
    nn.init.normal_(ref.in_proj_bias)
    nn.init.normal_(ref.out_proj.bias)
    ours = MultiHeadAttention(kcfg(), "scaled_dot").double()
    wq, wk, wv = ref.in_proj_weight.detach().chunk(3)
    bq, bk, bv = ref.in_proj_bias.detach().chunk(3)
    with torch.no_grad():
        for proj, w, b in ((ours.q_proj, wq, bq), (ours.k_proj, wk, bk), (ours.v_proj, wv, bv)):
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        ours.out_proj.weight.copy_(ref.out_proj.weight)
        ours.out_proj.bias.copy_(ref.out_proj.bias)
    return ours, ref


def test_mha_matches_torch_with_key_padding() -> None:
    ours, ref = shared_mha()
    x = torch.randn(3, 7, D, dtype=torch.float64)
    mem = torch.randn(3, 9, D, dtype=torch.float64)
    pad = right_pad([9, 5, 2], 9)
    got = ours(x, kv=mem, mask=AttnMask(key_pad=pad))
    want, _ = ref(x, mem, mem, key_padding_mask=pad, need_weights=False)
    assert (got - want).abs().max().item() < TOL


@pytest.mark.parametrize("with_pad", [False, True])
def test_mha_matches_torch_causal(with_pad: bool) -> None:
    ours, ref = shared_mha()
    x = torch.randn(2, 8, D, dtype=torch.float64)
    pad = right_pad([8, 5], 8) if with_pad else None
    got = ours(x, mask=AttnMask(key_pad=pad, causal=True))
    future = torch.triu(torch.ones(8, 8, dtype=torch.bool), diagonal=1)  # True = blocked
    want, _ = ref(x, x, x, key_padding_mask=pad, attn_mask=future, need_weights=False)
    assert (got - want).abs().max().item() < TOL


# ---- 3. each kernel against its dense definition -------------------------------------------
def test_scaled_dot_kernel_by_hand() -> None:
    q, k, v = qkv(2, H, 6, 9, DH)
    pad = right_pad([9, 4], 9)
    got = build_kernel("scaled_dot", kcfg(window=4))(q, k, v, AttnMask(key_pad=pad))
    want = dense_softmax(q @ k.transpose(-2, -1) / math.sqrt(DH), v, allowed_mask(6, 9, pad))
    assert (got - want).abs().max().item() < TOL


def test_dot_kernel_is_unscaled_softmax() -> None:
    q, k, v = qkv(2, H, 6, 9, DH)
    pad = right_pad([9, 4], 9)
    got = build_kernel("dot", kcfg(window=4))(q, k, v, AttnMask(key_pad=pad))
    want = dense_softmax(q @ k.transpose(-2, -1), v, allowed_mask(6, 9, pad))
    assert (got - want).abs().max().item() < TOL


def test_additive_kernel_by_hand() -> None:
    """e_ij = sum_d w_hd tanh(q_id + k_jd), written as explicit loops over i, j."""
    b, tq, tk = 2, 3, 5
    q, k, v = qkv(b, H, tq, tk, DH)
    kernel = build_kernel("additive", kcfg(window=4)).double()
    w = kernel.score.detach()  # (H, Dh)
    scores = torch.empty(b, H, tq, tk, dtype=torch.float64)
    for i in range(tq):
        for j in range(tk):
            scores[:, :, i, j] = (torch.tanh(q[:, :, i] + k[:, :, j]) * w).sum(-1)
    pad = right_pad([5, 3], tk)
    got = kernel(q, k, v, AttnMask(key_pad=pad))
    assert (got - dense_softmax(scores, v, allowed_mask(tq, tk, pad))).abs().max().item() < TOL


def phi(x: Tensor) -> Tensor:
    """Katharopoulos et al. 2020 feature map elu(x) + 1."""
    return F.elu(x) + 1


def linear_reference(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """Dense linear attention: A_ij = phi(q_i).phi(k_j) on visible pairs, rows normalised."""
    a = (phi(q) @ phi(k).transpose(-2, -1)) * allowed
    return (a @ v) / a.sum(-1, keepdim=True)


def test_linear_noncausal_matches_dense() -> None:
    q, k, v = qkv(2, H, 10, 10, DH)
    pad = right_pad([10, 6], 10)
    got = build_kernel("linear", kcfg(window=4))(q, k, v, AttnMask(key_pad=pad))
    assert (got - linear_reference(q, k, v, allowed_mask(10, 10, pad))).abs().max().item() < TOL


@pytest.mark.parametrize("with_pad", [False, True])
def test_linear_causal_chunked_matches_dense(with_pad: bool) -> None:
    t = 2 * LinearKernel.chunk + 23  # three chunks, the last one partial
    q, k, v = qkv(2, 2, t, t, DH)
    pad = right_pad([t, t - 40], t) if with_pad else None
    got = LinearKernel(kcfg(n_heads=2, d_model=2 * DH))(q, k, v, AttnMask(key_pad=pad, causal=True))
    want = linear_reference(q, k, v, allowed_mask(t, t, pad, causal=True))
    assert (got - want).abs().max().item() < TOL


def test_linear_cached_queries_match_dense() -> None:
    """The decoding form (few new queries at an offset) against the dense causal form."""
    q, k, v = qkv(2, 2, 3, 11, DH)
    got = LinearKernel(kcfg(n_heads=2, d_model=2 * DH))(q, k, v, AttnMask(causal=True, q_offset=8))
    want = linear_reference(q, k, v, allowed_mask(3, 11, None, causal=True, q_offset=8))
    assert (got - want).abs().max().item() < TOL


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("t", [23, 24])  # partial last block and an exact multiple of the window
def test_local_blocked_matches_dense_band(causal: bool, t: int,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    w = 4
    kernel = LocalKernel(kcfg(n_heads=2, d_model=2 * DH, window=w))
    calls = []
    blocked = LocalKernel._blocked
    monkeypatch.setattr(LocalKernel, "_blocked",
                        lambda self, *a: calls.append(1) or blocked(self, *a))
    q, k, v = qkv(3, 2, t, t, DH)
    pad = right_pad([t, t - 7, t - 15], t)  # the last row has more padding than the window
    got = kernel(q, k, v, AttnMask(key_pad=pad, causal=causal))
    assert calls, "the blocked path was not taken"
    allowed = allowed_mask(t, t, pad, causal=causal, window=w)
    want = dense_softmax(q @ k.transpose(-2, -1) / math.sqrt(DH), v, allowed)
    visible = allowed.any(-1)[..., None].expand_as(want)  # rows that see at least one key
    assert (got - want)[visible].abs().max().item() < TOL
    assert torch.all(got[~visible] == 0), "a query with no visible key must give zeros"


def test_local_short_sequence_dense_path_matches_band() -> None:
    w, t = 4, 7  # t <= 2w: the dense path
    q, k, v = qkv(2, 2, t, t, DH)
    got = LocalKernel(kcfg(n_heads=2, d_model=2 * DH, window=w))(q, k, v, AttnMask(causal=True))
    allowed = allowed_mask(t, t, None, causal=True, window=w)
    want = dense_softmax(q @ k.transpose(-2, -1) / math.sqrt(DH), v, allowed)
    assert (got - want).abs().max().item() < TOL


@pytest.mark.parametrize("kind", sorted(KERNELS))
def test_kernels_keep_float64(kind: str) -> None:
    """float64 in, float64 out, and the mixing is not done at a lower precision."""
    q, k, v = qkv(1, 2, 5, 5, DH)
    kernel = build_kernel(kind, kcfg(n_heads=2, d_model=2 * DH, window=2)).double()
    out = kernel(q, k, v, AttnMask(causal=True))
    assert out.dtype == torch.float64
    # each output row is a convex combination of value rows: sum of weights is exactly 1
    ones = kernel(q, k, torch.ones_like(v), AttnMask(causal=True))
    assert (ones - 1).abs().max().item() < 1e-12


# ---- rotary -------------------------------------------------------------------------------
def test_rotary_scores_depend_only_on_offset() -> None:
    rot = Rotary(8).double()
    qv, kv_ = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    t = 12
    q = rot(qv.expand(1, 1, t, 8))
    k = rot(kv_.expand(1, 1, t, 8))
    scores = (q @ k.transpose(-2, -1))[0, 0]  # (T, T)
    for delta in (-3, 0, 5):
        diag = torch.diagonal(scores, offset=-delta)
        assert (diag - diag[0]).abs().max().item() < 1e-5
    assert rot(qv.expand(1, 1, 1, 8))[0, 0, 0].allclose(qv)  # position 0 is the identity


def test_rotary_offset_equals_slice_of_longer_sequence() -> None:
    rot = Rotary(8)
    x = torch.randn(2, 3, 10, 8)
    assert torch.allclose(rot(x)[:, :, 6:], rot(x[:, :, 6:], offset=6), atol=1e-6)


def test_rotary_rejects_odd_head_width() -> None:
    with pytest.raises(ConfigError, match="model.positions.*even.*got 3"):
        SciFormer(ModelConfig(d_model=6, n_heads=2, positions="rotary"))


# ---- 9. configuration errors --------------------------------------------------------------
def test_unknown_attention_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        build_kernel("flash9", kcfg(window=4))
    msg = str(err.value)
    assert "model.attention" in msg and "flash9" in msg
    assert all(name in msg for name in KERNELS)
    with pytest.raises(ConfigError, match="model.attention.*flash9"):
        SciFormer(ModelConfig(d_model=16, n_heads=2, attention="flash9"))


def test_unknown_positions_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        build_positions("alibi", D, 32)
    msg = str(err.value)
    assert "model.positions" in msg and "alibi" in msg
    assert all(name in msg for name in POSITIONS)
    with pytest.raises(ConfigError, match="model.positions.*alibi"):
        SciFormer(ModelConfig(d_model=16, n_heads=2, positions="alibi"))


def test_heads_must_divide_width() -> None:
    with pytest.raises(ConfigError, match=r"model.d_model.*30.*n_heads=4") as err:
        SciFormer(ModelConfig(d_model=30, n_heads=4))
    assert "\n" not in str(err.value)

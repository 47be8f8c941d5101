"""Multi-head attention with interchangeable kernels, chosen by name.

The projection work (Q, K, V, output) is the same for every kind; only the kernel that turns
(q, k, v) into mixed values differs. Kernels:

- ``scaled_dot``: softmax(QK^T / sqrt(d)) V (Vaswani et al. 2017), through
  ``F.scaled_dot_product_attention`` so fused/flash kernels are used where available.
- ``dot``: softmax(QK^T) V without the 1/sqrt(d) scale (Luong et al. 2015, "dot").
- ``additive``: e_ij = w^T tanh(q_i + k_j) per head (Bahdanau et al. 2015); O(T*S*d) memory.
- ``linear``: phi(Q)(phi(K)^T V) with phi = elu + 1 (Katharopoulos et al. 2020); memory
  linear in length, causal form by chunked prefix sums.
- ``local``: softmax attention restricted to |i - j| <= window (sliding window, Beltagy et al.
  2020 Longformer); computed block-wise so memory is O(T * window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciformer.errors import ConfigError

if TYPE_CHECKING:
    from sciformer.config import ModelConfig


@dataclass
class AttnMask:
    """What each query may see: padding of the keys, causality, and the query offset.

    ``q_offset`` is the absolute position of the first query; with a key/value cache the
    queries are the newest positions while keys start at position 0. ``block`` > 1 makes the
    causal mask block-causal: positions form consecutive groups of ``block`` (the spatial
    tokens of one time patch) and a query sees every key of its own and earlier groups, never
    one of a later group (``block`` = 1 is the ordinary causal mask).
    """

    key_pad: Tensor | None = None  # (B, Tk) True where the key is padding
    causal: bool = False
    q_offset: int = 0
    window: int | None = None  # local attention: keep |i - j| <= window
    block: int = 1  # causal masks: positions per group (block-causal when > 1)

    def sees_all(self, tk: int) -> bool:
        """Whether causality hides nothing: every key is in the first query's group or before."""
        return (tk - 1) // self.block <= self.q_offset // self.block

    def dense(self, tq: int, tk: int, device: torch.device) -> Tensor | None:
        """Boolean (B|1, 1, Tq, Tk) mask, True = attend; None when everything is visible."""
        allowed = None
        causal = self.causal and not self.sees_all(tk)
        if causal or self.window is not None:
            qi = torch.arange(tq, device=device)[:, None] + self.q_offset  # (Tq, 1)
            kj = torch.arange(tk, device=device)[None, :]  # (1, Tk)
            allowed = torch.ones(tq, tk, dtype=torch.bool, device=device)
            if causal:
                allowed &= kj // self.block <= qi // self.block
            if self.window is not None:
                allowed &= (qi - kj).abs() <= self.window
            allowed = allowed[None, None]  # (1, 1, Tq, Tk)
        if self.key_pad is not None:
            keep = ~self.key_pad[:, None, None, :]  # (B, 1, 1, Tk)
            allowed = keep if allowed is None else allowed & keep
        return allowed


def _masked_softmax_attention(scores: Tensor, v: Tensor, allowed: Tensor | None,
                              dropout: float, training: bool) -> Tensor:
    """softmax over keys of `scores` (B, H, Tq, Tk) with `allowed` applied, then times v."""
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    work = torch.promote_types(scores.dtype, torch.float32)  # upcast half, keep float64
    weights = torch.softmax(scores.to(work), dim=-1).to(v.dtype)
    if allowed is not None:  # a query that sees no key gets zeros (not NaN), as SDPA does
        weights = weights.masked_fill(~allowed, 0.0)
    weights = F.dropout(weights, p=dropout, training=training)
    return weights @ v  # (B, H, Tq, Dh)


class ScaledDotKernel(nn.Module):
    """softmax(QK^T/sqrt(d))V via PyTorch's fused SDPA."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dropout = cfg.attention_dropout

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: AttnMask) -> Tensor:
        p = self.dropout if self.training else 0.0
        plain_causal = (mask.causal and mask.key_pad is None and mask.q_offset == 0
                        and mask.block == 1)
        if plain_causal and q.shape[2] == k.shape[2]:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        allowed = mask.dense(q.shape[2], k.shape[2], q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)


class DotKernel(nn.Module):
    """softmax(QK^T)V: unscaled dot-product scores."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dropout = cfg.attention_dropout

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: AttnMask) -> Tensor:
        scores = q @ k.transpose(-2, -1)  # (B, H, Tq, Tk)
        allowed = mask.dense(q.shape[2], k.shape[2], q.device)
        return _masked_softmax_attention(scores, v, allowed, self.dropout, self.training)


class AdditiveKernel(nn.Module):
    """Bahdanau scores e_ij = w_h^T tanh(q_i + k_j); q, k are already projected per head."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dropout = cfg.attention_dropout
        d_head = cfg.d_model // cfg.n_heads
        self.score = nn.Parameter(torch.randn(cfg.n_heads, d_head) / math.sqrt(d_head))  # w/head

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: AttnMask) -> Tensor:
        hidden = torch.tanh(q[:, :, :, None, :] + k[:, :, None, :, :])  # (B, H, Tq, Tk, Dh)
        scores = torch.einsum("bhqkd,hd->bhqk", hidden, self.score)  # (B, H, Tq, Tk)
        allowed = mask.dense(q.shape[2], k.shape[2], q.device)
        return _masked_softmax_attention(scores, v, allowed, self.dropout, self.training)


class LinearKernel(nn.Module):
    """Kernelised attention phi(Q)(phi(K)^T V), phi = elu + 1; O(T * Dh^2) memory.

    There is no attention matrix to drop out of: `ModelConfig.validate` refuses
    `attention_dropout` > 0 with this kind."""

    chunk = 64  # causal prefix sums are carried between chunks of this many steps

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: AttnMask) -> Tensor:
        dtype = v.dtype
        work = torch.promote_types(dtype, torch.float32)  # upcast half, keep float64
        q, k, v = (F.elu(q.to(work)) + 1, F.elu(k.to(work)) + 1, v.to(work))
        if mask.key_pad is not None:
            k = k.masked_fill(mask.key_pad[:, None, :, None], 0.0)  # padded keys contribute 0
        if mask.causal and (mask.q_offset > 0 or q.shape[2] != k.shape[2]):
            scores = q @ k.transpose(-2, -1)  # cached decoding: few queries, dense form is exact
            allowed = mask.dense(q.shape[2], k.shape[2], q.device)
            if allowed is not None:
                scores = scores.masked_fill(~allowed, 0.0)
            out = (scores @ v) / scores.sum(-1, keepdim=True).clamp_min(1e-6)
        elif mask.causal:
            out = self._causal(q, k, v, mask.block)
        else:
            kv = k.transpose(-2, -1) @ v  # (B, H, Dh, Dh)
            z = k.sum(dim=2)  # (B, H, Dh)
            out = (q @ kv) / (q @ z[..., None]).clamp_min(1e-6)
        return out.to(dtype)

    def _causal(self, q: Tensor, k: Tensor, v: Tensor, block: int = 1) -> Tensor:
        """Causal (block-causal for `block` > 1) form: chunks of whole blocks, the prefix
        sums of earlier chunks carried, a dense (block-)triangular mask inside a chunk."""
        b, h, t, d = q.shape
        state = q.new_zeros(b, h, d, v.shape[-1])  # running sum of phi(k)^T v
        norm = q.new_zeros(b, h, d)  # running sum of phi(k)
        size = block * max(1, self.chunk // block)  # whole blocks per chunk
        idx = torch.arange(size, device=q.device) // block
        inside = idx[None, :] <= idx[:, None]  # (c, c) block-lower-triangular
        outs = []
        for s in range(0, t, size):
            qc, kc, vc = q[:, :, s:s + size], k[:, :, s:s + size], v[:, :, s:s + size]
            n = qc.shape[2]
            scores = (qc @ kc.transpose(-2, -1)) * inside[:n, :n]  # (B, H, c, c)
            num = scores @ vc + qc @ state
            den = scores.sum(-1) + (qc @ norm[..., None]).squeeze(-1)
            outs.append(num / den[..., None].clamp_min(1e-6))
            state = state + kc.transpose(-2, -1) @ vc
            norm = norm + kc.sum(dim=2)
        return torch.cat(outs, dim=2)


class LocalKernel(nn.Module):
    """Sliding-window softmax attention, |i - j| <= window, computed block by block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.window = cfg.window
        self.dropout = cfg.attention_dropout

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: AttnMask) -> Tensor:
        band = AttnMask(mask.key_pad, mask.causal, mask.q_offset, self.window, mask.block)
        t = q.shape[2]
        if mask.q_offset > 0 or t != k.shape[2] or t <= 2 * self.window:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            allowed = band.dense(q.shape[2], k.shape[2], q.device)
            return _masked_softmax_attention(scores, v, allowed, self.dropout, self.training)
        return self._blocked(q, k, v, band)

    def _blocked(self, q: Tensor, k: Tensor, v: Tensor, band: AttnMask) -> Tensor:
        """Queries in blocks of `w`; each block sees its own and both neighbouring key blocks."""
        b, h, t, d = q.shape
        w = self.window
        n = -(-t // w)  # number of blocks
        pad = n * w - t
        qb = F.pad(q, (0, 0, 0, pad)).view(b, h, n, w, d)  # (B, H, N, w, Dh)
        kp = F.pad(k, (0, 0, w, pad + w))  # one block of zeros on each side
        vp = F.pad(v, (0, 0, w, pad + w))
        kb = kp.unfold(2, 3 * w, w).transpose(-2, -1)  # (B, H, N, 3w, Dh)
        vb = vp.unfold(2, 3 * w, w).transpose(-2, -1)
        scores = (qb @ kb.transpose(-2, -1)) / math.sqrt(d)  # (B, H, N, w, 3w)
        qi = torch.arange(n * w, device=q.device).view(n, w, 1)  # absolute query positions
        kj = (torch.arange(n, device=q.device).view(n, 1, 1) - 1) * w + torch.arange(3 * w, device=q.device)
        allowed = ((qi - kj).abs() <= w) & (kj >= 0) & (kj < t)  # (N, w, 3w)
        if band.causal:
            allowed = allowed & (kj // band.block <= qi // band.block)
        allowed = allowed[None, None]
        if band.key_pad is not None:
            kpad = F.pad(band.key_pad, (w, pad + w), value=True).unfold(1, 3 * w, w)  # (B, N, 3w)
            allowed = allowed & ~kpad[:, None, :, None, :]
        out = _masked_softmax_attention(scores, vb, allowed, self.dropout, self.training)
        return out.reshape(b, h, n * w, d)[:, :, :t]  # (B, H, T, Dh)


KERNELS: dict[str, type[nn.Module]] = {
    "scaled_dot": ScaledDotKernel,
    "dot": DotKernel,
    "additive": AdditiveKernel,
    "linear": LinearKernel,
    "local": LocalKernel,
}


#: Kinds that take attention dropout (the others have no attention weights to drop).
DROPOUT_KINDS = ("scaled_dot", "dot", "additive", "local")


def build_kernel(name: str, cfg: ModelConfig) -> nn.Module:
    """Look up an attention kernel by name; unknown names list the valid ones."""
    if name not in KERNELS:
        raise ConfigError(f"config field 'model.attention': unknown kind '{name}' "
                          f"(valid: {', '.join(KERNELS)})")
    return KERNELS[name](cfg)


class MultiHeadAttention(nn.Module):
    """Project to heads, run the kernel, merge heads; optional rotary positions and KV cache."""

    def __init__(self, cfg: ModelConfig, kind: str | None = None) -> None:
        super().__init__()
        d_model, self.n_heads = cfg.d_model, cfg.n_heads
        self.d_head = d_model // cfg.n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.kernel = build_kernel(kind or cfg.attention, cfg)

    def heads(self, x: Tensor, proj: nn.Linear) -> Tensor:
        b, t, _ = x.shape
        return proj(x).view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, Dh)

    def forward(self, x: Tensor, kv: Tensor | None = None, mask: AttnMask | None = None,
                rotary: nn.Module | None = None, cache: dict[str, Tensor] | None = None,
                static_kv: bool = False, q_positions: Tensor | None = None) -> Tensor:
        """Attend from `x` (B, T, D) to `kv` (B, S, D) (self-attention when kv is None).

        With `cache` (a dict owned by the caller), self-attention appends the new keys and
        values to those cached; cross-attention (`static_kv`) computes them once and reuses.
        `q_positions` (B, T) are the positions of the queries when they are a selection of
        the key positions (rotary then rotates each query by its own position).
        """
        mask = mask or AttnMask()
        q = self.heads(x, self.q_proj)
        if cache is not None and static_kv and "k" in cache:
            k, v = cache["k"], cache["v"]
        else:
            src = x if kv is None else kv
            k, v = self.heads(src, self.k_proj), self.heads(src, self.v_proj)
            if rotary is not None:
                past = cache["k"].shape[2] if cache is not None and "k" in cache else 0
                k = rotary(k, offset=past)
            if cache is not None and static_kv:  # stored once, read every step
                cache["k"], cache["v"] = k, v = k.contiguous(), v.contiguous()
            elif cache is not None:
                k, v = _append(cache, k, v)
        if rotary is not None:
            q = rotary(q, offset=mask.q_offset, positions=q_positions)
        out = self.kernel(q, k, v, mask)  # (B, H, T, Dh)
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))  # (B, T, D)


def _append(cache: dict[str, Tensor], k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Keys/values so far (B, H, T_past + T, Dh) after appending the new ones to `cache`.

    Without autograd the cache keeps buffers with spare room along T (grown by doubling), so
    a step copies only its new keys instead of re-copying all earlier ones (`torch.cat`);
    ``cache["k"]``/``cache["v"]`` are views of the filled part. Contiguous storage also keeps
    one-query attention fast (strided keys make it several times slower on CPU).
    """
    if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
        if "k" in cache:
            k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
        cache["k"], cache["v"] = k, v
        return k, v
    past = cache["k"].shape[2] if "k" in cache else 0
    total = past + k.shape[2]
    buf = cache.get("k_buf")
    if buf is None or buf.shape[2] < total or buf.shape[0] != k.shape[0]:
        size = list(k.shape)
        size[2] = max(2 * total, 16)
        grown = [k.new_empty(size), v.new_empty(size)]
        if past:
            grown[0][:, :, :past].copy_(cache["k"])
            grown[1][:, :, :past].copy_(cache["v"])
        cache["k_buf"], cache["v_buf"] = grown
    cache["k_buf"][:, :, past:total].copy_(k)
    cache["v_buf"][:, :, past:total].copy_(v)
    cache["k"], cache["v"] = cache["k_buf"][:, :, :total], cache["v_buf"][:, :, :total]
    return cache["k"], cache["v"]

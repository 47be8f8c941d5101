"""Encoder and decoder layers: attention + feed-forward with residuals and LayerNorm.

Pre-LN (the default) normalises the input of each sub-block, x + f(LN(x)), which trains
stably without long warm-up (Xiong et al. 2020). Post-LN normalises after the residual sum,
LN(x + f(x)), exactly as the original Transformer and `torch.nn.TransformerEncoderLayer`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from sciformer.config import ModelConfig
from sciformer.model.attention import AttnMask, MultiHeadAttention

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}
NORMS = ("pre", "post")  # pre-LN (stable without warm-up tricks) or post-LN (Vaswani et al.)


class FeedForward(nn.Module):
    """Position-wise MLP: Linear(d, d_ff) -> activation -> dropout -> Linear(d_ff, d)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_ff)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model)
        self.act = ACTIVATIONS[cfg.activation]
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(self.dropout(self.act(self.up(x))))


class Residual(nn.Module):
    """One sub-block wrapped with dropout, residual sum and LayerNorm (pre or post)."""

    def __init__(self, cfg: ModelConfig, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.pre = cfg.norm == "pre"

    def forward(self, x: Tensor, **kwargs) -> Tensor:
        if self.pre:
            return x + self.dropout(self.block(self.norm(x), **kwargs))
        return self.norm(x + self.dropout(self.block(x, **kwargs)))

    def attend_at(self, x: Tensor, index: Tensor, **kwargs) -> Tensor:
        """Self-attention sub-block output (B, K, D) at positions `index` (B, K) only: queries
        there, keys and values from every position of `x` (B, T, D). Equals forward(x) at
        those positions (LayerNorm and the residual act per position)."""
        pick = index[..., None].expand(-1, -1, x.shape[-1])
        xq = x.gather(1, pick)
        if self.pre:
            normed = self.norm(x)
            out = self.block(normed.gather(1, pick), kv=normed, q_positions=index, **kwargs)
            return xq + self.dropout(out)
        return self.norm(xq + self.dropout(self.block(xq, kv=x, q_positions=index, **kwargs)))


class EncoderLayer(nn.Module):
    """Bidirectional self-attention, then feed-forward."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Residual(cfg, MultiHeadAttention(cfg))
        self.ff = Residual(cfg, FeedForward(cfg))

    def forward(self, x: Tensor, mask: AttnMask, rotary: nn.Module | None = None,
                at: Tensor | None = None) -> Tensor:
        """Outputs (B, T, D), or (B, K, D) at the positions `at` (B, K) only."""
        if at is None:
            x = self.self_attn(x, mask=mask, rotary=rotary)
        else:
            x = self.self_attn.attend_at(x, at, mask=mask, rotary=rotary)
        return self.ff(x)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder memory, then feed-forward.

    Cross-attention uses scaled dot-product unless the configured kind is one of the dense
    ones (dot, additive): the long-sequence kinds (linear, local) make no sense across
    sequences of unrelated positions.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cross_kind = cfg.attention if cfg.attention in ("scaled_dot", "dot", "additive") else "scaled_dot"
        self.self_attn = Residual(cfg, MultiHeadAttention(cfg))
        self.cross_attn = Residual(cfg, MultiHeadAttention(cfg, cross_kind))
        self.ff = Residual(cfg, FeedForward(cfg))

    def forward(self, x: Tensor, memory: Tensor, self_mask: AttnMask, cross_mask: AttnMask,
                rotary: nn.Module | None = None, cache: dict | None = None) -> Tensor:
        self_cache = cross_cache = None
        if cache is not None:
            self_cache, cross_cache = cache.setdefault("self", {}), cache.setdefault("cross", {})
        x = self.self_attn(x, mask=self_mask, rotary=rotary, cache=self_cache)
        x = self.cross_attn(x, kv=memory, mask=cross_mask, cache=cross_cache, static_kv=True)
        return self.ff(x)

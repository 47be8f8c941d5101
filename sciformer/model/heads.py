"""Output heads: token logits (masked residues, binned forecasts) and continuous values.

`TokenHead` ties its weight to the input embedding (Press & Wolf 2017; as BERT and ESM-2);
the ``roberta`` style adds the dense + GELU + LayerNorm transform that ESM-2 uses before the
tied projection. `ValueHead` maps decoder states to patch values x quantile levels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciformer.config import ModelConfig

LM_HEADS = ("linear", "roberta")  # roberta: dense + GELU + LayerNorm first, as ESM-2


class TokenHead(nn.Module):
    """Hidden states (B, T, D) -> logits over the vocabulary (B, T, V).

    Tied: logits = h E^T + b with the input embedding E passed in at call time (so the
    weight is stored once). ``roberta`` style (ESM-2): h -> dense -> GELU -> LayerNorm first.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.tied = cfg.tie_embeddings
        self.proj = None if self.tied else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.transform = None
        if cfg.lm_head == "roberta":
            self.transform = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_model), nn.GELU(),
                                           nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps))

    def forward(self, h: Tensor, embedding: Tensor | None = None) -> Tensor:
        if self.transform is not None:
            h = self.transform(h)
        weight = embedding if self.tied else self.proj.weight
        return F.linear(h, weight, self.bias)  # (B, T, V)


class ValueHead(nn.Module):
    """Hidden states (B, T, D) -> continuous outputs (B, T, output_dim)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.proj = nn.Linear(cfg.d_model, cfg.output_dim)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(h)

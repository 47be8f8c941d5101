"""Position information, chosen by name.

- ``sinusoidal``: fixed sin/cos of geometric frequencies added to the input (Vaswani et al.
  2017, sec. 3.5); extrapolates to any length.
- ``learned``: a trained table of ``max_len`` vectors added to the input (BERT/GPT-2).
- ``rotary``: rotates query/key pairs by position-dependent angles inside attention (Su et al.
  2021, RoFormer), so scores depend on relative offsets; used by ESM-2. Nothing is added to
  the input.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sciformer.errors import ConfigError


class SinusoidalPositions(nn.Module):
    """x + PE(pos), PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(...)."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.register_buffer("table", self._table(max(max_len, 1024)), persistent=False)

    def _table(self, n: int) -> Tensor:
        pos = torch.arange(n, dtype=torch.float32)[:, None]  # (n, 1)
        freq = torch.exp(torch.arange(0, self.d_model, 2) * (-math.log(10000.0) / self.d_model))
        table = torch.zeros(n, self.d_model)
        table[:, 0::2] = torch.sin(pos * freq)
        table[:, 1::2] = torch.cos(pos * freq[: self.d_model // 2])
        return table  # (n, D)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        return x + self.at(torch.arange(offset, offset + x.shape[1])).to(x.dtype)

    def at(self, pos: Tensor) -> Tensor:
        """The encodings (..., D) of the positions `pos` (any shape, integers >= 0)."""
        end = int(pos.max()) + 1 if pos.numel() else 0
        if end > self.table.shape[0]:  # grow on demand: no length limit
            self.table = self._table(2 * end).to(self.table.device)
        return self.table[pos.to(self.table.device)]


class LearnedPositions(nn.Module):
    """x + P[pos] with a trained table; positions beyond max_len are an error."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.table = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.table.weight, std=0.02)

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        return x + self.at(torch.arange(offset, offset + x.shape[1], device=x.device))

    def at(self, pos: Tensor) -> Tensor:
        """The trained vectors (..., D) of the positions `pos` (integers in [0, max_len))."""
        end = int(pos.max()) + 1 if pos.numel() else 0
        if end > self.table.num_embeddings:
            raise ValueError(f"sequence of {end} positions exceeds learned positions "
                             f"model.max_len={self.table.num_embeddings}")
        return self.table(pos.to(self.table.weight.device))


class NoPositions(nn.Module):
    """Identity on the input; used with rotary, where positions act inside attention."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:
        return x


class Rotary(nn.Module):
    """Rotary embedding applied to (B, H, T, Dh) queries or keys (rotate-half convention)."""

    def __init__(self, d_head: int, base: float = 10000.0) -> None:
        super().__init__()
        if d_head % 2:
            raise ConfigError(f"config field 'model.positions': rotary needs an even head width "
                              f"(model.d_model / model.n_heads), got {d_head}")
        inv_freq = 1.0 / base ** (torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: Tensor, offset: int = 0, positions: Tensor | None = None) -> Tensor:
        """Rotate `x` (B, H, T, Dh) for positions offset..offset+T-1, or for the given
        per-example `positions` (B, T) (queries gathered from scattered places)."""
        if positions is None:
            t = torch.arange(offset, offset + x.shape[2], device=x.device, dtype=torch.float32)
            angles = torch.outer(t, self.inv_freq)  # (T, Dh/2)
        else:
            angles = positions[:, None, :, None].float() * self.inv_freq  # (B, 1, T, Dh/2)
        angles = torch.cat([angles, angles], dim=-1)  # (..., T, Dh)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


POSITIONS: dict[str, type[nn.Module]] = {
    "sinusoidal": SinusoidalPositions,
    "learned": LearnedPositions,
    "rotary": NoPositions,  # the rotation itself is applied in attention (see Rotary)
}


def build_positions(name: str, d_model: int, max_len: int) -> nn.Module:
    """The input-side position module for `name`; unknown names list the valid ones."""
    if name not in POSITIONS:
        raise ConfigError(f"config field 'model.positions': unknown kind '{name}' "
                          f"(valid: {', '.join(POSITIONS)})")
    return POSITIONS[name](d_model, max_len)

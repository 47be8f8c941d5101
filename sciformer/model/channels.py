"""Attention across the channels of one window, for forecasts with independent channels.

With ``data.channels: independent`` every channel of a window is its own row of patch tokens
(rows ``b * C + c``), so time attention never lets one channel see another. A channel layer
(`model.channel_attention`) regroups the encoder states (R, N, D) so that the C rows of one
window meet at each patch index, attends across them (a pre- or post-LN self-attention
sub-block with its residual, no feed-forward of its own), and puts the rows back: time and
channel attention alternate as in Panda (Lai, Bao & Gilpin 2025). There is no position over
channels, so the layer is equivariant to permuting a window's channels and takes any C.

The grouping is either one channel count for all windows (an int: R = B * C rows, as the
patch tokenizers lay out a batch) or the channel count of each window (a (G,) tensor summing
to R: windows of systems of different dimensions packed row after row, as zoo training
batches them). Packed windows are attended in runs of equal channel count, so nothing is
padded and no mask is needed (padding to the widest window cost 1.5 times as much).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sciformer.compiling import eager
from sciformer.config import ModelConfig
from sciformer.model.attention import AttnMask, MultiHeadAttention
from sciformer.model.layers import Residual

DENSE_KINDS = ("scaled_dot", "dot", "additive")
Groups = int | Tensor  # channels per window: one count for all, or one per window (G,)


class ChannelAttention(nn.Module):
    """Self-attention across the channels of one window, inputs (G * N, C, D); a dense kernel
    (the configured one unless it is a long-sequence kind: C is small and has no order)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        kind = cfg.attention if cfg.attention in DENSE_KINDS else "scaled_dot"
        self.attn = Residual(cfg, MultiHeadAttention(cfg, kind))

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x, mask=AttnMask())


@eager  # its shapes depend on the data: outside the graph in a compiled step
def group_layout(groups: Tensor, rows: int) -> tuple[list[tuple[int, Tensor]], Tensor]:
    """Runs of windows with equal channel count, for windows of `groups` (G,) channels packed
    one after another into `rows` rows: (C, row index (G_C * C,) window-major) per distinct C,
    and the permutation that puts the runs' rows, concatenated, back in row order."""
    sizes = groups.to(torch.int64).reshape(-1)
    if sizes.numel() == 0 or bool((sizes < 1).any()) or int(sizes.sum()) != rows:
        raise ValueError(f"channel groups {sizes.tolist()} do not partition {rows} rows into "
                         "windows of at least one channel")
    starts = torch.cumsum(sizes, 0) - sizes  # (G,)
    runs = []
    for c in torch.unique(sizes).tolist():
        first = starts[sizes == c]  # (G_C,)
        runs.append((c, (first[:, None] + torch.arange(c, device=sizes.device)).reshape(-1)))
    order = torch.cat([index for _, index in runs])
    return runs, torch.argsort(order)


def _mix_uniform(layer: nn.Module, h: Tensor, c: int) -> Tensor:
    """`layer` across the C channels of each window of `h` (B * C, N, D), rows b * C + c."""
    r, n, d = h.shape
    if c < 1 or r % c:
        raise ValueError(f"{r} rows are not whole windows of {c} channels")
    g = r // c
    x = h.view(g, c, n, d).transpose(1, 2).reshape(g * n, c, d)  # (G*N, C, D)
    return layer(x).view(g, n, c, d).transpose(1, 2).reshape(r, n, d)


def mix_channels(layer: nn.Module, h: Tensor, groups: Groups) -> Tensor:
    """`layer` (a `ChannelAttention`) applied across the channels of each window, at every
    patch index: states (R, N, D) in and out, rows in the same order."""
    if isinstance(groups, int):
        return _mix_uniform(layer, h, groups)
    runs, back = group_layout(groups, h.shape[0])
    back = back.to(h.device)
    mixed = [_mix_uniform(layer, h[index.to(h.device)], c) for c, index in runs]
    return torch.cat(mixed)[back]

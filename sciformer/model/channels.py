"""Attention across the channels of one window, for forecasts with independent channels.

With ``data.channels: independent`` every channel of a window is its own row of patch tokens
(rows ``b * C + c``), so time attention never lets one channel see another. A channel layer
(`model.channel_attention`) regroups the encoder states (R, N, D) so that the C rows of one
window meet at each patch index, attends across them, and puts the rows back: time and
channel attention alternate as in Panda (Lai, Bao & Gilpin 2025). There is no position over
channels, so the layer is equivariant to permuting a window's channels and takes any C.

The grouping is either one channel count for all windows (an int: R = B * C rows, as the
patch tokenizers lay out a batch) or the channel count of each window (a (G,) tensor summing
to R: windows of systems of different dimensions packed row after row, as zoo training
batches them). Windows with fewer channels than the widest are padded inside the layer, and
the padding is masked out of the keys; the rows outside stay packed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sciformer.compiling import eager
from sciformer.model.attention import AttnMask

Groups = int | Tensor  # channels per window: one count for all, or one per window (G,)


@eager  # its shapes depend on the data: outside the graph in a compiled step
def group_layout(groups: Tensor, rows: int) -> tuple[Tensor, Tensor, bool]:
    """Row index (G, Cmax) of channel c of window g, its validity (G, Cmax), and whether any
    slot is padding, for windows of `groups` (G,) channels packed one after another into
    `rows` rows."""
    sizes = groups.to(torch.int64).reshape(-1)
    if sizes.numel() == 0 or bool((sizes < 1).any()) or int(sizes.sum()) != rows:
        raise ValueError(f"channel groups {sizes.tolist()} do not partition {rows} rows into "
                         "windows of at least one channel")
    starts = torch.cumsum(sizes, 0) - sizes  # (G,)
    c = torch.arange(int(sizes.max()), device=sizes.device)  # (Cmax,)
    valid = c[None, :] < sizes[:, None]
    return (starts[:, None] + c[None, :]).masked_fill(~valid, 0), valid, not bool(valid.all())


def mix_channels(layer: nn.Module, h: Tensor, groups: Groups) -> Tensor:
    """`layer` (an encoder layer) applied across the channels of each window, at every
    patch index: states (R, N, D) in and out, rows in the same order."""
    r, n, d = h.shape
    if isinstance(groups, int):
        if groups < 1 or r % groups:
            raise ValueError(f"{r} rows are not whole windows of {groups} channels")
        g, c = r // groups, groups
        x = h.view(g, c, n, d).transpose(1, 2).reshape(g * n, c, d)
        return layer(x, AttnMask()).view(g, n, c, d).transpose(1, 2).reshape(r, n, d)
    index, valid, padded = group_layout(groups.to(h.device), r)
    g, c = index.shape
    x = h[index].transpose(1, 2).reshape(g * n, c, d)  # (G*N, Cmax, D)
    pad = (~valid)[:, None, :].expand(g, n, c).reshape(g * n, c) if padded else None
    y = layer(x, AttnMask(key_pad=pad))
    return y.view(g, n, c, d).transpose(1, 2)[valid]  # (R, N, D) in row order

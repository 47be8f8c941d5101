"""Analogue forecasts from the context alone: the anchor of a zoo model (`data.anchor: analog`).

The method of analogues (Lorenz 1969, J. Atmos. Sci. 26:636): find the stretches of the past
that look most like the present and forecast what followed them. Here the past is the
context itself, so the forecast needs no training data of the system, which is what a
zero-shot forecaster may use. Context parroting (Zhang & Gilpin, ICLR 2026) is the special
case of one analogue in raw units; this version

- compares whole states standardised per channel (each channel's context mean and std), so a
  channel of large amplitude does not decide the match alone (on Rössler the spiking z
  variable otherwise picks the analogue);
- averages the continuations of the `k` best analogues, which tends to the context mean as
  the analogues' futures part -- a forecast that loses its phase stops being confident;
- skips candidates closer than a Theiler window (Theiler 1986, Phys. Rev. A 34:2427) to the
  present, so a finely sampled trajectory does not match itself shifted by a step.

A continuation that runs past the context's end wraps onto the analogue's own continuation
again (as `parrot` does), so a periodic signal is continued exactly. Everything is batched in
torch over windows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# chosen on the 40 systems of the workflow's zoo corpus (mean nRMSE over the first Lyapunov
# time, docs/zoo-model.md), never on the held-out systems
MOTIF = 4  # steps of the present compared with each candidate
THEILER = 8  # candidates must end at least this many steps before the present
NEIGHBOURS = 8  # analogues averaged
# relative to the window's largest channel std: a constant channel weighs nothing instead of
# dividing by zero, whatever the other windows of the batch hold
STD_FLOOR = 1e-8


def analog_forecast(context: Tensor, horizon: int, motif: int = MOTIF, theiler: int = THEILER,
                    neighbours: int = NEIGHBOURS) -> Tensor:
    """The mean continuation (N, horizon, F) of the `neighbours` stretches of each context
    (N, C, F) closest to its last `motif` states (module docstring). Contexts too short for
    one candidate (C < motif + theiler) raise ValueError."""
    n, c, f = context.shape
    n_cand = c - motif - theiler + 1
    if motif < 1 or theiler < 1 or n_cand < 1:
        raise ValueError(f"analogue forecast needs a context of at least motif {motif} + "
                         f"Theiler window {theiler} steps; got {c}")
    x = context.double()
    sd = x.std(dim=1, keepdim=True)
    floor = STD_FLOOR * sd.amax(dim=2, keepdim=True).clamp_min(1.0)  # (N, 1, 1)
    z = (x - x.mean(dim=1, keepdim=True)) / sd.clamp_min(floor)
    stretches = z.unfold(1, motif, 1)[:, :n_cand]  # (N, n_cand, F, motif)
    present = z[:, c - motif:].transpose(1, 2)[:, None]  # (N, 1, F, motif)
    dist = (stretches - present).pow(2).sum(dim=(2, 3))  # (N, n_cand)
    k = min(neighbours, n_cand)
    # the most recent of equal distances first (as parroting), for a deterministic choice
    best = dist.flip(1).topk(k, dim=1, largest=False).indices  # (N, k), flipped positions
    start = c - theiler - best  # index after each analogue's last state: n_cand - 1 - i + motif
    steps = torch.arange(horizon, device=context.device)
    idx = start[..., None] + steps % (c - start)[..., None]  # (N, k, horizon)
    futures = torch.gather(x[:, None].expand(n, k, c, f), 2,
                           idx[..., None].expand(n, k, horizon, f))
    return futures.mean(dim=1).to(context.dtype)  # (N, horizon, F)


class AnalogAnchor(nn.Module):
    """The anchor of a zoo model (`data.anchor: analog`): each window's `analog_forecast`,
    computed from its whole-state context before the channels become token rows, so every
    channel's patches are offsets on an analogue of the whole state. Holds no tensors (the
    run's config names it); `forecast` is what training and inference call."""

    def __init__(self, motif: int = MOTIF, theiler: int = THEILER,
                 neighbours: int = NEIGHBOURS) -> None:
        super().__init__()
        self.motif, self.theiler, self.neighbours = motif, theiler, neighbours

    @property
    def min_context(self) -> int:
        """The shortest context with one candidate analogue."""
        return self.motif + self.theiler

    def forecast(self, context: Tensor, horizon: int) -> Tensor:
        """Analogue forecasts (N, horizon, F) after contexts (N, C, F)."""
        return analog_forecast(context, horizon, self.motif, self.theiler, self.neighbours)

    def describe(self) -> dict[str, int | str]:
        return {"kind": "analog", "motif": self.motif, "theiler": self.theiler,
                "neighbours": self.neighbours,
                "fit": "none: computed from each window's context alone"}

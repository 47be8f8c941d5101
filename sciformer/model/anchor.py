"""The NVAR anchor of a hybrid forecaster: a fitted NVAR's closed-loop forecast of the next patch.

A forecasting model predicts the quantiles of patch j+1 as offsets on an *anchor* computed from
its decoder input, patch j. The default anchor is persistence (the last state of patch j
repeated). `NVARAnchor` instead rolls a fitted next-generation reservoir computer (NVAR,
Gauthier et al., Nat. Commun. 12:5564, 2021; `sciformer.evaluation.chaos_baselines.NVAR`)
forward over the patch from the last delayed states of patch j, batched in torch, so the
Transformer learns the correction to a strong data-driven forecast (a hybrid model in the sense
of Pathak et al., Chaos 28:041101, 2018).

The anchor works on whole-state tokens (a joint patch token flattens (patch_len, F) time-major)
in the tokenizer's normalised units. Its fitted parameters are buffers, so they travel in the
run's model.safetensors as ``anchor.*`` tensors and are rebuilt from them (`from_tensors`):

    coef (k F + n_quad, F)   ridge readout of the increment z_{t+1} - z_t
    intercept (F,)           its unpenalised constant
    mu, sd (F,)              the NVAR's own standardisation z = (u - mu) / sd of token units u
    lo, hi (F,)              bounds a rollout is clipped to (in z)
    pairs (2, n_quad)        indices into the k F linear features whose products are quadratic
    skip ()                  steps between delayed states
    scale (patch_len F,)     optional: the anchor's RMS error at each step and feature of a patch

`scale` makes the Transformer's outputs corrections in units of the anchor's own typical error
(`fit_scale`): a quantile is anchor + scale * output, and the training loss is the pinball loss
in those units. Where the anchor is very good (NVAR is almost exact on a quadratic flow such as
Lorenz-63, and a few steps ahead on any smooth flow) the offsets and the spread the network
must represent are then of order one instead of 1e-3 to 1e-6 of the data's spread, which
plain outputs resolve poorly. Runs saved without it use unit scale (the earlier behaviour).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

PREFIX = "anchor."  # names of the anchor's tensors in model.safetensors
NAMES = ("coef", "intercept", "mu", "sd", "lo", "hi", "pairs", "skip")
OPTIONAL = ("scale",)  # tensors that runs saved before they existed do not have
SCALE_FLOOR = 1e-6  # smallest offset unit, in token units (float32 resolution of O(1) values)
SCALE_PAIRS = 8192  # (patch, next patch) pairs the offset scale is measured on, at most


def delay_features(buf: Any, k: int, skip: int, first: Any, second: Any) -> Any:
    """NVAR features of the newest state of each `(n, >= (k-1) skip + 1, F)` buffer (numpy or
    torch): the linear monomials [x_t, x_{t-skip}, ..., x_{t-(k-1) skip}] (k F, newest first)
    followed by the quadratic ones lin[first] * lin[second]; `(n, k F + len(first))`."""
    cat = torch.cat if isinstance(buf, Tensor) else np.concatenate
    lin = cat([buf[:, -1 - i * skip] for i in range(k)], 1)
    return cat([lin, lin[:, first] * lin[:, second]], 1)


class NVARAnchor(nn.Module):
    """Closed-loop NVAR forecast of each next patch from the previous one (see the module
    docstring). Holds no trainable parameters."""

    def __init__(self, coef: Tensor, intercept: Tensor, mu: Tensor, sd: Tensor, lo: Tensor,
                 hi: Tensor, pairs: Tensor, skip: Tensor | int,
                 scale: Tensor | None = None) -> None:
        super().__init__()
        f = intercept.numel()
        n_lin = coef.shape[0] - pairs.shape[1]
        if coef.dim() != 2 or coef.shape[1] != f or n_lin < f or n_lin % f or pairs.shape[0] != 2:
            raise ValueError(f"NVAR anchor: inconsistent shapes coef {tuple(coef.shape)}, "
                             f"intercept {tuple(intercept.shape)}, pairs {tuple(pairs.shape)}")
        for name, value in (("coef", coef), ("intercept", intercept), ("mu", mu), ("sd", sd),
                            ("lo", lo), ("hi", hi)):
            self.register_buffer(name, torch.as_tensor(value, dtype=torch.float32).clone())
        self.register_buffer("pairs", torch.as_tensor(pairs, dtype=torch.int64).clone())
        self.register_buffer("skip", torch.as_tensor(skip, dtype=torch.int64).clone())
        if scale is not None:
            scale = torch.as_tensor(scale, dtype=torch.float32).clone()
            if scale.dim() != 1 or scale.numel() % f or not bool((scale > 0).all()):
                raise ValueError(f"NVAR anchor: scale must be positive, a multiple of {f} "
                                 f"values; got shape {tuple(scale.shape)}")
        self.register_buffer("scale", scale)  # None: not in the state dict (unit offsets)
        self.n_features, self.delays = f, n_lin // f
        self.skip_steps = int(self.skip)  # python ints: no host sync per call

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> NVARAnchor | None:
        """The anchor saved among a run's weights (``anchor.*`` names), or None if there is
        none (a persistence-anchored run). ValueError if some of its tensors are missing."""
        found = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
        if not found:
            return None
        missing = sorted(set(NAMES) - set(found))
        if missing:
            raise ValueError(f"NVAR anchor: tensors {[PREFIX + m for m in missing]} missing")
        return cls(*(found[n] for n in NAMES), *(found.get(n) for n in OPTIONAL))

    @classmethod
    def from_nvar(cls, nvar: Any) -> NVARAnchor:
        """The torch twin of a fitted `chaos_baselines.NVAR` (its coefficients, standardisation,
        bounds, quadratic pairs and skip)."""
        pairs = np.stack([np.asarray(nvar.pairs_[0]), np.asarray(nvar.pairs_[1])])
        arrays = (nvar.coef_, nvar.intercept_, nvar.mu_, nvar.sd_, *nvar.bounds_)
        return cls(*(torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in arrays),
                   torch.as_tensor(pairs.astype(np.int64)), nvar.skip)

    def state_tensors(self) -> dict[str, Tensor]:
        """The anchor's tensors by their names in model.safetensors."""
        return {PREFIX + name: value for name, value in self.state_dict().items()}

    @property
    def span(self) -> int:
        """States one forecast step reads: (delays - 1) * skip + 1."""
        return (self.delays - 1) * self.skip_steps + 1

    def rollout(self, history: Tensor, steps: int) -> Tensor:
        """Closed-loop forecast (R, steps, F) in token units after histories (R, >= span, F)
        in token units; float32, every step clipped to the fitted bounds."""
        z = ((history[:, -self.span:].float() - self.mu) / self.sd)
        out = []
        for _ in range(steps):
            step = delay_features(z, self.delays, self.skip_steps, self.pairs[0], self.pairs[1])
            nxt = z[:, -1] + step @ self.coef + self.intercept
            nxt = torch.nan_to_num(nxt, nan=float("inf")).clamp(self.lo, self.hi)
            out.append(nxt)
            z = torch.cat([z[:, 1:], nxt[:, None]], dim=1)
        return torch.stack(out, dim=1) * self.sd + self.mu  # (R, steps, F)

    def features(self, history: np.ndarray) -> np.ndarray:
        """The NVAR features (R, k F + n_quad) that one rollout step reads, of the last
        states of histories (R, >= span, F) in token units, in float64 numpy (for fits on
        them, e.g. `sciformer.pipelines.first_patch`)."""
        u = np.asarray(history[:, -self.span:], np.float64)
        z = (u - self.mu.double().numpy()) / self.sd.double().numpy()
        return delay_features(z, self.delays, self.skip_steps, self.pairs[0].numpy(),
                              self.pairs[1].numpy())

    def fit_scale(self, trajectories: list[np.ndarray], patch_len: int) -> Tensor:
        """Set and return `scale` (patch_len * F,), time-major like a token: the RMS error of
        this anchor's forecast of a patch from the true previous patch, per step and feature,
        over at most `SCALE_PAIRS` evenly spaced (patch, next patch) pairs of `trajectories`
        ((T, F) arrays in token units, the training split), floored at `SCALE_FLOOR`."""
        from sciformer.evaluation.chaos_baselines import selection_windows  # (imports this)

        pairs = selection_windows(trajectories, 2 * patch_len, SCALE_PAIRS)
        if len(pairs) == 0:
            raise ValueError(f"NVAR anchor: no trajectory holds two patches of {patch_len} "
                             "steps to measure the offset scale on")
        both = torch.as_tensor(pairs, dtype=torch.float32)  # (N, 2 L, F)
        with torch.no_grad():
            err = self.rollout(both[:, :patch_len], patch_len) - both[:, patch_len:]
        rms = err.double().pow(2).mean(dim=0).sqrt().clamp_min(SCALE_FLOOR)  # (L, F)
        self.scale = rms.flatten().float()
        return self.scale

    def forward(self, dec_in: Tensor, patch_len: int) -> Tensor:
        """The anchor (B', N, patch_len * F) of the patch after each decoder-input token
        (B', N, patch_len * F): the NVAR rolled out patch_len steps from its last states."""
        if self.span > patch_len:
            raise ValueError(f"NVAR anchor: {self.delays} delays x skip {self.skip_steps} need "
                             f"{self.span} states, a patch has {patch_len}")
        b, n, width = dec_in.shape
        steps = dec_in.reshape(b * n, patch_len, width // patch_len)  # time-major tokens
        with torch.autocast(dec_in.device.type, enabled=False):  # float32 whatever the step
            out = self.rollout(steps, patch_len)
        return out.reshape(b, n, width).to(dec_in.dtype)

"""A small Fourier Neural Operator baseline for 2-D fields (Li et al. 2021, ICLR, "Fourier
Neural Operator for Parametric Partial Differential Equations").

The Well (Ohana et al. 2024) reports FNO as its reference surrogate: the last few states in,
the next state out, rolled out autoregressively. `FNOBaseline` is that recipe at a size a CPU
trains in a few minutes, fitted on the TRAINING split of the run only:

    input  (n_in frames x fields + 2 grid coordinates) -> pointwise lift to `width` channels
    L x  [ spectral conv (lowest `modes` x `modes` Fourier modes, complex weights)
           + pointwise linear, GELU between layers ]
    pointwise projection -> next frame - last frame (an increment on persistence, as the
    Transformer's quantile head predicts; both then start from the same anchor)

Fields are scaled per field by the training mean and std. Training: next-step MSE (in scaled
units) with Adam, on (n_in -> 1) pairs drawn uniformly from the training trajectories, for
`steps` optimizer steps or `time_budget` CPU seconds of this process (`time.process_time`, so
a loaded machine does not shorten the fit), whichever comes first; the learning rate decays on
a cosine over whichever of the two runs out first, so a fit stopped by the budget ends
annealed. `describe()` records what was done. Seeded; a fit stopped by its step count
repeats exactly, one stopped by the budget up to where the timing moved the schedule.
Interface of `sciformer.evaluation.baselines`: `fit(train) -> self`,
`predict(context (n, C, F), horizon) -> (n, horizon, F)`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sciformer.errors import InputError
from sciformer.evaluation.baselines import _check_train, _ForecastBaseline


class SpectralConv2d(nn.Module):
    """Multiply the lowest `modes` x `modes` Fourier modes (both signs along x, the
    non-negative ones along y of the real FFT) by learned complex matrices; drop the rest."""

    def __init__(self, width: int, modes: int) -> None:
        super().__init__()
        self.modes = modes
        scale = 1.0 / (width * width)
        shape = (2, width, width, modes, modes, 2)  # (x sign, in, out, kx, ky, re/im)
        self.weight = nn.Parameter(scale * torch.rand(*shape))

    def forward(self, x: Tensor) -> Tensor:
        """(B, W, X, Y) -> (B, W, X, Y)."""
        b, w, nx, ny = x.shape
        m = self.modes
        x_ft = torch.fft.rfft2(x)  # (B, W, X, Y//2+1) complex
        wgt = torch.view_as_complex(self.weight)  # (2, W, W, m, m)
        out = torch.zeros_like(x_ft)
        out[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :m, :m], wgt[0])
        out[:, :, -m:, :m] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, -m:, :m], wgt[1])
        return torch.fft.irfft2(out, s=(nx, ny))


class FNO2d(nn.Module):
    """Lift, `layers` Fourier layers, project (see the module docstring)."""

    def __init__(self, c_in: int, c_out: int, width: int, modes: int, layers: int) -> None:
        super().__init__()
        self.lift = nn.Conv2d(c_in + 2, width, 1)
        self.spectral = nn.ModuleList(SpectralConv2d(width, modes) for _ in range(layers))
        self.pointwise = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(layers))
        self.project = nn.Sequential(nn.Conv2d(width, 2 * width, 1), nn.GELU(),
                                     nn.Conv2d(2 * width, c_out, 1))

    def forward(self, x: Tensor) -> Tensor:
        """(B, c_in, X, Y) -> (B, c_out, X, Y)."""
        b, _, nx, ny = x.shape
        gx = torch.linspace(0, 1, nx, device=x.device).view(1, 1, nx, 1).expand(b, 1, nx, ny)
        gy = torch.linspace(0, 1, ny, device=x.device).view(1, 1, 1, ny).expand(b, 1, nx, ny)
        h = self.lift(torch.cat([x, gx, gy], dim=1))  # (B, W, X, Y)
        for i, (spec, point) in enumerate(zip(self.spectral, self.pointwise)):
            h = spec(h) + point(h)
            if i < len(self.spectral) - 1:
                h = nn.functional.gelu(h)
        return self.project(h)


class FNOBaseline(_ForecastBaseline):
    """FNO next-step surrogate of a 2-D field, rolled out closed-loop (module docstring)."""

    def __init__(self, state_shape: Sequence[int], n_in: int = 4, width: int = 24,
                 modes: int = 12, layers: int = 4, steps: int = 2000,
                 time_budget: float = 60.0, batch_size: int = 16, lr: float = 3e-3,
                 seed: int = 0) -> None:
        shape = tuple(int(s) for s in state_shape)
        if len(shape) != 3:
            raise InputError(f"FNO baseline: needs a 2-D field (x, y, fields), got state "
                             f"shape {shape}")
        self.state_shape, self.n_in = shape, n_in
        self.width, self.layers, self.steps = width, layers, steps
        self.modes = min(modes, shape[0] // 2, shape[1] // 2 + 1)
        self.time_budget, self.batch_size, self.lr, self.seed = time_budget, batch_size, lr, seed
        self.fit_info: dict[str, Any] = {}

    def _frames(self, x: np.ndarray) -> Tensor:
        """Flattened states (..., T, F) -> scaled frames (..., T, C, X, Y) float32."""
        nx, ny, c = self.state_shape
        z = (np.asarray(x, dtype=np.float64).reshape(*x.shape[:-1], nx, ny, c) - self.mu_)
        z = z / self.sd_
        return torch.from_numpy(np.moveaxis(z, -1, -3).astype(np.float32))

    def _step(self, frames: Tensor) -> Tensor:
        """Next scaled frame (B, C, X, Y) from the last n_in frames (B, n_in, C, X, Y)."""
        b, n, c, nx, ny = frames.shape
        return frames[:, -1] + self.net(frames.reshape(b, n * c, nx, ny))

    def fit(self, train: Sequence[np.ndarray]) -> FNOBaseline:
        """Train on next-step pairs of the training trajectories `train` [(T, F)]."""
        xs = _check_train(train, min_len=self.n_in + 1)
        nx, ny, c = self.state_shape
        self.n_features = nx * ny * c
        if xs[0].shape[1] != self.n_features:
            raise InputError(f"FNO baseline: trajectories have {xs[0].shape[1]} features, the "
                             f"state shape {self.state_shape} has {self.n_features}")
        fields = np.concatenate([x.reshape(-1, c) for x in xs])  # (T * X * Y, C)
        self.mu_, self.sd_ = fields.mean(axis=0), np.maximum(fields.std(axis=0), 1e-12)
        data = [self._frames(x) for x in xs]  # each (T, C, X, Y)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.net = FNO2d(self.n_in * c, c, self.width, self.modes, self.layers)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        starts = [(i, s) for i, x in enumerate(data) for s in range(len(x) - self.n_in)]
        begin, cpu0, done, loss = time.perf_counter(), time.process_time(), 0, float("nan")
        for done in range(1, self.steps + 1):
            pick = rng.integers(0, len(starts), self.batch_size)
            wins = torch.stack([data[i][s:s + self.n_in + 1]
                                for i, s in (starts[k] for k in pick)])  # (B, n_in+1, C, X, Y)
            used = max((done - 1) / self.steps, (time.process_time() - cpu0) / self.time_budget)
            for g in opt.param_groups:  # cosine decay over the steps or the budget
                g["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, used)))
            err = self._step(wins[:, :-1]) - wins[:, -1]
            loss_t = err.pow(2).mean()
            opt.zero_grad()
            loss_t.backward()
            opt.step()
            loss = float(loss_t.detach())
            if time.process_time() - cpu0 > self.time_budget:
                break
        self.fit_info = {"steps": done, "planned_steps": self.steps,
                         "cpu_seconds": round(time.process_time() - cpu0, 1),
                         "cpu_budget": self.time_budget,
                         "seconds": round(time.perf_counter() - begin, 1),
                         "final_lr": opt.param_groups[0]["lr"],
                         "final_train_mse_scaled": loss, "n_in": self.n_in,
                         "width": self.width, "modes": self.modes, "layers": self.layers,
                         "parameters": sum(p.numel() for p in self.net.parameters())}
        return self

    def describe(self) -> dict[str, Any]:
        """What was fitted (for metrics.json)."""
        return dict(self.fit_info)

    @torch.no_grad()
    def predict(self, context: np.ndarray, horizon: int) -> np.ndarray:
        """Closed-loop rollout `(n, horizon, F)` from the last n_in states of each context."""
        ctx = self._check_context(context, horizon, min_len=self.n_in)
        frames = self._frames(ctx[:, -self.n_in:])  # (n, n_in, C, X, Y)
        outs = []
        for _ in range(horizon):
            nxt = self._step(frames)
            outs.append(nxt)
            frames = torch.cat([frames[:, 1:], nxt[:, None]], dim=1)
        pred = torch.stack(outs, dim=1).double().numpy()  # (n, H, C, X, Y)
        pred = np.moveaxis(pred, 2, -1) * self.sd_ + self.mu_  # (n, H, X, Y, C)
        return pred.reshape(len(ctx), horizon, self.n_features)

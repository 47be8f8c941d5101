"""A small Fourier Neural Operator baseline for 2-D fields (Li et al. 2021, ICLR, "Fourier
Neural Operator for Parametric Partial Differential Equations").

The Well (Ohana et al. 2024) reports FNO as its reference surrogate: the last few states in,
the next state out, rolled out autoregressively. `FNOBaseline` is that recipe at a size a CPU
trains in a few minutes, fitted on the TRAINING split of the run only:

    input  (n_in frames x fields + 2 grid coordinates) -> pointwise lift to `width` channels
    L x  [ spectral conv (lowest `modes` x `modes` Fourier modes, complex weights)
           + pointwise linear, GELU between layers ]
    pointwise projection -> next frame - last frame (an increment on persistence, as the
    Transformer's quantile head predicts; both then start from the same anchor), or with
    `n_out` > 1 the next `n_out` frames' increments at once (measured as an anchor and not
    adopted: docs/fields.md)

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
from sciformer.progress import progress_bar


class SpectralConv2d(nn.Module):
    """Multiply the lowest `modes` x `modes` Fourier modes (both signs along x, the
    non-negative ones along y of the real FFT) by learned complex matrices; drop the rest.

    Only those modes are ever used, so the transforms are computed as products with the
    truncated DFT matrices (`_dft`) instead of full FFTs, and the per-mode complex products
    as one batched real matrix product (`_block`): the result equals
    ``irfft2(weights * rfft2(x)[kept modes])`` to float rounding; with `pointwise` the FNO's
    forward is 1.3-3.3x faster on CPU at 64 x 64 than that textbook form
    (`python -m benchmarks.fno_forward`, docs/performance.md)."""

    def __init__(self, width: int, modes: int) -> None:
        super().__init__()
        self.modes = modes
        scale = 1.0 / (width * width)
        shape = (2, width, width, modes, modes, 2)  # (x sign, in, out, kx, ky, re/im)
        self.weight = nn.Parameter(scale * torch.rand(*shape))
        self._mats: dict[tuple, tuple[Tensor, ...]] = {}
        self._kept: tuple[tuple, Tensor] | None = None

    def _dft(self, nx: int, ny: int, device: torch.device, dtype: torch.dtype
             ) -> tuple[Tensor, Tensor, Tensor]:
        """Real matrices of the truncated transforms for an nx x ny grid (cached), each
        applied from the right so that a product is one matrix multiply: along y (Y, 2m)
        -> [re | im] of modes 0..m-1; along x (X, 4m) -> [re | im] of modes 0..m-1 and
        -m..-1 (cos then -sin columns); the inverse along y (2m, Y) from [re ; im], each
        mode weighted as `irfft` counts it (1 for the mean and Nyquist bins, else 2) and by
        1 / (nx ny). The inverse along x is the forward's transpose (cos, +sin)."""
        key = (nx, ny, device, dtype)
        if key not in self._mats:
            m = self.modes
            ky = torch.arange(m, dtype=torch.float64)
            kx = torch.cat([torch.arange(m), torch.arange(nx - m, nx)]).double()
            ang_y = 2 * math.pi * torch.outer(torch.arange(ny, dtype=torch.float64), ky) / ny
            ang_x = 2 * math.pi * torch.outer(torch.arange(nx, dtype=torch.float64), kx) / nx
            count = torch.where((ky == 0) | (2 * ky == ny), 1.0, 2.0).double()[:, None]
            inv_y = torch.cat([count * ang_y.T.cos(), -count * ang_y.T.sin()]) / (nx * ny)
            mats = (torch.cat([ang_y.cos(), -ang_y.sin()], dim=1),
                    torch.cat([ang_x.cos(), -ang_x.sin()], dim=1), inv_y)
            self._mats[key] = tuple(t.to(device=device, dtype=dtype) for t in mats)
        return self._mats[key]

    def _block(self) -> Tensor:
        """The weights as real matrices (ky * kx, 2 W_in, 2 W_out), one per kept mode:
        [[Re, Im], [-Im, Re]], so that [re | im] @ block = [re' | im'] of the complex product.
        Kept between calls while no gradient is recorded and the weights are unchanged
        (inference), rebuilt otherwise."""
        keep = not torch.is_grad_enabled()
        key = (self.weight._version, self.weight.data_ptr(), self.weight.device)
        if keep and self._kept is not None and self._kept[0] == key:
            return self._kept[1]
        m, w = self.modes, self.weight.shape[1]
        wgt = torch.view_as_complex(self.weight).permute(4, 0, 3, 1, 2)  # ky, s, kx, in, out
        wr, wi = wgt.real, wgt.imag
        blk = torch.cat([torch.cat([wr, wi], -1), torch.cat([-wi, wr], -1)], -2)
        blk = blk.reshape(2 * m * m, 2 * w, 2 * w)
        if keep:
            self._kept = (key, blk)
        return blk

    def forward(self, x: Tensor) -> Tensor:
        """(B, W, X, Y) -> (B, W, X, Y)."""
        w, nx, ny = x.shape[1:]
        m = self.modes
        fy, fx, inv_y = self._dft(nx, ny, x.device, x.dtype)
        a = (x @ fy).transpose(-1, -2)  # (B, W, 2m, X): along y, rows [re ; im] of ky
        c = a @ fx  # (B, W, 2m, 4m): [re_y ; im_y] x [cos | -sin] along x
        re = c[:, :, :m, :2 * m] - c[:, :, m:, 2 * m:]  # (B, W, ky, kx)
        im = c[:, :, m:, :2 * m] + c[:, :, :m, 2 * m:]
        # per kept mode, [re | im] (B, 2 W_in) times the real form of its complex weights
        z = torch.cat([re, im], dim=1).permute(2, 3, 0, 1).contiguous()  # (ky, kx, B, 2W)
        # (contiguous: a strided batch would make bmm multiply one matrix at a time)
        z = z.view(2 * m * m, -1, 2 * w)
        out = (z @ self._block()).view(m, 2 * m, -1, 2 * w).permute(2, 3, 0, 1)
        # inverse along x: sum over the kept kx of (re + i im)(cos + i sin)
        both = torch.cat(out.split(w, dim=1), dim=-2)  # (B, W, 2m, 2m): rows [re ; im]
        g = both @ fx.T[:2 * m]  # rows [re cos ; im cos]
        h = both @ fx.T[2 * m:]  # rows [-re sin ; -im sin]
        g_re = g[:, :, :m] + h[:, :, m:]  # re cos - im sin, (B, W, ky, X)
        g_im = g[:, :, m:] - h[:, :, :m]  # im cos + re sin
        return (torch.cat([g_re, g_im], dim=-2).transpose(-1, -2) @ inv_y)


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
        h = pointwise(self.lift, torch.cat([x, gx, gy], dim=1))  # (B, W, X, Y)
        for i, (spec, point) in enumerate(zip(self.spectral, self.pointwise)):
            h = pointwise(point, h, add=spec(h))
            if i < len(self.spectral) - 1:
                h = nn.functional.gelu(h)
        first, act, last = self.project
        return pointwise(last, act(pointwise(first, h)))


def pointwise(conv: nn.Conv2d, x: Tensor, add: Tensor | None = None) -> Tensor:
    """A 1 x 1 convolution `conv` of x (B, C_in, X, Y), plus `add` (B, C_out, X, Y) when
    given, as one batched matrix product: the same result as conv(x) + add, and faster on
    CPU for these few channels (24 -> 24 at 64 x 64, 1 thread: 1.9x at 1 row, 4.6x at 32)."""
    b, c, nx, ny = x.shape
    w = conv.weight.view(conv.out_channels, c).expand(b, -1, -1)
    bias = conv.bias.view(1, -1, 1)
    base = bias.expand(b, -1, nx * ny) if add is None else add.reshape(b, -1, nx * ny) + bias
    return torch.baddbmm(base, w, x.reshape(b, c, nx * ny)).view(b, -1, nx, ny)


class FNOBaseline(_ForecastBaseline):
    """FNO next-step surrogate of a 2-D field, rolled out closed-loop (module docstring)."""

    def __init__(self, state_shape: Sequence[int], n_in: int = 4, width: int = 24,
                 modes: int = 12, layers: int = 4, steps: int = 2000,
                 time_budget: float = 60.0, batch_size: int = 16, lr: float = 3e-3,
                 seed: int = 0, n_out: int = 1) -> None:
        shape = tuple(int(s) for s in state_shape)
        if len(shape) != 3:
            raise InputError(f"FNO baseline: needs a 2-D field (x, y, fields), got state "
                             f"shape {shape}")
        self.state_shape, self.n_in, self.n_out = shape, n_in, n_out
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
        """The next n_out scaled frames (B, n_out, C, X, Y) from the last n_in frames
        (B, n_in, C, X, Y): increments on the last one."""
        b, n, c, nx, ny = frames.shape
        out = self.net(frames.reshape(b, n * c, nx, ny)).view(b, self.n_out, c, nx, ny)
        return frames[:, -1:] + out

    def fit(self, train: Sequence[np.ndarray], progress: bool = False,
            desc: str = "fno baseline") -> FNOBaseline:
        """Train on next-step pairs of the training trajectories `train` [(T, F)]; a progress
        bar (`desc`, steps) on stderr when `progress`."""
        xs = _check_train(train, min_len=self.n_in + self.n_out)
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
        self.net = FNO2d(self.n_in * c, self.n_out * c, self.width, self.modes, self.layers)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        span = self.n_in + self.n_out
        starts = [(i, s) for i, x in enumerate(data) for s in range(len(x) - span + 1)]
        begin, cpu0, done, loss = time.perf_counter(), time.process_time(), 0, float("nan")
        bar = progress_bar(self.steps, desc, "step", progress)
        for done in range(1, self.steps + 1):
            bar.update()
            pick = rng.integers(0, len(starts), self.batch_size)
            wins = torch.stack([data[i][s:s + span]
                                for i, s in (starts[k] for k in pick)])  # (B, span, C, X, Y)
            used = max((done - 1) / self.steps, (time.process_time() - cpu0) / self.time_budget)
            for g in opt.param_groups:  # cosine decay over the steps or the budget
                g["lr"] = self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, used)))
            err = self._step(wins[:, :self.n_in]) - wins[:, self.n_in:]
            loss_t = err.pow(2).mean()
            opt.zero_grad()
            loss_t.backward()
            opt.step()
            loss = float(loss_t.detach())
            if time.process_time() - cpu0 > self.time_budget:
                break
        bar.close()
        self.fit_info = {"steps": done, "planned_steps": self.steps,
                         "cpu_seconds": round(time.process_time() - cpu0, 1),
                         "cpu_budget": self.time_budget,
                         "seconds": round(time.perf_counter() - begin, 1),
                         "final_lr": opt.param_groups[0]["lr"],
                         "final_train_mse_scaled": loss, "n_in": self.n_in,
                         "n_out": self.n_out,
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
        for _ in range(-(-horizon // self.n_out)):
            nxt = self._step(frames)  # (n, n_out, C, X, Y)
            outs.append(nxt)
            frames = torch.cat([frames, nxt], dim=1)[:, -self.n_in:]
        pred = torch.cat(outs, dim=1)[:, :horizon].double().numpy()  # (n, H, C, X, Y)
        pred = np.moveaxis(pred, 2, -1) * self.sd_ + self.mu_  # (n, H, X, Y, C)
        return pred.reshape(len(ctx), horizon, self.n_features)


class AnchorFNOBaseline(_ForecastBaseline):
    """The `fno` baseline of an FNO-anchored run (`data.anchor: fno`): the run's own anchor
    rolled out alone. It was fitted in pretraining with this baseline's recipe and budget on
    the run's training split, so refitting would give the same FNO up to where the CPU timing
    moved its schedule; scoring it shows what the Transformer's corrections add to it."""

    def __init__(self, anchor: Any, loc: Sequence[float], scale: Sequence[float],
                 fit_info: dict[str, Any] | None) -> None:
        self.anchor, self.fit_info = anchor, dict(fit_info or {})
        nx, ny, c = anchor.shape
        self.n_features = nx * ny * c
        self.loc = np.asarray(loc, dtype=np.float64)  # per field
        self.scale = np.asarray(scale, dtype=np.float64)

    @classmethod
    def of_run(cls, fc: Any) -> AnchorFNOBaseline | None:
        """The `fno` baseline a loaded FNO-anchored run (`Forecaster`) brings, else None."""
        from sciformer.model.field_anchor import FNOAnchor  # (imports this module)

        anchor = getattr(fc.model, "anchor", None)
        if not isinstance(anchor, FNOAnchor):
            return None
        return cls(anchor, fc.tokenizer.loc, fc.tokenizer.scale,
                   (fc.state.anchor or {}).get("fit"))

    def fit(self, train: Sequence[np.ndarray]) -> AnchorFNOBaseline:
        """Nothing to fit: the anchor was fitted in pretraining."""
        return self

    def describe(self) -> dict[str, Any]:
        return {"source": "the run's FNO anchor (fitted in pretraining on its training split "
                          "with this baseline's recipe; rolled out alone)", **self.fit_info}

    @torch.no_grad()
    def predict(self, context: np.ndarray, horizon: int) -> np.ndarray:
        """Closed-loop rollout `(n, horizon, F)` from the last n_in states of each context."""
        ctx = self._check_context(context, horizon, min_len=self.anchor.n_in)
        nx, ny, c = self.anchor.shape
        z = (ctx[:, -self.anchor.n_in:].reshape(len(ctx), -1, nx, ny, c) - self.loc) / self.scale
        pred = self.anchor.rollout(torch.from_numpy(z.astype(np.float32)), horizon)
        pred = pred.double().numpy() * self.scale + self.loc  # (n, H, X, Y, C)
        return pred.reshape(len(ctx), horizon, self.n_features)

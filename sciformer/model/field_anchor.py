"""The FNO anchor of a hybrid field forecaster (`data.anchor: fno`).

A field run's decoder predicts the quantiles of time patch j+1 (its S spatial tokens) as
offsets on an anchor computed from its decoder input, time patch j. Without an anchor that is
persistence. With this one it is a Fourier Neural Operator's forecast of the whole next patch:
the FNO (`sciformer.evaluation.fno.FNO2d`, the `fno` baseline's network and recipe) reads
the last `n_in` frames of patch j and is rolled out, `n_out` frames per call (1: the baseline's
next-step recipe), over the `patch_len` frames of patch j+1. It is fitted on the run's
training split before the Transformer trains (`sciformer.tasks.anchors.fit_fno_anchor`) and
frozen; the Transformer then learns a correction and a spread in units of the anchor's own RMS
error per step and field (`scale`), as the NVAR anchor does for whole-state tokens
(`sciformer.model.anchor`).

Training feeds true decoder inputs, so the same training window always gets the same anchor:
in training mode the anchor keeps the patches it computed (`CACHE_ENTRIES` at most, keyed by
their input frames' bytes) instead of rolling the FNO out again; in eval mode (validation,
sample paths) it computes every patch.

Saved among the run's weights as ``anchor.*`` tensors: the FNO's ``anchor.net.*`` weights,
``anchor.mu`` / ``anchor.sd`` (the FNO's per-field standardisation, in token units),
``anchor.scale`` (token_dim,) and ``anchor.geometry`` (grid x, grid y, fields, space_patch,
patch_len, n_in); `from_tensors` rebuilds the module from them (widths from the weight shapes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sciformer.evaluation.fno import FNO2d, FNOBaseline
from sciformer.tokenizers.fields import FieldPatchTokenizer
from sciformer.tokenizers.timeseries import ScaleState

PREFIX = "anchor."
MARKER = "net.lift.weight"  # the tensor that tells an FNO anchor from an NVAR one
SCALE_FLOOR = 1e-6  # smallest offset unit (token units), as the NVAR anchor's
SCALE_WINDOWS = 512  # (patch, next patch) pairs the offset scale is measured on, at most
# rows per FNO call: rolling out 64 x 64 frames on 2 threads costs 3.6-3.9 ms per frame at
# 8, 16 or 32 rows and 3.8-4.3 ms at 4 (`python -m benchmarks.fno_forward`; per-call overheads
# below, activations that leave the caches above)
ROWS = 32
CACHE_BYTES = 2**28  # training-mode cache of computed patches (256 MiB), dropped when full


def is_fno(tensors: dict[str, Tensor]) -> bool:
    """Whether a run's weights hold an FNO anchor."""
    return PREFIX + MARKER in tensors


class FNOAnchor(nn.Module):
    """FNO forecast of each next time patch of a 2-D field from the previous one (module
    docstring). Its weights are frozen: training the Transformer does not move them."""

    def __init__(self, net: FNO2d, geometry: tuple[int, ...], mu: Tensor, sd: Tensor,
                 scale: Tensor | None = None) -> None:
        super().__init__()
        nx, ny, c, p, patch_len, n_in = (int(v) for v in geometry)
        if not 1 <= n_in <= patch_len:
            raise ValueError(f"FNO anchor: n_in {n_in} must be in 1..patch_len {patch_len}")
        self.net = net.requires_grad_(False)
        self.register_buffer("geometry", torch.tensor([nx, ny, c, p, patch_len, n_in]))
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float32).reshape(c).clone())
        self.register_buffer("sd", torch.as_tensor(sd, dtype=torch.float32).reshape(c).clone())
        self.tok = FieldPatchTokenizer(patch_len, (nx, ny, c), p, loc=[0.0] * c,
                                       scale=[1.0] * c)  # folds tokens <-> frames, no scaling
        if scale is not None:
            scale = torch.as_tensor(scale, dtype=torch.float32).clone()
            if scale.shape != (self.tok.token_dim,) or not bool((scale > 0).all()):
                raise ValueError(f"FNO anchor: scale must be {self.tok.token_dim} positive "
                                 f"values, got shape {tuple(scale.shape)}")
        self.register_buffer("scale", scale)
        self.shape, self.n_in, self.patch_len = (nx, ny, c), n_in, patch_len
        self.n_out = net.project[-1].out_channels // c
        self._cache: dict[bytes, Tensor] = {}

    @classmethod
    def from_baseline(cls, fno: FNOBaseline, space_patch: int, patch_len: int) -> FNOAnchor:
        """The anchor of a fitted `FNOBaseline` with n_out = patch_len (trained on token
        units)."""
        if fno.n_in > patch_len:
            raise ValueError(f"FNO anchor: the FNO reads {fno.n_in} frames; a patch has "
                             f"{patch_len}")
        return cls(fno.net, (*fno.state_shape, space_patch, patch_len, fno.n_in),
                   torch.as_tensor(np.asarray(fno.mu_)), torch.as_tensor(np.asarray(fno.sd_)))

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> FNOAnchor | None:
        """The anchor saved among a run's weights, or None if they hold no FNO anchor.
        ValueError if its tensors are incomplete or inconsistent."""
        found = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
        if MARKER not in found:
            return None
        try:
            geometry = [int(v) for v in found["geometry"]]
            lift = found["net.lift.weight"]  # (width, c_in + 2, 1, 1)
            layers = sum(1 for k in found if k.startswith("net.spectral.") and
                         k.endswith(".weight"))
            modes = found["net.spectral.0.weight"].shape[-2]
            c_out = found["net.project.2.weight"].shape[0]
            net = FNO2d(lift.shape[1] - 2, c_out, lift.shape[0], modes, layers)
            net.load_state_dict({k[4:]: v for k, v in found.items() if k.startswith("net.")})
            return cls(net, tuple(geometry), found["mu"], found["sd"], found.get("scale"))
        except (KeyError, IndexError, RuntimeError) as exc:
            raise ValueError(f"FNO anchor: tensors incomplete or inconsistent ({exc})") from None

    def rollout(self, frames: Tensor, steps: int) -> Tensor:
        """The next `steps` frames (R, steps, X, Y, C) after frames (R, >= n_in, X, Y, C), in
        token units, float32: the FNO rolled out closed-loop, n_out frames per call, on
        `ROWS` rows at a time."""
        if len(frames) > ROWS:
            return torch.cat([self.rollout(frames[i:i + ROWS], steps)
                              for i in range(0, len(frames), ROWS)])
        nx, ny, c = self.shape
        z = (frames[:, -self.n_in:].float() - self.mu) / self.sd  # (R, n_in, X, Y, C)
        z = z.permute(0, 1, 4, 2, 3)  # (R, n_in, C, X, Y)
        r, outs = z.shape[0], []
        for _ in range(-(-steps // self.n_out)):
            inc = self.net(z.reshape(r, self.n_in * c, nx, ny)).view(r, self.n_out, c, nx, ny)
            outs.append(z[:, -1:] + inc)
            z = torch.cat([z, outs[-1]], dim=1)[:, -self.n_in:]
        nxt = torch.cat(outs, dim=1)[:, :steps]
        return nxt.permute(0, 1, 3, 4, 2) * self.sd + self.mu  # (R, steps, X, Y, C)

    def frames_forecast(self, frames: Tensor) -> Tensor:
        """The next patch (R, patch_len, X, Y, C) after frames (R, >= n_in, X, Y, C)."""
        return self.rollout(frames, self.patch_len)

    def _cached_forecast(self, frames: Tensor) -> Tensor:
        """`frames_forecast`, from the training-mode cache where these input frames were
        seen before (see the module docstring)."""
        if not self.training:
            return self.frames_forecast(frames)
        inp = frames[:, -self.n_in:].detach().float().cpu().contiguous().numpy()
        keys = [row.tobytes() for row in inp]
        got = {k: self._cache[k] for k in keys if k in self._cache}
        todo = [i for i, k in enumerate(keys) if k not in got]
        if todo:
            out = self.frames_forecast(frames[todo])
            new = {keys[i]: v for i, v in zip(todo, out)}
            per = out[0].numel() * out.element_size()  # bytes of one patch
            if (len(self._cache) + len(new)) * per > CACHE_BYTES:
                self._cache.clear()  # (this batch's entries are in `got` and `new`)
            self._cache.update(new)
            got.update(new)
        return torch.stack([got[k] for k in keys]).to(frames.device)

    def _unit(self, b: int, like: Tensor) -> ScaleState:
        n = self.tok.n_features
        one = torch.ones(b, 1, n, dtype=like.dtype, device=like.device)
        return ScaleState(one * 0, one, n, "joint")

    def forward(self, dec_in: Tensor, patch_len: int) -> Tensor:
        """The anchor (B', N * S, token_dim) of the time patch after each decoder-input time
        patch (B', N * S, token_dim), in token units."""
        if patch_len != self.patch_len:
            raise ValueError(f"FNO anchor: fitted for patches of {self.patch_len} steps, "
                             f"asked for {patch_len}")
        b, n_tok, _ = dec_in.shape
        with torch.autocast(dec_in.device.type, enabled=False):  # float32 whatever the step
            x = dec_in.float()
            vals = self.tok.decode(x, self._unit(b, x))  # (B', N * L, F) token units
            n = n_tok // self.tok.space_tokens
            frames = vals.view(b * n, self.patch_len, *self.shape)
            nxt = self._cached_forecast(frames).reshape(b, n * self.patch_len, -1)
            out = self.tok.encode(nxt, self._unit(b, nxt))
        return out.to(dec_in.dtype)

    @torch.no_grad()
    def fit_scale(self, trajectories: list[np.ndarray]) -> Tensor:
        """Set and return `scale` (token_dim,): the RMS error of this anchor's forecast of a
        patch from the true previous patch, per step and field (the same for every grid point
        of a token), over at most `SCALE_WINDOWS` evenly spaced pairs of `trajectories`
        ((T, F) arrays in token units, the training split), floored at `SCALE_FLOOR`."""
        from sciformer.evaluation.chaos_baselines import selection_windows

        L = self.patch_len
        pairs = selection_windows(trajectories, 2 * L, SCALE_WINDOWS)
        if len(pairs) == 0:
            raise ValueError(f"FNO anchor: no trajectory holds two patches of {L} steps")
        sq = torch.zeros(L, self.shape[2], dtype=torch.float64)
        for i in range(0, len(pairs), 32):
            both = torch.as_tensor(pairs[i:i + 32], dtype=torch.float32)
            both = both.view(len(both), 2 * L, *self.shape)
            err = self.frames_forecast(both[:, :L]) - both[:, L:]  # (R, L, X, Y, C)
            sq += err.double().pow(2).sum(dim=(0, 2, 3))
        rms = (sq / (len(pairs) * self.shape[0] * self.shape[1])).sqrt().clamp_min(SCALE_FLOOR)
        p, d = self.tok.space_patch, len(self.tok.grid)
        per = rms.float().view(L, *([1] * d), self.shape[2]).expand(L, *([p] * d), -1)
        self.scale = per.reshape(-1).contiguous()  # token layout (time, patch axes, field)
        return self.scale

    def describe(self) -> dict[str, Any]:
        """What the anchor is (for the run's provenance)."""
        nx, ny, c = self.shape
        return {"kind": "fno", "grid": [nx, ny], "fields": c, "n_in": self.n_in,
                "n_out": self.n_out, "patch_len": self.patch_len,
                "parameters": sum(p.numel() for p in self.net.parameters())}

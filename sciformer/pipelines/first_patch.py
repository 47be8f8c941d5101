"""A linear correction of the first forecast patch from the observed context (model output
statistics).

The first patch of every forecast is predicted from observed states alone, so its error can
be regressed on them, as weather services correct a model's output by regression on what was
observed (model output statistics, Glahn & Lowry, J. Appl. Meteor. 11:1203, 1972). For a hybrid
run (`data.anchor: nvar`) the predictors are the NVAR anchor's features of the context's last
states (its delayed states and their quadratic monomials, in its standardised units), and the
targets the truth minus the model's median of the first patch, per step and feature (token
units): a ridge regression fitted on windows of the training trajectories, with one ridge
strength per step of the patch chosen on windows of the validation trajectories (no correction
at a step where none lowers the validation error).

`sample_paths` shifts every path's first patch by the correction (the spread is the model's),
so later patches continue from corrected states. Only the first patch: later inputs are the
model's own draws, and a high-gain regression fed with them amplifies their noise (an NVAR
anchor corrected this way at every patch gained 10x at lead 1 on clean inputs, but its sampled
KS paths diverged).

Stored as ``first_patch.safetensors`` in the run directory (``coef`` (n_features,
patch_len F) and ``bias`` (patch_len F,), float32; what was chosen in its metadata).
`sciformer calibrate` refits it before the spread factors; `pretrain` does both at its end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from sciformer.errors import InputError, first_line
from sciformer.io.atomic import atomic_path

FILE = "first_patch.safetensors"
FIT_WINDOWS, CHOICE_WINDOWS = 4096, 1024  # training / validation windows, at most


def anchor_features(model: Any, tok: Any, context: np.ndarray) -> np.ndarray:
    """The NVAR anchor's features (N, k F + n_quad) of the last states of contexts (N, C, F)
    given in data units (float64)."""
    loc, scale = np.asarray(tok.loc, np.float64), np.asarray(tok.scale, np.float64)
    a = model.anchor
    return a.features((np.asarray(context[:, -a.span:], np.float64) - loc) / scale)


class FirstPatchCorrection:
    """A fitted correction (see the module docstring): `shift` of contexts."""

    def __init__(self, coef: np.ndarray, bias: np.ndarray, about: dict[str, Any]) -> None:
        self.coef = np.asarray(coef, dtype=np.float64)
        self.bias = np.asarray(bias, dtype=np.float64)
        if self.coef.ndim != 2 or self.bias.shape != (self.coef.shape[1],):
            raise ValueError(f"first-patch correction: coef {self.coef.shape} and bias "
                             f"{self.bias.shape} do not match")
        self.about = about

    def shift(self, model: Any, tok: Any, context: np.ndarray) -> np.ndarray:
        """The correction (N, patch_len, F) in data units of contexts (N, C, F)."""
        x = anchor_features(model, tok, context)
        f = context.shape[2]
        if x.shape[1] != self.coef.shape[0] or self.coef.shape[1] % f:
            raise InputError(f"{FILE}: fitted on {self.coef.shape[0]} predictors and "
                             f"{self.coef.shape[1]} outputs; this run's anchor gives "
                             f"{x.shape[1]} and states have {f} features")
        fix = (x @ self.coef + self.bias).reshape(len(context), -1, f)
        return fix * np.asarray(tok.scale, np.float64)

    def save(self, run_dir: str | Path) -> Path:
        """Write ``first_patch.safetensors`` into `run_dir` (atomically)."""
        path = Path(run_dir) / FILE
        tensors = {"coef": self.coef.astype(np.float32), "bias": self.bias.astype(np.float32)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"about": json.dumps(self.about)})
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> FirstPatchCorrection | None:
        """The run's correction, or None when it has none."""
        path = Path(run_dir) / FILE
        if not path.exists():
            return None
        try:
            with safe_open(str(path), "np") as fh:
                coef, bias = fh.get_tensor("coef"), fh.get_tensor("bias")
                about = json.loads((fh.metadata() or {}).get("about", "{}"))
            return cls(coef, bias, about)
        except Exception as exc:  # noqa: BLE001 -- safetensors raises its own error types
            raise InputError(f"{path}: unreadable first-patch correction "
                             f"({first_line(exc)})") from None


def fit_first_patch(model: Any, tok: Any, median: Any, fit: tuple[np.ndarray, np.ndarray],
                    choose: tuple[np.ndarray, np.ndarray]) -> FirstPatchCorrection | None:
    """Fit the correction on (contexts (N, C, F), first patches (N, patch_len, F)) `fit`,
    choosing each step's ridge strength on `choose`; `median(contexts)` is the model's
    median first patch (N, patch_len, F). None when no step gains on `choose`."""
    from sciformer.evaluation.baselines import _moments, _ridge_solve
    from sciformer.evaluation.chaos_baselines import NVAR_ALPHAS

    scale = np.asarray(tok.scale, np.float64)

    def rows(ctx: np.ndarray, fut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        resid = (np.asarray(fut, np.float64) - median(ctx)) / scale  # token units
        return anchor_features(model, tok, ctx), resid.reshape(len(ctx), -1)

    steps, f = fit[1].shape[1], fit[1].shape[2]
    mom = _moments(*rows(*fit))
    xv, rv = rows(*choose)
    best = (rv**2).reshape(len(rv), steps, f).mean(axis=(0, 2))  # no correction
    before, alpha, sols = best.copy(), [None] * steps, {}
    for a in NVAR_ALPHAS:
        sol = _ridge_solve(mom, float(a))
        if sol is None:
            continue
        mse = ((xv @ sol[0] + sol[1] - rv) ** 2).reshape(len(rv), steps, f).mean(axis=(0, 2))
        better = np.flatnonzero(mse < best)
        if len(better):
            sols[float(a)] = sol
        for s in better:
            best[s], alpha[s] = mse[s], float(a)
    if all(a is None for a in alpha):
        return None
    coef, bias = np.zeros_like(mom[4]), np.zeros(steps * f)
    for s, a in enumerate(alpha):
        if a is not None:
            cols = slice(s * f, (s + 1) * f)
            coef[:, cols], bias[cols] = sols[a][0][:, cols], sols[a][1][cols]
    about = {"ridge_per_step": alpha, "fit_windows": len(fit[0]),
             "choice_windows": len(choose[0]),
             "choice_rmse_before": [float(f"{v:.4g}") for v in np.sqrt(before)],
             "choice_rmse_after": [float(f"{v:.4g}") for v in np.sqrt(best)],
             "unit": "token units (training-scaled); RMS over windows and features"}
    return FirstPatchCorrection(coef, bias, about)

"""Classic baselines every report compares the model against.

Forecasting: `Persistence` (tomorrow = today), `ClimatologyMean` (the training mean) and
`RidgeAR` (a linear autoregression on lagged full states, rolled out closed-loop). Each has
`fit(train) -> self` with `train` a list of `(T, F)` training trajectories and
`predict(context (n, C, F), horizon) -> (n, horizon, F)`. Masked residues: `unigram_baseline`
(the training residue frequencies).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.linalg
from numpy.lib.stride_tricks import sliding_window_view

from sciformer.errors import InputError


def _check_train(train: Sequence[np.ndarray], min_len: int = 1) -> list[np.ndarray]:
    """Training trajectories as float64 `(T, F)` arrays with one F and T >= `min_len`."""
    if len(train) == 0:
        raise InputError("no training trajectories given to fit the baseline")
    out = [np.asarray(x, dtype=np.float64) for x in train]
    n_feat = out[0].shape[-1] if out[0].ndim == 2 else None
    for i, x in enumerate(out):
        if x.ndim != 2 or x.shape[1] != n_feat:
            raise InputError(f"training trajectory {i}: shape {x.shape}, expected (T, {n_feat})")
        if x.shape[0] < min_len:
            raise InputError(f"training trajectory {i}: {x.shape[0]} time steps, the baseline "
                             f"needs at least {min_len}")
        if not np.all(np.isfinite(x)):
            raise InputError(f"training trajectory {i}: contains NaN or infinite values")
    return out


class _ForecastBaseline:
    """Shared input checks: remembers F at fit time and validates contexts against it."""

    n_features: int | None = None

    def _check_context(self, context: np.ndarray, horizon: int, min_len: int = 1) -> np.ndarray:
        """The context as float64 `(n, C, F)` with C >= `min_len`; the model must be fitted."""
        if self.n_features is None:
            raise RuntimeError(f"{type(self).__name__}.predict called before fit")
        c = np.asarray(context, dtype=np.float64)
        if c.ndim != 3 or c.shape[2] != self.n_features or c.shape[1] < min_len:
            raise ValueError(f"{type(self).__name__}: context must be (n, C >= {min_len}, "
                             f"{self.n_features}), got {c.shape}")
        if horizon < 1:
            raise ValueError(f"forecast horizon must be >= 1, got {horizon}")
        return c


class Persistence(_ForecastBaseline):
    """Repeat the last context state for every future step (the 'no change' forecast)."""

    def fit(self, train: Sequence[np.ndarray]) -> Persistence:
        """Nothing to learn; records the number of features."""
        self.n_features = _check_train(train)[0].shape[1]
        return self

    def predict(self, context: np.ndarray, horizon: int) -> np.ndarray:
        """`(n, horizon, F)`: the last context state repeated."""
        c = self._check_context(context, horizon)
        return np.repeat(c[:, -1:, :], horizon, axis=1)


class ClimatologyMean(_ForecastBaseline):
    """Predict the per-feature mean of all training states, whatever the context."""

    def fit(self, train: Sequence[np.ndarray]) -> ClimatologyMean:
        """Mean over every time step of every training trajectory (each step weighs the same)."""
        xs = _check_train(train)
        self.n_features = xs[0].shape[1]
        self.mean_ = sum(x.sum(axis=0) for x in xs) / sum(len(x) for x in xs)
        return self

    def predict(self, context: np.ndarray, horizon: int) -> np.ndarray:
        """`(n, horizon, F)` filled with the training mean."""
        c = self._check_context(context, horizon)
        return np.broadcast_to(self.mean_, (c.shape[0], horizon, self.n_features)).copy()


class RidgeAR(_ForecastBaseline):
    """Linear autoregression x_{t+1} = f(x_t, ..., x_{t-lags+1}) by ridge regression.

    Features are the `lags` most recent full states, standardised with training statistics;
    the intercept is not penalised. Two targets are tried, the next state and the increment
    x_{t+1} - x_t; the same penalty then shrinks either towards zero or towards persistence.
    The (target, alpha) pair on the log grid `alphas` (default 1e-6..1e6, 13 values; an alpha
    far above the number of windows leaves the mean or persistence) with the lowest one-step
    mean squared error (in state units, so the two targets compare) on a time-blocked
    validation set -- the last `val_fraction` of the windows of every training trajectory --
    wins. Blocked, because
    neighbouring windows of a trajectory are nearly identical, which makes leave-one-out
    (RidgeCV's GCV) choose too little penalty for a closed-loop rollout. The chosen model is
    then refitted on all windows. The estimator is scikit-learn's `Ridge` (tests check equal
    weights), solved like `Ridge(solver="cholesky")` from the normal equations, but with
    X^T X formed once and reused over the grid and the refit: RidgeCV took ~60 s on 20000
    windows x 2048 features (F=256, lags=8) on 2 cores, this ~12 s of one core (5 s at lags=4).
    Beyond `max_rows` windows a random subset (seeded by `seed`) is used. Fit on the training
    split only; `predict` rolls out closed-loop for any horizon.
    """

    def __init__(self, lags: int = 4, alphas: Sequence[float] | None = None,
                 max_rows: int = 20_000, val_fraction: float = 0.2, seed: int = 0) -> None:
        if lags < 1 or max_rows < 2 or not 0 < val_fraction < 1:
            raise ValueError(f"RidgeAR needs lags >= 1, max_rows >= 2, 0 < val_fraction < 1; "
                             f"got {lags}, {max_rows}, {val_fraction}")
        self.lags = lags
        self.alphas = np.logspace(-6, 6, 13) if alphas is None else np.asarray(alphas, float)
        self.max_rows, self.val_fraction, self.seed = max_rows, val_fraction, seed

    def _windows(self, xs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, int]:
        """Lagged features `(N, lags * F)` (oldest state first), next states `(N, F)`, and the
        number of fitting rows, which come first (the validation rows follow).

        Rows are chosen before they are built, so a subsample never materialises all windows.
        """
        pairs, val = [], []
        for i, x in enumerate(xs):
            n_win = len(x) - self.lags
            n_val = min(math.ceil(self.val_fraction * n_win), n_win - 1)
            pairs.append(np.stack([np.full(n_win, i), np.arange(self.lags, len(x))], axis=1))
            val.append(np.arange(n_win) >= n_win - n_val)
        pair, is_val = np.concatenate(pairs), np.concatenate(val)
        if len(pair) > self.max_rows:
            keep = np.sort(np.random.default_rng(self.seed).choice(len(pair), self.max_rows,
                                                                   replace=False))
            pair, is_val = pair[keep], is_val[keep]
        order = np.argsort(is_val, kind="stable")  # fitting rows first
        pair, n_fit = pair[order], int((~is_val).sum())
        feats = np.empty((len(pair), self.lags * self.n_features))
        targets = np.empty((len(pair), self.n_features))
        for i in np.unique(pair[:, 0]):
            rows = np.flatnonzero(pair[:, 0] == i)
            t = pair[rows, 1]
            win = sliding_window_view(xs[i], self.lags, axis=0)  # (T-lags+1, F, lags)
            feats[rows] = win[t - self.lags].transpose(0, 2, 1).reshape(len(rows), -1)
            targets[rows] = xs[i][t]
        return feats, targets, n_fit

    def _select(self, x: np.ndarray, ys: np.ndarray, n_fit: int) -> tuple[float, str, tuple]:
        """Grid-search alpha and target on the validation rows; returns them and the moments
        of all rows for the refit. `ys` is `(N, 2F)`: increment targets, then state targets."""
        if n_fit < 2 or n_fit == len(x):  # too few windows to hold any out: select on all
            n_fit = len(x)
            fit_mom = _moments(x, ys)
            xv, yv = x, ys
        else:
            fit_mom = _moments(x[:n_fit], ys[:n_fit])
            xv, yv = x[n_fit:], ys[n_fit:]
        f = self.n_features
        best: tuple[float, float, str] = (np.inf, float(self.alphas[-1]), "increment")
        for alpha in self.alphas:
            sol = _ridge_solve(fit_mom, float(alpha))
            if sol is None:  # too little penalty for an ill-conditioned X^T X
                continue
            res = xv @ sol[0] + sol[1] - yv  # residuals equal in increment and state units
            for name, block in (("increment", res[:, :f]), ("state", res[:, f:])):
                mse = float(np.mean(block**2))
                if mse < best[0]:
                    best = (mse, float(alpha), name)
        self.val_mse_ = best[0]
        all_mom = fit_mom if n_fit == len(x) else _add(fit_mom, _moments(xv, yv))
        return best[1], best[2], all_mom

    def fit(self, train: Sequence[np.ndarray]) -> RidgeAR:
        """Choose target and alpha on the blocked validation windows, then refit on all."""
        xs = _check_train(train, min_len=self.lags + 1)
        f = self.n_features = xs[0].shape[1]
        x, y, n_fit = self._windows(xs)
        ys = np.concatenate([y - x[:, -f:], y], axis=1)  # (N, 2F); x[:, -f:] is x_t
        mu, sd = x.mean(axis=0), _safe_std(x)
        x -= mu  # standardise in place: the design matrix is the largest array here
        x /= sd
        self.alpha_, self.target_, mom = self._select(x, ys, n_fit)
        sol = _ridge_solve(mom, self.alpha_)
        if sol is None:
            raise np.linalg.LinAlgError(f"ridge normal equations singular at alpha={self.alpha_}")
        cols = slice(0, f) if self.target_ == "increment" else slice(f, 2 * f)
        w, b = sol[0][:, cols], sol[1][cols]
        # fold the standardisation into raw-unit weights: ((x - mu) / sd) @ w + b
        self.coef_ = w / sd[:, None]  # (lags * F, F)
        self.intercept_ = b - (mu / sd) @ w
        self.n_rows_ = len(x)
        lo, hi = np.min([a.min(axis=0) for a in xs], 0), np.max([a.max(axis=0) for a in xs], 0)
        span = float(np.max(hi - lo)) or 1.0
        self.bounds_ = (lo - 10 * span, hi + 10 * span)
        return self

    def predict(self, context: np.ndarray, horizon: int) -> np.ndarray:
        """Closed-loop rollout `(n, horizon, F)`: each prediction becomes the newest lag.

        States are clipped to ten training spans outside the training range, so a diverging
        linear model scores a large but finite error instead of overflowing to inf/NaN.
        """
        c = self._check_context(context, horizon, min_len=self.lags)
        buf = c[:, -self.lags:, :].copy()  # (n, lags, F), oldest first
        out = np.empty((c.shape[0], horizon, self.n_features))
        for h in range(horizon):
            step = buf.reshape(len(buf), -1) @ self.coef_ + self.intercept_
            nxt = buf[:, -1] + step if self.target_ == "increment" else step
            out[:, h] = np.clip(nxt, *self.bounds_)
            buf = np.concatenate([buf[:, 1:], out[:, h:h + 1]], axis=1)
        return out


def _moments(x: np.ndarray, y: np.ndarray) -> tuple:
    """Sufficient statistics of least squares: n, sum x, sum y, X^T X, X^T Y (uncentred)."""
    return len(x), x.sum(axis=0), y.sum(axis=0), x.T @ x, x.T @ y


def _add(a: tuple, b: tuple) -> tuple:
    """Moments of the union of two row sets."""
    return tuple(u + v for u, v in zip(a, b))


def _ridge_solve(mom: tuple, alpha: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Ridge weights and intercept from moments, or None if the system is not positive definite.

    Centring the moments removes the intercept from the penalty (as scikit-learn does):
    W = (Xc^T Xc + alpha I)^-1 Xc^T Yc with Xc^T Xc = X^T X - n mx mx^T; b = my - mx W.
    """
    n, sx, sy, xtx, xty = mom
    mx, my = sx / n, sy / n
    gram = xtx - n * np.outer(mx, mx)
    gram[np.diag_indices_from(gram)] += alpha
    try:
        factor = scipy.linalg.cho_factor(gram, overwrite_a=True)
    except np.linalg.LinAlgError:
        return None
    w = scipy.linalg.cho_solve(factor, xty - n * np.outer(mx, my))
    return w, my - mx @ w


def _safe_std(x: np.ndarray) -> np.ndarray:
    """Column standard deviations with constant columns given scale 1 (no division by 0)."""
    sd = x.std(axis=0)
    return np.where(sd > 0, sd, 1.0)


#: Forecast baselines by the name used in metrics.json.
BASELINES: dict[str, type] = {"persistence": Persistence, "mean": ClimatologyMean,
                              "ridge_ar": RidgeAR}

#: Ids of the ESM-2 alphabet that can sit at a residue position: <unk> (3) and the residue and
#: gap letters L..- (4..30); <cls> <pad> <eos> before and <null_1> <mask> after cannot.
ESM_RESIDUE_IDS = np.arange(3, 31)


def unigram_baseline(train_counts: np.ndarray, true_ids: np.ndarray,
                     residue_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """Masked-residue baseline that ignores context: p(id) = training residue frequency.

    Add-one (Laplace) smoothing over `residue_ids` only -- by default the ESM residue-position
    ids for a 33-token vocabulary, every id otherwise -- so p = (count + 1) / (total + |R|) on
    those ids and 0 on special tokens. Returns `masked_metrics`' keys: perplexity
    exp(-mean log p(true)) and accuracy of always guessing the most frequent residue.
    """
    counts = np.asarray(train_counts, dtype=np.float64).ravel()
    true = np.asarray(true_ids).ravel().astype(np.int64)
    if residue_ids is None:
        residue_ids = ESM_RESIDUE_IDS if len(counts) == 33 else np.arange(len(counts))
    r = np.asarray(residue_ids, dtype=np.int64)
    if np.any(counts < 0) or r.min(initial=0) < 0 or r.max(initial=0) >= len(counts):
        raise ValueError(f"counts must be >= 0 and residue ids within 0..{len(counts) - 1}")
    p = np.zeros_like(counts)
    p[r] = (counts[r] + 1.0) / (counts[r].sum() + len(r))
    if true.size == 0:
        return {"perplexity": None, "accuracy": None, "n_masked": 0}
    outside = true[(true < 0) | (true >= len(p))]
    if outside.size or np.any(p[true] == 0):
        bad = outside[0] if outside.size else true[p[true] == 0][0]
        raise ValueError(f"true id {bad} is not one of the residue ids the unigram covers")
    guess = r[np.argmax(counts[r])]
    return {"perplexity": float(np.exp(-np.log(p[true]).mean())),
            "accuracy": float(np.mean(true == guess)), "n_masked": int(true.size)}

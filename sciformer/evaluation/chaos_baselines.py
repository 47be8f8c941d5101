"""The two baselines the chaotic-forecasting literature treats as the bar for a learned model.

- `Parroting`: context parroting (Zhang & Gilpin, "Context parroting: a simple but tough-to-beat
  baseline for foundation models in scientific machine learning", ICLR 2026). Find in the
  context the stretch that best matches its last m steps and copy what followed it.
- `NVAR`: next-generation reservoir computing (Gauthier, Bollt, Griffith & Barbosa, Nat.
  Commun. 12:5564, 2021). A nonlinear vector autoregression: constant, linear and quadratic
  monomials of k delayed states, a ridge readout for the next increment, closed-loop rollout.

Both share the interface of `sciformer.evaluation.baselines` (`fit(train) -> self`,
`predict(context (n, C, F), horizon) -> (n, horizon, F)`) and take their hyper-parameters from
the TRAINING trajectories only. `ALL_BASELINES` is every forecast baseline by metrics.json name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sciformer.evaluation.baselines import (
    BASELINES,
    _add,
    _check_train,
    _ForecastBaseline,
    _moments,
    _ridge_solve,
    _safe_std,
)
from sciformer.model.anchor import delay_features

MAX_SELECTION_WINDOWS = 256  # training windows on which a hyper-parameter is chosen
#: NVAR's closed-loop validation: windows and steps per (k, alpha) candidate. Rollouts of a
#: 64-point field cost ~50 MFLOP a step per 256 windows, so these bound the fit to a minute.
#: 384 steps, not 128: on Kuramoto-Sivashinsky a fit just inside the stability edge stayed
#: bounded for 128 validation steps and diverged after ~200 (fitted on 32,000 rows); over 384
#: it is seen to diverge.
NVAR_VALIDATION_WINDOWS, NVAR_VALIDATION_STEPS = 64, 384
#: NVAR's long-run stability check of the chosen refit (`NVAR._stays_bounded`): starts, steps.
#: At most this many best-ranked fits are checked (then the best-ranked one is used, flagged):
#: a fit on one short context (`context_baselines`) can pass validation at every ridge and
#: fail every long run, each of which costs seconds on a 64-point field.
NVAR_STABILITY_STARTS, NVAR_STABILITY_STEPS, NVAR_STABILITY_TRIES = 256, 500, 4
#: NVAR's default ridge grid: half decades, 1e-8..1e2. The stable fits of a chaotic system
#: start at a sharp edge in alpha (KS: 3e-2), and the short-lead error grows with alpha
#: above it, so a coarser grid lands far above the edge (KS: 1, with 1.8x the held-out
#: lead-1 error of the 0.1 chosen on the half-decade grid).
NVAR_ALPHAS = np.logspace(-8, 2, 21)
#: Above this many state features the dense baselines (ridge AR on lagged states, NVAR's
#: quadratic monomials, parroting) are skipped, and no NVAR anchor is fitted: their normal
#: equations grow as F^2 (F^4 for NVAR) -- a 64 x 64 field has F = 4096 -- and they are not
#: what field surrogates are compared with; persistence, the mean and (2-D fields) the FNO
#: stand in.
MAX_DENSE_FEATURES = 1024


def selection_windows(xs: list[np.ndarray], length: int, max_windows: int) -> np.ndarray:
    """Windows `(N, length, F)` with evenly spaced starts over every trajectory of `xs` that is
    at least `length` long, at most `max_windows` in all (deterministic)."""
    usable = [x for x in xs if len(x) >= length]
    per = max(1, max_windows // max(1, len(usable)))
    wins = [x[s:s + length] for x in usable
            for s in np.unique(np.linspace(0, len(x) - length, per).round().astype(int))]
    return np.stack(wins[:max_windows]) if wins else np.empty((0, length, xs[0].shape[1]))


def parrot(context: np.ndarray, m: int, horizon: int, min_shift: int = 1) -> np.ndarray:
    """Context parroting of `(n, C, F)` contexts with motif length m: `(n, horizon, F)`.

    The motif is the last m states. Every earlier stretch c[j-m:j] shifted back by at least
    `min_shift` steps (j = m..C-min_shift; needs m + min_shift <= C) is compared by the
    squared Euclidean distance over all m states and features; the most recent best match j
    wins, and the forecast is c[j], c[j+1], ..., c[C-1], repeated from c[j] when the horizon
    runs past the context's end -- so a signal of period p (any j = C - k p matches exactly)
    is continued exactly. `min_shift` is a Theiler window (Theiler 1986, Phys. Rev. A 34:2427):
    on a finely sampled trajectory the motif shifted by one step is always a close match,
    and copying it is persistence, not an analogue.
    """
    n, c, _ = context.shape
    n_cand = c - m - min_shift + 1
    if m < 1 or n_cand < 1:
        raise ValueError(f"parroting needs motif length m >= 1 and m + min_shift <= C; got "
                         f"m={m}, min_shift={min_shift}, C={c}")
    dist = np.zeros((n, n_cand))  # entry i is the stretch ending before j = i + m
    for k in range(m):  # one motif step at a time: memory O(n C F), not O(n C m F)
        dist += ((context[:, k:k + n_cand] - context[:, c - m + k][:, None]) ** 2).sum(axis=-1)
    j = m + n_cand - 1 - np.argmin(dist[:, ::-1], axis=1)  # (n,) most recent minimum
    period = c - j
    idx = j[:, None] + np.arange(horizon)[None, :] % period[:, None]  # (n, horizon)
    return np.take_along_axis(context, idx[:, :, None], axis=1)


class Parroting(_ForecastBaseline):
    """Context parroting (Zhang & Gilpin, ICLR 2026): copy the continuation of the context's
    best match to its last m steps (`parrot`).

    m (from `motif_lengths`) and the smallest shift of a match (`min_shifts`, a Theiler
    window; see `parrot`) are chosen, among the pairs that fit the context, by the mean
    squared error, each feature divided by its training std, of forecasts of `horizon` steps
    from contexts of `context` steps cut from the training trajectories (evenly spaced
    windows, `MAX_SELECTION_WINDOWS` at most); the method itself learns nothing else.
    Contexts and horizon shrink to fit short training trajectories.
    """

    def __init__(self, context: int = 64, horizon: int = 32,
                 motif_lengths: Sequence[int] = (1, 2, 3, 5, 8, 13, 21),
                 min_shifts: Sequence[int] = (1, 2, 4, 8, 16, 32)) -> None:
        if context < 2 or horizon < 1 or min(motif_lengths) < 1 or min(min_shifts) < 1:
            raise ValueError(f"Parroting needs context >= 2, horizon >= 1, motif lengths and "
                             f"shifts >= 1; got {context}, {horizon}, {list(motif_lengths)}, "
                             f"{list(min_shifts)}")
        self.context, self.horizon = context, horizon
        self.motif_lengths = sorted(set(int(m) for m in motif_lengths))
        self.min_shifts = sorted(set(int(w) for w in min_shifts))

    def fit(self, train: Sequence[np.ndarray]) -> Parroting:
        """Choose the motif length m and the smallest shift on training windows."""
        xs = _check_train(train, min_len=3)
        self.n_features = xs[0].shape[1]
        longest = max(len(x) for x in xs)
        c = min(self.context, longest - 1)
        h = min(self.horizon, longest - c)
        wins = selection_windows(xs, c + h, MAX_SELECTION_WINDOWS)
        sd = _safe_std(np.concatenate(xs))
        grid = [(m, w) for m in self.motif_lengths for w in self.min_shifts if m + w <= c]
        errors = {mw: float(np.mean(((parrot(wins[:, :c], mw[0], h, mw[1]) - wins[:, c:]) / sd)
                                    ** 2))
                  for mw in grid or [(1, 1)]}
        self.selection_mse_ = errors
        self.m_, self.min_shift_ = min(errors, key=errors.get)
        return self

    def predict(self, context: np.ndarray, horizon: int) -> np.ndarray:
        """`(n, horizon, F)`: the continuation of the best match (m and the shift shrink to
        fit a context shorter than the one they were chosen for)."""
        c = self._check_context(context, horizon, min_len=2)
        m = min(self.m_, c.shape[1] - 1)
        return parrot(c, m, horizon, min(self.min_shift_, c.shape[1] - m))

    def describe(self) -> dict[str, Any]:
        """The chosen motif length and smallest shift, for metrics.json."""
        return {"motif_length": self.m_, "min_shift": self.min_shift_}


def quadratic_pairs(k: int, n_feat: int, budget: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Indices (a, b), a <= b, into the linear features [x_t, x_{t-s}, ...] (k * F, newest
    first) whose products are the quadratic features, at most `budget` of them, and a note.

    All unique products when they fit; else products within the newest state of features at
    most r apart (cyclically, which suits periodic grids), with the largest r that fits; else
    none (linear NVAR). Keeps the feature count, and so memory and time, bounded for wide
    states such as a 64-point field.
    """
    d = k * n_feat
    if d * (d + 1) // 2 <= budget:
        a, b = np.triu_indices(d)
        return a, b, f"all {len(a)} quadratic monomials of the {k} delayed states"
    a, b = np.triu_indices(n_feat)
    gap = np.minimum(b - a, n_feat - (b - a))  # cyclic distance between features
    for r in range(n_feat // 2, -1, -1):
        keep = gap <= r
        if keep.sum() <= budget:
            full = "all" if r == n_feat // 2 else f"features at most {r} apart (cyclic)"
            return a[keep], b[keep], (f"{int(keep.sum())} quadratic monomials of the newest "
                                      f"state only ({full}; all {d * (d + 1) // 2} over the "
                                      f"delays would exceed the feature cap)")
    return np.zeros(0, int), np.zeros(0, int), ("linear only: even the squares of the newest "
                                                "state exceed the feature cap")


class NVAR(_ForecastBaseline):
    """Next-generation reservoir computing (Gauthier et al., Nat. Commun. 2021).

    States are standardised per feature with the training mean and std (z). Features at time
    t: a constant (the unpenalised ridge intercept), the linear monomials of k delayed states
    z_t, z_{t-s}, ..., z_{t-(k-1)s} and the unique quadratic monomials of those
    (`quadratic_pairs`, capped at `max_features` in all); a ridge readout predicts the
    increment z_{t+1} - z_t, and `predict` rolls out closed-loop.

    k (from `delays`, default 1-4) and the ridge strength (from `alphas`, default
    `NVAR_ALPHAS`: half decades 1e-8..1e2) are chosen on a time-blocked validation part --
    the last `val_fraction` of every training trajectory -- after fitting on the rest, by
    closed-loop rollouts of `horizon` steps (at most `NVAR_VALIDATION_STEPS`) from
    `NVAR_VALIDATION_WINDOWS` windows of it (`_validation_score`; one-step error where the
    blocks are too short for a rollout). Fits none of whose rollouts reaches the clipping
    bounds are ranked by the mean over leads of log MSE_h (MSE_h: the squared error at lead
    h, averaged over windows and features), so every lead weighs the same in relative terms
    and the short leads are not drowned by the late ones. In that order each is refitted on
    all rows, and the first whose refit stays bounded in long free runs from many training
    states (`_stays_bounded`) wins. If none of the first `NVAR_STABILITY_TRIES` does, the
    best-ranked fit is used and `val_stable_` is False. Rollouts are clipped to ten training
    spans outside the training range, so a diverging forecast stays finite and is counted
    (`clipped_rollouts` in `describe`).
    """

    def __init__(self, delays: Sequence[int] = (1, 2, 3, 4), skip: int = 1,
                 alphas: Sequence[float] | None = None, max_features: int = 1500,
                 max_rows: int = 8000, val_fraction: float = 0.2, horizon: int = 32,
                 seed: int = 0) -> None:
        if min(delays) < 1 or skip < 1 or max_features < 2 or not 0 < val_fraction < 1:
            raise ValueError(f"NVAR needs delays >= 1, skip >= 1, max_features >= 2 and "
                             f"0 < val_fraction < 1; got {list(delays)}, {skip}, "
                             f"{max_features}, {val_fraction}")
        self.delays, self.skip = sorted(set(int(k) for k in delays)), skip
        self.alphas = NVAR_ALPHAS if alphas is None else np.asarray(alphas, float)
        self.max_features, self.max_rows = max_features, max_rows
        self.val_fraction, self.horizon, self.seed = val_fraction, horizon, seed
        self.n_clipped_ = 0

    def span(self, k: int | None = None) -> int:
        """States a forecast needs: (k - 1) * skip + 1."""
        return ((self.k_ if k is None else k) - 1) * self.skip + 1

    def _features(self, buf: np.ndarray, k: int, pairs: tuple) -> np.ndarray:
        """`(n, k F + n_quad)` features of the newest state of each `(n, >= span, F)` buffer."""
        return delay_features(buf, k, self.skip, pairs[0], pairs[1])

    def _rows(self, zs: list[np.ndarray], k: int, pairs: tuple
              ) -> tuple[tuple, tuple[np.ndarray, np.ndarray]]:
        """Moments of the fitting rows and (features, increments) of the validation rows --
        the last `val_fraction` of each trajectory's one-step rows -- for delay count k; at
        most `max_rows` rows in all (a seeded random subset)."""
        span, rows, is_val = self.span(k), [], []
        for i, z in enumerate(zs):
            t = np.arange(span - 1, len(z) - 1)  # row t predicts z[t+1] - z[t]
            n_val = min(math.ceil(self.val_fraction * len(t)), len(t) - 1)
            rows.append(np.stack([np.full(len(t), i), t], axis=1))
            is_val.append(np.arange(len(t)) >= len(t) - n_val)
        row, val = np.concatenate(rows), np.concatenate(is_val)
        if len(row) > self.max_rows:
            keep = np.sort(np.random.default_rng(self.seed).choice(len(row), self.max_rows,
                                                                   replace=False))
            row, val = row[keep], val[keep]
        bufs = np.stack([zs[i][t - span + 1:t + 1] for i, t in row])  # (N, span, F)
        x = self._features(bufs, k, pairs)
        y = np.stack([zs[i][t + 1] for i, t in row]) - bufs[:, -1]
        return _moments(x[~val], y[~val]), (x[val], y[val])

    def _rollout(self, buf: np.ndarray, horizon: int, k: int, pairs: tuple, w: np.ndarray,
                 b: np.ndarray, stop_on_clip: bool = False, bounds: tuple | None = None
                 ) -> tuple[np.ndarray, int]:
        """Closed-loop z-rollout `(n, horizon, F)` from `(n, >= span, F)` buffers, and the
        number of rollouts that had to be clipped (to `bounds`, default `bounds_`); with
        `stop_on_clip` the rollout ends after the first step at which any of them is clipped
        (`(n, steps, F)`, steps <= horizon)."""
        lo, hi = self.bounds_ if bounds is None else bounds
        buf = buf[:, -self.span(k):].copy()
        out = np.empty((len(buf), horizon, buf.shape[2]))
        clipped = np.zeros(len(buf), bool)
        for h in range(horizon):
            with np.errstate(over="ignore", invalid="ignore"):
                nxt = buf[:, -1] + self._features(buf, k, pairs) @ w + b
            nxt = np.nan_to_num(nxt, nan=np.inf)  # NaN (inf - inf) clips to a bound too
            bounded = np.clip(nxt, lo, hi)
            clipped |= np.any(bounded != nxt, axis=1)
            out[:, h] = bounded
            if stop_on_clip and clipped.any():
                return out[:, :h + 1], int(clipped.sum())
            buf = np.concatenate([buf[:, 1:], bounded[:, None]], axis=1)
        return out, int(clipped.sum())

    def _validation_score(self, zs: list[np.ndarray], k: int, pairs: tuple, sol: tuple,
                          val_rows: tuple[np.ndarray, np.ndarray]) -> tuple[int, float]:
        """The selection key of one (k, alpha) fit, lower is better: (0, mean over leads
        h = 1..H of log MSE_h) for a stable fit, MSE_h the closed-loop squared error at lead h
        averaged over the validation windows and features (z units); (1, -steps) for a fit
        whose rollout reached the clipping bounds after `steps` steps. Tails too short for a
        rollout give (0, log of the one-step MSE).

        The mean of the logs (the log of the geometric mean) weighs every lead the same in
        relative terms: halving the error at lead 1 counts as much as halving it at lead H.
        The mean of MSE_h itself is carried by the late leads, whose errors are orders of
        magnitude larger; on the same grid it chose fits with up to 1.45x the held-out lead-1
        error (KS: 2 delays instead of 3).
        """
        span, tiny = self.span(k), np.finfo(float).tiny  # tiny: log of an exact fit's 0
        tails = [z[len(z) - max(1, math.ceil(self.val_fraction * len(z))):] for z in zs]
        h = min(self.horizon, NVAR_VALIDATION_STEPS, max(len(t) for t in tails) - span)
        wins = selection_windows(tails, span + h, NVAR_VALIDATION_WINDOWS) if h >= 1 else []
        if len(wins) == 0:
            x, y = val_rows
            return 0, float(np.log(max(np.mean((x @ sol[0] + sol[1] - y) ** 2), tiny)))
        pred, clipped = self._rollout(wins[:, :span], h, k, pairs, *sol, stop_on_clip=True)
        if clipped:
            return 1, -float(pred.shape[1] - 1)
        mse = np.mean((pred - wins[:, span:]) ** 2, axis=(0, 2))  # (h,) per lead
        return 0, float(np.mean(np.log(np.maximum(mse, tiny))))

    def _stays_bounded(self, zs: list[np.ndarray], k: int, pairs: tuple, sol: tuple) -> bool:
        """Whether closed loops of the fit `sol` (the refit on all rows) from
        `NVAR_STABILITY_STARTS` states spread over all training trajectories stay within one
        training span of the training range for `NVAR_STABILITY_STEPS` steps. No truth is
        needed, so the starts can be many and the runs long, and the tighter bound than the
        clipping bounds catches a slow divergence sooner: on KS a fit near the stability edge
        passed the validation rollouts but diverged from some held-out states after ~250
        steps."""
        starts = selection_windows(zs, self.span(k), NVAR_STABILITY_STARTS)
        _, clipped = self._rollout(starts, NVAR_STABILITY_STEPS, k, pairs, *sol,
                                   stop_on_clip=True, bounds=self.stable_bounds_)
        return clipped == 0

    def fit(self, train: Sequence[np.ndarray]) -> NVAR:
        """Choose k and the ridge strength on the blocked validation tails, refit on all."""
        xs = _check_train(train, min_len=self.span(max(self.delays)) + 2)
        f = self.n_features = xs[0].shape[1]
        allx = np.concatenate(xs)
        self.mu_, self.sd_ = allx.mean(axis=0), _safe_std(allx)
        zs = [(x - self.mu_) / self.sd_ for x in xs]
        lo, hi = np.min([z.min(axis=0) for z in zs], 0), np.max([z.max(axis=0) for z in zs], 0)
        spread = float(np.max(hi - lo)) or 1.0
        self.bounds_ = (lo - 10 * spread, hi + 10 * spread)
        self.stable_bounds_ = (lo - spread, hi + spread)  # `_stays_bounded`
        cands = []  # (key, k, alpha, pairs, moments of all rows)
        for k in self.delays:
            pairs = quadratic_pairs(k, f, self.max_features - 1 - k * f)
            fit_mom, val_rows = self._rows(zs, k, pairs)
            all_mom = _add(fit_mom, _moments(*val_rows))
            for alpha in self.alphas:
                sol = _ridge_solve(fit_mom, float(alpha))
                if sol is None:
                    continue
                key = self._validation_score(zs, k, pairs, sol, val_rows)
                if np.isfinite(key[1]):
                    cands.append((key, k, float(alpha), pairs, all_mom))
        if not cands:
            raise np.linalg.LinAlgError("NVAR: no (k, alpha) on the grid gave a finite fit")
        cands.sort(key=lambda c: c[0])
        self.rejected_long_run_ = 0  # validation-stable fits whose refit diverged in long runs
        chosen = None
        for key, k, alpha, pairs, mom in cands:
            if key[0] == 1 or self.rejected_long_run_ == NVAR_STABILITY_TRIES:
                break  # the rest diverged on validation already, or enough long runs tried
            sol = _ridge_solve(mom, alpha)
            if sol is not None and self._stays_bounded(zs, k, pairs, sol):
                chosen = key, k, alpha, pairs, sol
                break
            self.rejected_long_run_ += 1
        self.val_stable_ = chosen is not None
        if chosen is None:  # nothing stable: the best validation score, flagged
            key, k, alpha, pairs, mom = cands[0]
            chosen = key, k, alpha, pairs, _ridge_solve(mom, alpha)
            if chosen[4] is None:
                raise np.linalg.LinAlgError(f"NVAR: the refit at alpha={alpha} is singular")
        (_, self.val_score_), self.k_, self.alpha_, self.pairs_, sol = chosen
        self.coef_, self.intercept_ = sol
        return self

    def predict(self, context: np.ndarray, horizon: int) -> np.ndarray:
        """Closed-loop rollout `(n, horizon, F)` in the original units."""
        c = self._check_context(context, horizon, min_len=self.span())
        z = (c - self.mu_) / self.sd_
        out, clipped = self._rollout(z, horizon, self.k_, self.pairs_, self.coef_,
                                     self.intercept_)
        self.n_clipped_ += clipped
        return out * self.sd_ + self.mu_

    def describe(self) -> dict[str, Any]:
        """Chosen delays, skip, ridge strength, feature count, whether the choice passed
        both stability checks (`stable`), and clipped rollouts."""
        return {"delays": self.k_, "skip": self.skip, "alpha": self.alpha_,
                "stable": self.val_stable_,
                "n_features": 1 + self.k_ * self.n_features + len(self.pairs_[0]),
                "quadratic": self.pairs_[2], "clipped_rollouts": self.n_clipped_}


#: Every forecast baseline by the name used in metrics.json (the classic three first).
ALL_BASELINES: dict[str, type] = {**BASELINES, "parroting": Parroting, "nvar": NVAR}

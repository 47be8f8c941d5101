"""Masked-residue baselines that expose what a model gets for free: composition and neighbours.

Both are scored on exactly the positions the model is scored on (`MaskedScorer` is fed each
group of records with its masked positions), see only what the model sees (the unmasked
residues), and are fitted on the training split only. Distributions are over the residue ids
of the ESM-2 alphabet (`ESM_RESIDUE_IDS`: <unk> and the letters), with the unigram baseline's
add-one training frequencies pi as the base measure.

- `CompositionBaseline`: each protein's own residue counts c (all masked positions of that
  protein left out, as the model does not see them either) under a Dirichlet prior
  alpha * pi: p(a) = (c_a + alpha pi_a) / (n + alpha). This is the posterior predictive of a
  Dirichlet-multinomial (MacKay & Peto 1995, Nat. Lang. Eng. 1:289). alpha is chosen on a
  grid by the likelihood of the training proteins' own masked positions, masked exactly as
  evaluation masks (same rate, each protein's masked residues left out of its counts).
  alpha -> infinity is the unigram baseline.
- `NeighbourBaseline`: counts of (left, residue, right) triples in the training proteins,
  <cls>/<eos> at the ends. Hierarchical Dirichlet smoothing (MacKay & Peto 1995):
  p_L(x|l) = (c(l,x) + b1 pi_x) / (c(l,.) + b1), likewise p_R(x|r), and
  p(x|l,r) = (c(l,x,r) + b2 q(x)) / (c(l,.,r) + b2) with q = (p_L + p_R) / 2. b1 and b2 are
  chosen on grids by leave-one-out likelihood of the training triples (each occurrence
  removed from every count it contributes to; Ney, Essen & Kneser 1994, Comput. Speech Lang.
  8:1). A masked neighbour is unknown: the prediction backs off to p_L, p_R or pi.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sciformer.evaluation.baselines import ESM_RESIDUE_IDS
from sciformer.evaluation.metrics import masked_metrics

V = 33  # ESM-2 vocabulary size
CLS, EOS = 0, 2  # boundary symbols of the alphabet (<cls>, <eos>)
#: Names of the baselines fitted on the training proteins, in report order.
FITTED = ("composition", "neighbours")
#: Prior strengths tried (alpha, b1, b2): 10 per decade over 1e-2..1e5.
GRID = np.logspace(-2, 5, 71)


def prior(train_counts: np.ndarray) -> np.ndarray:
    """(V,) add-one training frequencies over the residue ids, 0 elsewhere (the unigram)."""
    counts = np.asarray(train_counts, dtype=np.float64).ravel()
    if counts.shape != (V,):
        raise ValueError(f"residue counts over the {V}-token alphabet expected, got {counts.shape}")
    p = np.zeros(V)
    p[ESM_RESIDUE_IDS] = (counts[ESM_RESIDUE_IDS] + 1.0) / (counts[ESM_RESIDUE_IDS].sum()
                                                            + len(ESM_RESIDUE_IDS))
    return p


def _counts(tokens: list[np.ndarray], positions: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(G, V) residue counts of each record and (G, V) counts of its masked positions."""
    full = np.stack([np.bincount(t, minlength=V)[:V] for t in tokens]).astype(np.float64)
    masked = np.stack([np.bincount(t[p], minlength=V)[:V] for t, p in zip(tokens, positions)])
    return full, masked.astype(np.float64)


@dataclass
class CompositionBaseline:
    """Leave-masked-out composition of the protein with a fitted Dirichlet prior."""

    pi: np.ndarray
    alpha: float = 1.0
    curve: list[float] = field(default_factory=list)  # training log-likelihood per GRID value

    def fit(self, train_tokens: list[np.ndarray], train_positions: list[np.ndarray]
            ) -> CompositionBaseline:
        """alpha on GRID maximising the log-likelihood of the training proteins' masked
        residues, each protein's masked residues left out of its own counts."""
        full, masked = _counts(train_tokens, train_positions)
        keep = self.pi > 0
        seen, held = (full - masked)[:, keep], masked[:, keep]  # (P, R)
        n_seen, n_held = seen.sum(axis=1), held.sum(axis=1)  # (P,)
        rows, cols = np.nonzero(held)
        ll = [float((held[rows, cols] * np.log(seen[rows, cols] + a * self.pi[keep][cols])).sum()
                    - (n_held * np.log(n_seen + a)).sum()) for a in GRID]
        self.curve, self.alpha = ll, float(GRID[int(np.argmax(ll))])
        return self

    def distributions(self, tokens: list[np.ndarray], positions: list[np.ndarray]) -> np.ndarray:
        """(G, V) predictive distribution of each record's masked residues."""
        full, masked = _counts(tokens, positions)
        seen = (full - masked) * (self.pi > 0)
        return (seen + self.alpha * self.pi) / (seen.sum(axis=1, keepdims=True) + self.alpha)

    def score(self, tokens: list[np.ndarray], positions: list[np.ndarray]) -> np.ndarray:
        """(n_masked, V) probabilities at every masked position, records in order."""
        dist = self.distributions(tokens, positions)
        return np.repeat(dist, [len(p) for p in positions], axis=0)

    def info(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "grid": [float(GRID[0]), float(GRID[-1]), len(GRID)]}


def triple_counts(tokens: list[np.ndarray]) -> np.ndarray:
    """(V, V, V) counts of (left, residue, right) with <cls>/<eos> beyond the ends."""
    codes = []
    for t in tokens:
        if len(t):
            f = np.concatenate(([CLS], t.astype(np.int64), [EOS]))
            codes.append((f[:-2] * V + f[1:-1]) * V + f[2:])
    code = np.concatenate(codes) if codes else np.zeros(0, np.int64)
    tri = np.bincount(code, minlength=V ** 3).astype(np.float64)
    return tri.reshape(V, V, V)


@dataclass
class NeighbourBaseline:
    """p(residue | left, right) from training triple counts, hierarchical Dirichlet smoothing."""

    pi: np.ndarray
    tri: np.ndarray  # (V, V, V) counts c(l, x, r)
    b1: float = 1.0
    b2: float = 1.0

    @property
    def left(self) -> np.ndarray:
        """(V, V) counts c(l, x)."""
        return self.tri.sum(axis=2)

    @property
    def right(self) -> np.ndarray:
        """(V, V) counts c(x, r)."""
        return self.tri.sum(axis=0)

    def fit(self) -> NeighbourBaseline:
        """b1 by leave-one-out likelihood of the pairs, then b2 of the triples."""
        self.b1 = float(GRID[int(np.argmax([self._loo_pairs(b) for b in GRID]))])
        self.b2 = float(GRID[int(np.argmax([self._loo_triples(b) for b in GRID]))])
        return self

    def _loo_pairs(self, b1: float) -> float:
        """Leave-one-out log-likelihood of every residue given its left, and given its right."""
        total = 0.0
        for c, ctx_axis in ((self.left, 1), (self.right.T, 1)):  # rows: context, cols: residue
            n_ctx = c.sum(axis=ctx_axis, keepdims=True)
            i, x = np.nonzero(c * (self.pi > 0))
            p = (c[i, x] - 1 + b1 * self.pi[x]) / (n_ctx[i, 0] - 1 + b1)
            total += float((c[i, x] * np.log(p)).sum())
        return total

    def _loo_triples(self, b2: float) -> float:
        """Leave-one-out log-likelihood of every training triple under p(x | l, r)."""
        l, x, r = np.nonzero(self.tri * (self.pi > 0)[None, :, None])
        c = self.tri[l, x, r]
        left, right = self.left, self.right
        pl = (left[l, x] - 1 + self.b1 * self.pi[x]) / (left[l].sum(axis=1) - 1 + self.b1)
        pr = (right[x, r] - 1 + self.b1 * self.pi[x]) / (right[:, r].sum(axis=0) - 1 + self.b1)
        n_ctx = self.tri.sum(axis=1)[l, r]
        p = (c - 1 + b2 * (pl + pr) / 2) / (n_ctx - 1 + b2)
        return float((c * np.log(p)).sum())

    def tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Smoothed (V_l, V_r, V_x) p(x|l,r), (V_l, V_x) p(x|l), (V_r, V_x) p(x|r)."""
        left, right = self.left, self.right
        pl = (left + self.b1 * self.pi) / (left.sum(axis=1, keepdims=True) + self.b1)
        pr = (right.T + self.b1 * self.pi) / (right.sum(axis=0)[:, None] + self.b1)
        q = (pl[:, None, :] + pr[None, :, :]) / 2  # (V_l, V_r, V_x)
        tri = self.tri.transpose(0, 2, 1)  # (V_l, V_r, V_x)
        plr = (tri + self.b2 * q) / (tri.sum(axis=2, keepdims=True) + self.b2)
        return plr, pl, pr

    def score(self, tokens: list[np.ndarray], positions: list[np.ndarray]) -> np.ndarray:
        """(n_masked, V) probabilities at every masked position; masked neighbours back off."""
        plr, pl, pr = self.tables()
        rows = []
        for t, pos in zip(tokens, positions):
            f = np.concatenate(([CLS], t.astype(np.int64), [EOS]))
            known = np.ones(len(f), dtype=bool)
            known[pos + 1] = False  # masked residues are not context
            lft, rgt = pos, pos + 2  # framed indices of each masked residue's neighbours
            kl, kr = known[lft], known[rgt]
            out = np.tile(self.pi, (len(pos), 1))
            both, only_l, only_r = kl & kr, kl & ~kr, ~kl & kr
            out[both] = plr[f[lft[both]], f[rgt[both]]]
            out[only_l] = pl[f[lft[only_l]]]
            out[only_r] = pr[f[rgt[only_r]]]
            rows.append(out)
        return np.concatenate(rows) if rows else np.zeros((0, V))

    def info(self) -> dict[str, Any]:
        return {"b1": self.b1, "b2": self.b2, "grid": [float(GRID[0]), float(GRID[-1]), len(GRID)]}


class MaskedScorer:
    """Accumulates a baseline's log p(true) and argmax over the evaluation's groups."""

    def __init__(self, name: str, model: CompositionBaseline | NeighbourBaseline) -> None:
        self.name, self.model = name, model
        self.log_prob: list[np.ndarray] = []
        self.pred: list[np.ndarray] = []
        self.true: list[np.ndarray] = []

    def add(self, tokens: list[np.ndarray], positions: list[np.ndarray]) -> None:
        """Score one group: `positions[i]` are the masked residue indices of `tokens[i]`."""
        probs = self.model.score(tokens, positions)  # (n_masked, V)
        true = np.concatenate([t[p] for t, p in zip(tokens, positions)]).astype(np.int64) \
            if tokens else np.zeros(0, np.int64)
        with np.errstate(divide="ignore"):
            self.log_prob.append(np.log(probs[np.arange(len(true)), true]))
        self.pred.append(probs.argmax(axis=1).astype(np.uint8))
        self.true.append(true.astype(np.uint8))

    def metrics(self) -> dict[str, Any]:
        cat = lambda xs, d: np.concatenate(xs) if xs else np.zeros(0, d)
        out = masked_metrics(cat(self.log_prob, np.float64), cat(self.pred, np.uint8),
                             cat(self.true, np.uint8))
        out["fit"] = self.model.info()
        return out


def fit_baselines(train_counts: np.ndarray, train_tokens: list[np.ndarray],
                  train_positions: list[np.ndarray]) -> list[MaskedScorer]:
    """Both baselines fitted on the training proteins (positions: masked as evaluation masks)."""
    pi = prior(train_counts)
    comp = CompositionBaseline(pi).fit(train_tokens, train_positions)
    neigh = NeighbourBaseline(pi, triple_counts(train_tokens)).fit()
    return [MaskedScorer("composition", comp), MaskedScorer("neighbours", neigh)]


def unavailable(reason: str, n_masked: int) -> dict[str, Any]:
    """The metrics entry of a baseline that could not be fitted, with the reason."""
    return {"perplexity": None, "accuracy": None, "n_masked": n_masked, "unavailable": reason}


def plot_baselines(path: str | os.PathLike, rows: dict[str, dict[str, Any]]) -> Path:
    """Perplexity (left) and accuracy (right) of the model and every baseline as bars; a
    baseline that could not be fitted is drawn as an empty slot labelled 'n/a'."""
    from sciformer.evaluation.report import BASELINE_COLORS, MODEL_COLOR, _figure

    names = list(rows)
    colors = [MODEL_COLOR] + [BASELINE_COLORS[i % len(BASELINE_COLORS)] for i in range(len(names) - 1)]
    with _figure(path, 1, 2, figsize=(11, 4.2)) as (fig, axes):
        for ax, key in zip(axes[0], ("perplexity", "accuracy")):
            values = [rows[n].get(key) for n in names]
            heights = [v if v is not None else 0.0 for v in values]
            ax.bar(range(len(names)), heights, color=colors)
            for i, v in enumerate(values):
                ax.text(i, heights[i], "n/a" if v is None else f"{v:.4g}", ha="center",
                        va="bottom", fontsize=8)
            ax.set_xticks(range(len(names)), names)
            ax.set_ylabel(key)
            ax.set_title(f"{key} ({'higher' if key == 'accuracy' else 'lower'} is better)")
        fig.suptitle("Masked residues: model against baselines on the same masked positions")
    return Path(path)

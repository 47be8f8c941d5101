"""Linear probes on frozen embeddings (`sciformer evaluate RUN LABELLED --probe ...`).

What a pretrained encoder "knows" is measured the usual way (Rives et al. 2021, sec. 5): fit
a linear model on its frozen final-layer vectors and score it on held-out proteins, next to
the same linear model on amino-acid composition, which needs no model at all.

Labelled input, one of:

- a CSV with columns `id`, `sequence` and the label column (default `label`);
- a FASTA file whose header descriptions carry `KEY=VALUE` (default key `label`; pieces are
  separated by spaces or ';', so Prodigal headers' `gc_cont=0.319` works with --label gc_cont).

`--probe sequence`: one label per protein, features = mean of the residue vectors. Labels
are numeric (Ridge, scored by Spearman rho) when every label is a number and they are not
just a few integers (at most 10 distinct integer values read as classes); otherwise
categorical (logistic regression, accuracy). A missing or non-finite label (`nan`, `NA`,
`inf`, ...) is an error naming the record, never a class of its own. Baseline features: the
20 amino-acid fractions.
`--probe residue`: the label is a string with one character per residue (e.g. `--HHHH--`
for transmembrane segments); every character is a class. Baseline features per residue: its
own amino acid (one-hot) and the amino-acid fractions of the 15 residues around it.

The held-out split is by whole protein (seeded; residues of one protein never sit on both
sides), so the probe is scored on proteins it was not fitted to.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sciformer.errors import InputError
from sciformer.io.atomic import write_text_atomic
from sciformer.io.csvfile import read_rows
from sciformer.io.fasta import read_fasta
from sciformer.pipelines.protein import ProteinLM
from sciformer.tokenizers.protein import STANDARD_AMINO_ACIDS, TOKENIZER

PROBES = ("sequence", "residue")
TEST_FRACTION = 0.2
SPLIT_SEED = 0
WINDOW_HALF = 7  # residue baseline: composition of the 2 * 7 + 1 residues around each position
_AA_INDEX = np.full(TOKENIZER.vocab_size, -1)
_AA_INDEX[[TOKENIZER.alphabet.index(a) for a in STANDARD_AMINO_ACIDS]] = np.arange(20)


@dataclass
class Labelled:
    """Proteins with labels: ids, residue-id arrays, label strings (one per protein)."""

    ids: list[str] = field(default_factory=list)
    tokens: list[np.ndarray] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


# ---- reading --------------------------------------------------------------------------------
def read_labelled(path: Path, key: str = "label") -> Labelled:
    """Read a labelled CSV or FASTA (see the module docstring); errors name file and line."""
    is_csv = path.suffix.lower() in (".csv", ".tsv")
    out = _read_csv(path, key) if is_csv else _read_fasta(path, key)
    if len(out.ids) < 2:
        raise InputError(f"{path}: a probe needs at least 2 labelled proteins, "
                         f"found {len(out.ids)}")
    return out


def _read_csv(path: Path, key: str) -> Labelled:
    out, seen = Labelled(), {}
    columns, rows = read_rows(path, "labelled CSV",
                              delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    missing = [c for c in ("id", "sequence", key) if c not in columns]
    if missing:
        raise InputError(f"{path} line 1: no '{missing[0]}' column "
                         f"(columns: {', '.join(columns)})")
    for line, cells in rows:
        where, rid = f"{path} line {line}", cells["id"].strip()
        seq = re.sub(r"\s+", "", cells["sequence"]).upper().removesuffix("*")
        label = cells[key].strip()
        if not rid or not seq or not label:
            raise InputError(f"{where}: empty id, sequence or '{key}' (record '{rid}')")
        if rid in seen:
            raise InputError(f"{where}: duplicate id '{rid}' (first at line {seen[rid]})")
        seen[rid] = line
        _add(out, rid, seq, label)
    return out


def _read_fasta(path: Path, key: str) -> Labelled:
    out = Labelled()
    pattern = re.compile(rf"(?:^|[\s;]){re.escape(key)}=([^\s;]+)")
    for rec in read_fasta(path):
        m = pattern.search(rec.description)
        if m is None:
            raise InputError(f"{path} line {rec.line}: record '{rec.id}' has no '{key}=' "
                             "in its header")
        _add(out, rec.id, rec.sequence, m.group(1))
    return out


def _add(out: Labelled, rid: str, seq: str, label: str) -> None:
    out.ids.append(rid)
    out.tokens.append(TOKENIZER.encode(seq, add_special=False))
    out.labels.append(label)


def label_kind(labels: list[str]) -> str:
    """'numeric' or 'categorical' for sequence labels (rule in the module docstring)."""
    try:
        values = np.array([float(v) for v in labels])
    except ValueError:
        return "categorical"
    if not np.all(np.isfinite(values)):
        return "categorical"
    few_integers = np.all(values == np.round(values)) and len(set(values)) <= 10
    return "categorical" if few_integers else "numeric"


#: Label cells that mean "no value" in spreadsheets and R/pandas exports.
_MISSING = {"na", "n/a", "nan", "none", "null", "-", "?", "inf", "+inf", "-inf", "infinity",
            "+infinity", "-infinity"}


def check_missing_labels(data: Labelled, path: Path, key: str) -> None:
    """Refuse a missing-value marker (`nan`, `NA`, `inf`, ...) among sequence labels: one
    such cell would otherwise turn a numeric (regression) probe into a classification with
    every distinct number as a class."""
    for rid, lab in zip(data.ids, data.labels):
        if lab.strip().lower() in _MISSING:
            raise InputError(f"{path}: record '{rid}' has '{key}' {lab!r}, a missing or "
                             "non-finite value; remove the record or give its label")


def check_residue_labels(data: Labelled, path: Path) -> None:
    """Residue labels must have one character per residue."""
    for rid, tok, lab in zip(data.ids, data.tokens, data.labels):
        if len(lab) != len(tok):
            raise InputError(f"{path}: record '{rid}' has {len(tok)} residues but a label of "
                             f"{len(lab)} characters (need one per residue)")


# ---- features -------------------------------------------------------------------------------
def composition(tokens: np.ndarray) -> np.ndarray:
    """Fractions (20,) of the standard amino acids in a residue-id array."""
    idx = _AA_INDEX[tokens]
    counts = np.bincount(idx[idx >= 0], minlength=20).astype(np.float64)
    return counts / max(len(tokens), 1)


def residue_baseline_features(tokens: np.ndarray, half: int = WINDOW_HALF) -> np.ndarray:
    """(L, 40): one-hot of each residue, then the amino-acid fractions of its ±`half` window."""
    idx = _AA_INDEX[tokens]
    onehot = np.zeros((len(tokens), 20))
    onehot[np.flatnonzero(idx >= 0), idx[idx >= 0]] = 1.0
    csum = np.vstack([np.zeros(20), np.cumsum(onehot, axis=0)])  # (L + 1, 20) prefix sums
    pos = np.arange(len(tokens))
    lo, hi = np.maximum(pos - half, 0), np.minimum(pos + half + 1, len(tokens))
    window = (csum[hi] - csum[lo]) / (hi - lo)[:, None]
    return np.hstack([onehot, window])


def model_features(lm: ProteinLM, tokens: list[np.ndarray], mean: bool,
                   chunk: int = 256) -> list[np.ndarray]:
    """Final-layer vectors of every protein (windows blended): per residue (L, D), or their
    mean (D,) when `mean`; proteins go through in chunks so memory stays bounded."""
    last = lm.layers([-1])
    out: list[np.ndarray] = []
    for start in range(0, len(tokens), chunk):
        for _, per_residue, _ in lm.embedding_stream(tokens[start:start + chunk], last):
            out.append(per_residue[0].mean(axis=0) if mean else per_residue[0])
    return out


# ---- fitting --------------------------------------------------------------------------------
def fit_and_score(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                  y_test: np.ndarray, kind: str) -> dict[str, Any]:
    """Standardise, fit logistic regression (categorical) or Ridge (numeric), score held-out."""
    if kind == "categorical":
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        pred = probe.fit(x_train, y_train).predict(x_test)
        return {"accuracy": float(np.mean(pred == y_test))}
    probe = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 13)))
    pred = probe.fit(x_train, y_train).predict(x_test)
    rho = spearmanr(pred, y_test).statistic if np.ptp(pred) > 0 else float("nan")
    return {"spearman": None if math.isnan(rho) else float(rho),
            "rmse": float(np.sqrt(np.mean((pred - y_test) ** 2)))}


def majority(y_train: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """Always the most frequent training class."""
    classes, counts = np.unique(y_train, return_counts=True)
    return {"accuracy": float(np.mean(y_test == classes[np.argmax(counts)]))}


def split(data: Labelled, kind: str, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Seeded held-out split by protein, stratified for sequence classes where possible."""
    n = len(data.ids)
    n_test = max(1, int(round(n * TEST_FRACTION)))
    labels = np.array(data.labels)
    strat = None
    if kind == "categorical":
        _, counts = np.unique(labels, return_counts=True)
        strat = labels if counts.min() >= 2 and n_test >= len(counts) else None
    train, test = train_test_split(np.arange(n), test_size=n_test, random_state=seed,
                                   stratify=strat)
    return np.sort(train), np.sort(test)


# ---- the evaluation -------------------------------------------------------------------------
def evaluate_probe(lm: ProteinLM, data_path: Path, out_dir: Path, probe: str,
                   label: str = "label") -> dict[str, Any]:
    """Fit and score the probe and its baselines; write summary.md; return the metrics."""
    from sciformer.evaluation.summary import format_table

    if probe not in PROBES:
        raise InputError(f"--probe '{probe}': must be one of {', '.join(PROBES)}")
    data = read_labelled(data_path, label)
    if probe == "residue":
        check_residue_labels(data, data_path)
    if probe == "sequence":
        check_missing_labels(data, data_path, label)
    kind = label_kind(data.labels) if probe == "sequence" else "categorical"
    train, test = split(data, kind)
    feats = model_features(lm, data.tokens, mean=probe == "sequence")
    fit = _sequence_sets if probe == "sequence" else _residue_sets
    sets, y_train, y_test = fit(data, feats, train, test, kind)
    if kind == "categorical" and len(np.unique(y_train)) < 2:
        raise InputError(f"{data_path}: the training part has a single class "
                         f"('{y_train[0]}'); a probe needs at least two")
    metrics: dict[str, Any] = {
        "task": "probe", "probe": probe, "label": label, "label_kind": kind,
        "n_examples": int(len(test)), "n_train": int(len(train)),
        "n_train_items": int(len(y_train)), "n_test_items": int(len(y_test)),
        "data": str(data_path),
        "features": f"layer {lm.cfg.model.n_encoder_layers} (final), "
                    + ("mean over residues" if probe == "sequence" else "per residue"),
        "split_seed": SPLIT_SEED, "test_fraction": TEST_FRACTION,
        "model": fit_and_score(*sets["model"], kind),
        "baselines": {"composition": fit_and_score(*sets["composition"], kind)},
    }
    if kind == "categorical":
        metrics["baselines"]["majority"] = majority(y_train, y_test)
        metrics["classes"] = sorted(set(y_train.tolist()) | set(y_test.tolist()))
    write_text_atomic(out_dir / "summary.md", f"# Probe: {data_path.name} ({probe}, {label})\n\n"
                      + format_table(metrics) + "\n")
    return metrics


def _targets(values: list[str], kind: str) -> np.ndarray:
    return np.array([float(v) for v in values]) if kind == "numeric" else np.array(values)


def _sequence_sets(data: Labelled, feats: list[np.ndarray], train: np.ndarray,
                   test: np.ndarray, kind: str):
    """(train X, train y, test X, test y) for the model and the composition baseline."""
    y = _targets(data.labels, kind)
    emb = np.stack(feats)
    comp = np.stack([composition(t) for t in data.tokens])
    sets = {name: (x[train], y[train], x[test], y[test])
            for name, x in (("model", emb), ("composition", comp))}
    return sets, y[train], y[test]


def _residue_sets(data: Labelled, feats: list[np.ndarray], train: np.ndarray,
                  test: np.ndarray, kind: str):
    """Per-residue rows of the training and held-out proteins."""
    def rows(idx: np.ndarray, which: str) -> np.ndarray:
        if which == "model":
            return np.vstack([feats[i] for i in idx])
        return np.vstack([residue_baseline_features(data.tokens[i]) for i in idx])

    def labels(idx: np.ndarray) -> np.ndarray:
        return np.array([c for i in idx for c in data.labels[i]])

    y_train, y_test = labels(train), labels(test)
    sets = {name: (rows(train, name), y_train, rows(test, name), y_test)
            for name in ("model", "composition")}
    return sets, y_train, y_test

"""Composition and neighbour baselines for masked residues: hand-computed probabilities,
leave-one-out fits checked against brute force, back-off at masked neighbours, and the
evaluate report (same masked positions as the model; unavailable with a reason when the
training files are gone)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from sciformer.evaluation.baselines import unigram_baseline
from sciformer.evaluation.masked_baselines import (
    GRID,
    CompositionBaseline,
    MaskedScorer,
    NeighbourBaseline,
    prior,
    triple_counts,
)
from sciformer.tokenizers.protein import ProteinTokenizer

TOK = ProteinTokenizer()
A, C, D = (TOK.alphabet.index(x) for x in "ACD")
PI = prior(np.zeros(33))  # 1/28 on each residue id (3..30), 0 on the specials


def _ids(text: str) -> np.ndarray:
    return TOK.encode(text, add_special=False).astype(np.uint8)


def test_prior_is_the_unigram_add_one_frequencies() -> None:
    counts = np.zeros(33)
    counts[A], counts[C] = 10, 2
    p = prior(counts)
    assert p[A] == pytest.approx(11 / 40) and p[C] == pytest.approx(3 / 40)
    assert p[D] == pytest.approx(1 / 40) and p[0] == p[32] == 0 and p.sum() == pytest.approx(1)


def test_composition_leaves_every_masked_residue_out_by_hand() -> None:
    comp = CompositionBaseline(PI, alpha=2.0)
    dist = comp.distributions([_ids("AAAC"), _ids("AAAC")], [np.array([0]), np.array([0, 3])])
    # record 0 sees A,A,C (n=3): p(A) = (2 + 2/28) / 5; record 1 sees A,A (n=2)
    assert dist[0, A] == pytest.approx((2 + 2 / 28) / 5)
    assert dist[0, C] == pytest.approx((1 + 2 / 28) / 5)
    assert dist[0, D] == pytest.approx((2 / 28) / 5)
    assert dist[1, A] == pytest.approx((2 + 2 / 28) / 4) and dist[1, C] == pytest.approx((2 / 28) / 4)
    assert np.allclose(dist.sum(axis=1), 1.0)
    assert comp.score([_ids("AAAC")], [np.array([0, 1])]).shape == (2, 33)


def test_composition_fit_matches_brute_force_and_finds_the_extremes() -> None:
    rng = np.random.default_rng(0)
    tokens = [_ids("AACDA"), _ids("CCCDA"), _ids("DDAAC")]
    positions = [np.array([0, 2]), np.array([4]), np.array([1, 3])]
    comp = CompositionBaseline(PI).fit(tokens, positions)
    k = 20
    brute = 0.0
    for t, pos in zip(tokens, positions):
        seen = np.delete(t, pos)
        for x in t[pos]:
            brute += math.log((np.sum(seen == x) + GRID[k] * PI[x]) / (len(seen) + GRID[k]))
    assert comp.curve[k] == pytest.approx(brute)
    homopolymers = [_ids(a * 50) for a in "ACDEFGHIKL"]
    pos = [np.arange(0, 50, 7) for _ in homopolymers]
    assert CompositionBaseline(PI).fit(homopolymers, pos).alpha == GRID[0]
    iid = [TOK.standard_ids[rng.integers(0, 20, 400)].astype(np.uint8) for _ in range(50)]
    pi20 = prior(np.bincount(np.concatenate(iid), minlength=33))
    alpha = CompositionBaseline(pi20).fit(iid, [np.arange(0, 400, 5)] * 50).alpha
    assert alpha >= 1e3  # no per-protein signal: the prior (the unigram) dominates


def test_composition_with_an_infinite_prior_is_the_unigram() -> None:
    counts = np.zeros(33)
    counts[[A, C, D]] = [50, 30, 20]
    tokens, pos = [_ids("ACDDAACA"), _ids("CCAD")], [np.array([0, 5]), np.array([1, 2, 3])]
    scorer = MaskedScorer("composition", CompositionBaseline(prior(counts), alpha=1e15))
    scorer.add(tokens, pos)
    true = np.concatenate([t[p] for t, p in zip(tokens, pos)])
    assert scorer.metrics()["perplexity"] == pytest.approx(
        unigram_baseline(counts, true)["perplexity"], rel=1e-9)


def test_triple_counts_frame_each_protein() -> None:
    tri = triple_counts([_ids("AC"), _ids("A")])
    assert tri.sum() == 3
    assert tri[0, A, C] == 1 and tri[A, C, 2] == 1 and tri[0, A, 2] == 1


def test_neighbour_tables_by_hand() -> None:
    # training "ACA" twice: triples (cls,A,C) x2, (A,C,A) x2, (C,A,eos) x2
    nb = NeighbourBaseline(PI, triple_counts([_ids("ACA"), _ids("ACA")]), b1=1.0, b2=2.0)
    plr, pl, pr = nb.tables()
    # p_L(C|A) = (2 + 1/28) / (2 + 1); p_R(C|A) = (2 + 1/28) / 3; c(A,.,A) = 2
    pl_c = (2 + 1 / 28) / 3
    assert pl[A, C] == pytest.approx(pl_c) and pr[A, C] == pytest.approx(pl_c)
    assert plr[A, A, C] == pytest.approx((2 + 2 * pl_c) / (2 + 2))
    # unseen context (D, D): p_L(.|D) = p_R(.|D) = pi, so p(.|D,D) = pi
    assert np.allclose(plr[D, D], PI) and np.allclose(plr.sum(axis=2), 1.0)


def test_neighbour_leave_one_out_matches_brute_force() -> None:
    tokens = [_ids("ACDAC"), _ids("CADDA"), _ids("AACD")]
    tri = triple_counts(tokens)
    nb = NeighbourBaseline(PI, tri, b1=0.7)
    brute_pairs = brute_triples = 0.0
    for l, x, r in zip(*np.nonzero(tri)):
        one = tri.copy()
        one[l, x, r] -= 1  # this occurrence removed from every count
        plr, pl, pr = NeighbourBaseline(PI, one, b1=0.7, b2=3.0).tables()
        n = tri[l, x, r]
        brute_triples += n * math.log(plr[l, r, x])
        brute_pairs += n * (math.log(pl[l, x]) + math.log(pr[r, x]))
    assert nb._loo_triples(3.0) == pytest.approx(brute_triples)
    assert nb._loo_pairs(0.7) == pytest.approx(brute_pairs)


def test_neighbours_back_off_at_masked_neighbours_and_learn_a_periodic_sequence() -> None:
    nb = NeighbourBaseline(PI, triple_counts([_ids("ACD" * 30)] * 4)).fit()
    assert nb.b2 == GRID[0]  # a deterministic context: almost no smoothing wins
    plr, pl, pr = nb.tables()
    probs = nb.score([_ids("ACDACD")], [np.array([0, 1, 4])])
    assert np.allclose(probs[0], pl[0])  # left <cls> known, right (C) masked: p(x | left)
    assert np.allclose(probs[1], pr[D])  # left (A) masked, right D known: p(x | right)
    assert np.allclose(probs[2], plr[A, D])  # both known
    assert probs[2].argmax() == C and probs[2, C] > 0.99
    only = nb.score([_ids("ACD")], [np.array([0, 1, 2])])
    assert np.allclose(only[1], PI)  # both neighbours masked: the unigram


def test_evaluate_reports_both_baselines_on_the_models_positions(tmp_path: Path, masked_run: Path,
                                                                fasta: Path) -> None:
    from sciformer.evaluation.run import evaluate

    m = evaluate(masked_run, fasta, tmp_path / "ev")
    b = m["baselines"]
    assert list(b) == ["unigram", "composition", "neighbours"]
    for name in ("composition", "neighbours"):
        assert b[name]["n_masked"] == m["model"]["n_masked"] == b["unigram"]["n_masked"] > 0
        assert b[name]["perplexity"] > 1 and "unavailable" not in b[name]
    summary = (tmp_path / "ev/summary.md").read_text()
    assert "| composition |" in summary and "masked_baselines.png" in summary
    assert (tmp_path / "ev/masked_baselines.png").stat().st_size > 1000
    # the training file gone: the fitted baselines say why, the unigram still stands
    moved = fasta.with_suffix(".moved")
    fasta.rename(moved)
    m = evaluate(masked_run, moved, tmp_path / "ev2")
    assert m["baselines"]["composition"]["perplexity"] is None
    assert "not found" in m["baselines"]["neighbours"]["unavailable"]
    assert "not found" in m["baselines_unavailable"]
    assert m["baselines"]["unigram"]["perplexity"] > 1
    assert json.loads((tmp_path / "ev2/metrics.json").read_text())["baselines"]["composition"][
        "unavailable"].startswith("training file")

"""Held-out splits: the seeded random split, k-mer incidence, and the identity-aware split
that keeps proteins sharing more than a threshold of their k-mers on one side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sciformer.config import DataConfig, RunConfig
from sciformer.errors import ConfigError
from sciformer.splits import (
    cross_shared_fraction,
    identity_split,
    kmer_incidence,
    max_shared_fraction,
    record_split,
    split_indices,
)
from sciformer.tokenizers.protein import ProteinTokenizer

TOK = ProteinTokenizer()


def _ids(text: str) -> np.ndarray:
    return TOK.encode(text, add_special=False).astype(np.uint8)


def _random_proteins(n: int, length: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [TOK.standard_ids[rng.integers(0, 20, length)].astype(np.uint8) for _ in range(n)]


def test_split_indices_sizes_and_seed() -> None:
    train, val = split_indices(30, 0.1, 200, seed=3)
    assert len(val) == 3 and len(train) == 27 and sorted(train + val) == list(range(30))
    assert split_indices(30, 0.1, 200, seed=3) == (train, val)
    assert len(split_indices(3000, 0.1, 200, 0)[1]) == 200  # capped by val_max
    assert split_indices(5, 0.01, 200, 0)[1] != []  # at least one when a fraction is asked
    assert split_indices(1, 0.5, 200, 0) == ([0], [])
    assert len(split_indices(12, 0.1, 200, 0, at_least=3)[1]) == 3  # a floor on the size
    assert len(split_indices(30, 0.5, 200, 0, at_least=3)[1]) == 15  # the fraction, if larger
    assert len(split_indices(3, 0.1, 200, 0, at_least=5)[1]) == 2  # never all of them
    assert len(split_indices(12, 0.1, 2, 0, at_least=3)[1]) == 2  # val_max still caps it
    assert split_indices(12, 0.0, 200, 0, at_least=3)[1] == []  # no split asked, none made


def test_kmer_incidence_counts_distinct_standard_kmers() -> None:
    a = kmer_incidence([_ids("ACDEFG"), _ids("ACDXFG"), _ids("AAAAAA"), _ids("AC")], k=3)
    sizes = np.asarray(a.sum(axis=1)).ravel().tolist()
    # ACD CDE DEF EFG | ACD only (windows with X left out) | AAA once | too short
    assert sizes == [4, 1, 1, 0]
    shared = (a @ a.T).toarray()
    assert shared[0, 1] == 1 and shared[0, 2] == 0


def _pair_across_random_split(tokens: list[np.ndarray], n_keep: int) -> tuple[int, int]:
    """Make record b copy the first `n_keep` residues of a, where the random split (seed 0)
    holds a out and trains on b; returns (a, b)."""
    train, val = split_indices(len(tokens), 0.2, 200, seed=0)
    a, b = val[0], train[0]
    tokens[b] = np.concatenate([tokens[a][:n_keep], tokens[b][n_keep:]])
    return a, b


def test_identity_split_keeps_a_similar_pair_on_one_side() -> None:
    tokens = _random_proteins(40, 100, seed=1)
    a, b = _pair_across_random_split(tokens, 60)  # 53 of each one's 93 8-mers shared: 0.57
    random_train, random_val = split_indices(40, 0.2, 200, seed=0)
    train, val, info = identity_split(tokens, 0.2, 200, seed=0, threshold=0.5, k=8)
    assert (a in val) == (b in val)
    assert len(val) == len(random_val) == 8 and sorted(train + val) == list(range(40))
    assert info["random_split_similar_heldout"] == 1
    assert info["moved_to_heldout"] == info["moved_to_train"] == 1
    assert info["largest_cluster"] == 2 and info["n_clusters"] == 39
    assert max_shared_fraction(tokens, val).max() <= 0.5
    assert max_shared_fraction(tokens, random_val).max() == pytest.approx(53 / 93)
    # above the pair's similarity nothing is linked: exactly the random split
    train6, val6, info6 = identity_split(tokens, 0.2, 200, seed=0, threshold=0.6, k=8)
    assert (train6, val6) == (random_train, random_val)
    assert info6["moved_to_train"] == 0 and info6["n_clusters"] == 40


def test_identity_split_fails_clearly_when_everything_is_one_cluster() -> None:
    base = _random_proteins(1, 200, seed=2)[0]
    tokens = [base.copy() for _ in range(10)]
    with pytest.raises(ConfigError, match="data.split_identity.*data.split_by=random"):
        identity_split(tokens, 0.2, 200, seed=0)


def test_record_split_dispatch_and_config_checks() -> None:
    tokens = _random_proteins(10, 30, seed=3)
    assert record_split(tokens, "random", 0.2, 200, 0, 0.5, 8) == (
        *split_indices(10, 0.2, 200, 0), {"method": "random"})
    assert record_split(tokens, "identity", 0.2, 200, 0, 0.5, 8)[2]["method"] == "identity"
    assert DataConfig().split_by == "identity"
    for field, value in (("split_by", "cluster"), ("split_identity", 0.0), ("split_kmer", 20)):
        with pytest.raises(ConfigError, match=f"data.{field}"):
            DataConfig(**{field: value}).validate()


def test_masked_task_records_the_split(tmp_path: Path) -> None:
    from sciformer.tasks.masked import MaskedTask

    tokens = _random_proteins(30, 80, seed=4)
    a, b = _pair_across_random_split(tokens, 70)
    fasta = tmp_path / "p.fa"
    fasta.write_text("".join(f">p{i}\n{TOK.decode(t)}\n" for i, t in enumerate(tokens)))
    cfg = RunConfig(data=DataConfig(task="masked", val_fraction=0.2, crop_length=64,
                                    tokens_per_batch=512))
    split = json.loads(json.dumps(MaskedTask(cfg, [fasta]).split()))
    assert split["method"] == "identity" and split["k"] == 8 and split["threshold"] == 0.5
    assert split["moved_to_heldout"] == 1 and (a in split["heldout"]) == (b in split["heldout"])
    cfg.data.split_by = "random"
    split = MaskedTask(cfg, [fasta]).split()
    assert split["method"] == "random" and a in split["heldout"] and b not in split["heldout"]


def test_cross_shared_fraction_takes_the_larger_of_the_two_records_fractions() -> None:
    short = _ids("ACDEFGHIK")  # 2 distinct 8-mers
    long = _ids("ACDEFGHIKLMNPQRS")  # 9 distinct 8-mers, holding both of `short`'s
    other = _ids("WWWWWWWWWY")
    frac = cross_shared_fraction([short, other], [long], 8)
    assert frac.shape == (2, 1)
    assert frac[0, 0] == 1.0  # all of short's 8-mers (2 of long's 9: the larger fraction)
    assert frac[1, 0] == 0.0
    np.testing.assert_allclose(cross_shared_fraction([long], [short], 8), [[1.0]])

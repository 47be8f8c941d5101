"""Held-out splits by whole record: seeded random, and identity-aware for proteins.

A random held-out split of one proteome leaves paralogues on both sides, so a model can
"predict" a held-out protein by remembering its training twin. The identity-aware split
(`identity_split`) keeps similar proteins on the same side.

Similarity is shared k-mers (default k = 8), the short-word filter that CD-HIT uses to decide
that two sequences cannot reach an identity threshold without an alignment (Li & Godzik 2006,
Bioinformatics 22:1658) and MMseqs2's prefilter (Steinegger & Soding 2017, Nat. Biotechnol.
35:1026). For proteins i, j with distinct k-mer sets K_i, K_j, the fraction of i's k-mers found
in j is |K_i & K_j| / |K_i|. Two proteins are linked when either fraction exceeds the
threshold t, i.e. |K_i & K_j| > t * min(|K_i|, |K_j|). Linked proteins form clusters (the
connected components, single linkage), and whole clusters are placed on one side, so no
held-out protein shares more than t of its k-mers with any training protein.

Placement walks the same seeded permutation as the random split: at each protein not yet
placed, its whole cluster goes to the held-out side if it still fits the held-out size
(`val_fraction`, capped at `val_max`), else to training. With no similar pairs this
reproduces the random split exactly; `moved_to_train` / `moved_to_heldout` in the recorded
info count the proteins whose side differs from that random split.

K-mers holding a letter other than the 20 standard amino acids (X, B, Z, U, O, gaps) are not
counted (an unknown residue is no evidence of identity); proteins shorter than k have no
k-mers and are never linked. Shared k-mers are counted with a sparse product A A^T of the
protein-by-k-mer incidence matrix in row blocks (C speed, memory bounded by the block).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from sciformer.errors import ConfigError
from sciformer.tokenizers.protein import ALPHABET, STANDARD_AMINO_ACIDS

#: Rows of the incidence matrix multiplied at once when counting shared k-mers.
BLOCK = 2048
#: Largest k whose base-20 code fits an int64 exactly (20**14 < 2**63).
MAX_K = 14


def n_heldout(n: int, val_fraction: float, val_max: int, at_least: int = 1) -> int:
    """Size of the held-out side: round(n * fraction), at least `at_least` (never more than
    n - 1) when fraction > 0, capped at val_max; 0 with fewer than two records."""
    if n < 2:
        return 0
    n_val = int(round(n * val_fraction))
    if val_fraction > 0:
        n_val = max(n_val, min(at_least, n - 1), 1)
    return min(val_max, n_val)


def split_indices(n: int, val_fraction: float, val_max: int, seed: int, at_least: int = 1
                  ) -> tuple[list[int], list[int]]:
    """Seeded split by whole record: (train indices, held-out indices), both sorted."""
    n_val = n_heldout(n, val_fraction, val_max, at_least)
    perm = np.random.default_rng(seed).permutation(n)
    return sorted(perm[n_val:].tolist()), sorted(perm[:n_val].tolist())


def kmer_incidence(tokens: list[np.ndarray], k: int) -> sp.csr_matrix:
    """(n_records, n_distinct_kmers) 0/1 matrix: which k-mers (standard letters only) each
    record holds. `tokens` are residue ids in the ESM-2 alphabet."""
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be in 1..{MAX_K}, got {k}")
    letter = np.full(256, -1, dtype=np.int64)  # residue id -> 0..19, anything else -1
    letter[[ALPHABET.index(a) for a in STANDARD_AMINO_ACIDS]] = np.arange(20)
    lengths = np.array([len(t) for t in tokens], dtype=np.int64)
    if lengths.sum() == 0:
        return sp.csr_matrix((len(tokens), 0), dtype=np.int32)
    cat = letter[np.concatenate(tokens).astype(np.int64)]  # (N,) over all records
    n_win = max(len(cat) - k + 1, 0)
    code = np.zeros(n_win, dtype=np.int64)
    bad = np.zeros(n_win, dtype=bool)
    for j in range(k):  # base-20 code of the window starting at each position
        part = cat[j:j + n_win]
        code = code * 20 + np.maximum(part, 0)
        bad |= part < 0
    record = np.repeat(np.arange(len(tokens)), lengths)[:n_win]
    ends = np.cumsum(lengths)[record]  # end (exclusive) of the window's record
    ok = ~bad & (np.arange(n_win) + k <= ends)  # inside one record, standard letters only
    cols, col_of = np.unique(code[ok], return_inverse=True)
    a = sp.csr_matrix((np.ones(int(ok.sum()), dtype=np.int32), (record[ok], col_of.ravel())),
                      shape=(len(tokens), len(cols)))
    a.sum_duplicates()
    a.data[:] = 1  # a set, not a multiset: repeats inside one protein count once
    return a


def similar_pairs(tokens: list[np.ndarray], k: int, threshold: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Linked pairs i != j (both orders): (i, j, shared k-mers, |K_i| per record), where
    shared > threshold * min(|K_i|, |K_j|)."""
    a = kmer_incidence(tokens, k)
    sizes = np.asarray(a.sum(axis=1)).ravel().astype(np.int64)
    at = a.T.tocsr()
    rows, cols, shared = [], [], []
    for start in range(0, a.shape[0], BLOCK):
        s = (a[start:start + BLOCK] @ at).tocoo()  # (block, n) shared k-mer counts
        i, j = s.row + start, s.col
        keep = (i != j) & (s.data > threshold * np.minimum(sizes[i], sizes[j]))
        rows.append(i[keep])
        cols.append(j[keep])
        shared.append(s.data[keep].astype(np.int64))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, np.int64)
    return cat(rows), cat(cols), cat(shared), sizes


def identity_split(tokens: list[np.ndarray], val_fraction: float, val_max: int, seed: int,
                   threshold: float = 0.5, k: int = 8) -> tuple[list[int], list[int], dict[str, Any]]:
    """(train indices, held-out indices, info) with whole similarity clusters on one side.

    See the module docstring for the method. `info` holds what split.json records: method,
    k, threshold, clusters, the random split's held-out proteins that broke the threshold,
    and how many proteins changed side against that random split.
    """
    n = len(tokens)
    n_val = n_heldout(n, val_fraction, val_max)
    i, j, shared, sizes = similar_pairs(tokens, k, threshold)
    graph = sp.csr_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    n_clusters, label = connected_components(graph, directed=False)
    cluster_size = np.bincount(label, minlength=n_clusters)
    perm = np.random.default_rng(seed).permutation(n)  # the random split's order
    heldout = np.zeros(n, dtype=bool)
    placed = np.zeros(n_clusters, dtype=bool)
    taken = 0
    for p in perm:
        c = label[p]
        if taken == n_val:
            break
        if placed[c]:
            continue
        placed[c] = True
        if taken + cluster_size[c] <= n_val:
            heldout |= label == c
            taken += int(cluster_size[c])
    if n_val > 0 and taken == 0:
        raise ConfigError(f"data.split_by=identity: no cluster of similar proteins fits a "
                          f"held-out set of {n_val} of {n} (largest cluster "
                          f"{int(cluster_size.max())}); raise data.split_identity or use "
                          "data.split_by=random")
    random_val = np.zeros(n, dtype=bool)
    random_val[perm[:n_val]] = True
    info = {"method": "identity", "k": k, "threshold": threshold,
            "n_clusters": int(n_clusters), "largest_cluster": int(cluster_size.max(initial=0)),
            "random_split_similar_heldout": _similar_heldout(random_val, i, j, shared, sizes,
                                                             threshold),
            "moved_to_train": int((random_val & ~heldout).sum()),
            "moved_to_heldout": int((~random_val & heldout).sum())}
    return np.flatnonzero(~heldout).tolist(), np.flatnonzero(heldout).tolist(), info


def _similar_heldout(heldout: np.ndarray, i: np.ndarray, j: np.ndarray, shared: np.ndarray,
                     sizes: np.ndarray, threshold: float) -> int:
    """Held-out proteins sharing more than `threshold` of their own k-mers with a training one."""
    bad = heldout[i] & ~heldout[j] & (shared > threshold * sizes[i])
    return int(np.unique(i[bad]).size)


def max_shared_fraction(tokens: list[np.ndarray], heldout: list[int], k: int = 8) -> np.ndarray:
    """For each held-out record, the largest fraction of its k-mers found in one training
    record (0 for records without k-mers): the quantity the identity split bounds."""
    n = len(tokens)
    is_val = np.zeros(n, dtype=bool)
    is_val[heldout] = True
    a = kmer_incidence(tokens, k)
    sizes = np.asarray(a.sum(axis=1)).ravel()
    s = (a[is_val] @ a[~is_val].T).toarray() if is_val.any() and (~is_val).any() else None
    if s is None or s.shape[1] == 0:
        return np.zeros(int(is_val.sum()))
    return np.divide(s.max(axis=1), sizes[is_val], out=np.zeros(len(s)),
                     where=sizes[is_val] > 0)


def cross_shared_fraction(a: list[np.ndarray], b: list[np.ndarray], k: int = 8) -> np.ndarray:
    """(len(a), len(b)) dense: for records a_i and b_j, the larger of the fractions of a_i's
    and of b_j's distinct k-mers that the two share (0 where a record has no k-mers)."""
    inc = kmer_incidence(list(a) + list(b), k).astype(np.int64)
    sizes = np.maximum(np.asarray(inc.sum(axis=1)).ravel(), 1)
    n = len(a)
    shared = (inc[:n] @ inc[n:].T).toarray()
    return np.maximum(shared / sizes[:n, None], shared / sizes[None, n:])


def record_split(tokens: list[np.ndarray], split_by: str, val_fraction: float, val_max: int,
                 seed: int, threshold: float, k: int) -> tuple[list[int], list[int], dict[str, Any]]:
    """The split `data.split_by` asks for: (train, held-out, info for split.json)."""
    if split_by == "identity":
        return identity_split(tokens, val_fraction, val_max, seed, threshold, k)
    train, val = split_indices(len(tokens), val_fraction, val_max, seed)
    return train, val, {"method": "random"}

"""The shipped protein files read cleanly, and the out-of-distribution set stays unseen:
no training protein shares more than 10% of its 8-mers with one of other_organisms.faa."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from sciformer.io.fasta import read_fasta
from sciformer.splits import kmer_incidence
from sciformer.tokenizers.protein import ProteinTokenizer

DATA = Path(__file__).resolve().parents[1] / "data" / "proteins"
TRAINING = ("train.faa", "more_proteomes.faa.gz")


def _sequences(name: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unknown letter or a dropped record would warn
        return [r.sequence for r in read_fasta(DATA / name)]


def test_the_shipped_files_read_without_warnings_and_share_no_protein():
    seqs = {name: _sequences(name) for name in (*TRAINING, "other_organisms.faa")}
    assert {k: len(v) for k, v in seqs.items()} == {
        "train.faa": 2100, "more_proteomes.faa.gz": 7009, "other_organisms.faa": 145}
    more = seqs["more_proteomes.faa.gz"]
    assert len(set(more)) == len(more)  # the build dropped repeats (train.faa is a byte copy)
    distinct = [set(v) for v in seqs.values()]
    assert sum(len(d) for d in distinct) == len(set().union(*distinct))  # none in two files


def test_no_training_protein_shares_more_than_a_tenth_of_its_8mers_with_other_organisms():
    train = [s for name in TRAINING for s in _sequences(name)]
    other = _sequences("other_organisms.faa")
    tok = ProteinTokenizer()
    a = kmer_incidence([tok.encode(s, add_special=False) for s in other + train], 8)
    a = a.astype(np.int64)
    sizes = np.maximum(np.asarray(a.sum(axis=1)).ravel(), 1)
    shared = (a[len(other):] @ a[:len(other)].T).toarray()  # (train, other) shared 8-mers
    assert shared.sum() > 0  # the check can see sharing: some short words do recur
    of_train = (shared / sizes[len(other):, None]).max()
    of_other = (shared / sizes[None, :len(other)]).max()
    assert of_train <= 0.10 and of_other <= 0.10, (of_train, of_other)

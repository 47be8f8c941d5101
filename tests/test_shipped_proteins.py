"""The shipped protein files read cleanly, and the out-of-distribution set stays unseen:
no training protein shares more than 10% of its 8-mers with one of other_organisms.faa."""

from __future__ import annotations

import warnings
from pathlib import Path

from sciformer.io.fasta import read_fasta
from sciformer.splits import cross_shared_fraction
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
    frac = cross_shared_fraction(tok.encode_many(train, add_special=False),
                                 tok.encode_many(other, add_special=False), 8)
    assert frac.max() > 0  # the check can see sharing: some short words do recur
    assert frac.max() <= 0.10, frac.max()

"""Tests for sciformer.tokenizers.protein: ESM-2 ids, round trips, batching, windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sciformer.errors import ConfigError
from sciformer.tokenizers.protein import (
    ALPHABET,
    ProteinTokenizer,
    iter_windows,
    token_budget_batches,
)

# fair-esm's ESM-2 alphabet (esm.data.Alphabet.from_architecture("ESM-1b")), written out by hand
ESM2_TOKENS = [
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y",
    "M", "H", "W", "C", "X", "B", "U", "Z", "O", ".", "-",
    "<null_1>", "<mask>",
]
RESIDUES = "LAGVSERTIDPKQNFYMHWCXBUZO.-"
TOK = ProteinTokenizer()


def test_alphabet_matches_esm2_exactly():
    assert list(ALPHABET) == ESM2_TOKENS
    assert TOK.vocab_size == 33
    assert (TOK.cls_id, TOK.pad_id, TOK.eos_id, TOK.unk_id, TOK.mask_id) == (0, 1, 2, 3, 32)
    assert ESM2_TOKENS.index("L") == 4 and ESM2_TOKENS.index("-") == 30


def test_standard_ids_are_the_twenty_amino_acids():
    letters = sorted(ESM2_TOKENS[i] for i in TOK.standard_ids)
    assert letters == sorted("ACDEFGHIKLMNPQRSTVWY")
    assert TOK.standard_ids.dtype == np.int64


def test_encode_known_answer():
    ids = TOK.encode("MKVa")
    assert ids.dtype == np.int64
    assert ids.tolist() == [0, 20, 15, 7, 5, 2]
    assert TOK.encode("MKV", add_special=False).tolist() == [20, 15, 7]


def test_mask_token_any_case_and_position():
    assert TOK.encode("<mask>M<MASK><Mask>", add_special=False).tolist() == [32, 20, 32, 32]
    assert TOK.decode(TOK.encode("A<mask>C")) == "A<mask>C"


def test_unknown_letters_map_to_unk():
    ids = TOK.encode("AJ#é*<C", add_special=False)
    assert ids.tolist() == [5, 3, 3, 3, 3, 3, 23]
    assert TOK.unknown_count("AJ#é*<C") == 5
    assert TOK.unknown_count("MK<mask>X") == 0
    assert TOK.decode(ids) == "A<unk><unk><unk><unk><unk>C"


def test_decode_skip_special_only_drops_framing():
    ids = [0, 5, 3, 32, 31, 2, 1, 1]
    assert TOK.decode(ids) == "A<unk><mask>"
    assert TOK.decode(ids, skip_special=False) == "<cls>A<unk><mask><null_1><eos><pad><pad>"
    assert TOK.decode(torch.tensor(ids)) == "A<unk><mask>"
    with pytest.raises(ValueError):
        TOK.decode([40])


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=RESIDUES + RESIDUES.lower(), max_size=300))
def test_round_trip_encode_decode(seq):
    ids = TOK.encode(seq)
    assert len(ids) == len(seq) + 2 and ids[0] == TOK.cls_id and ids[-1] == TOK.eos_id
    assert TOK.decode(ids) == seq.upper()
    assert TOK.unknown_count(seq) == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(4, 32).filter(lambda i: i != 31), max_size=100))
def test_round_trip_ids_decode_encode(ids):
    """Residue and <mask> ids survive decode -> encode exactly."""
    assert TOK.encode(TOK.decode(ids), add_special=False).tolist() == ids


def test_pad_batch():
    batch = TOK.pad_batch([TOK.encode("MK"), TOK.encode("A"), TOK.encode("GGGG")])
    assert batch.dtype == torch.int64 and batch.shape == (3, 6)
    assert batch[1].tolist() == [0, 5, 2, 1, 1, 1]
    assert batch[2].tolist() == [0, 6, 6, 6, 6, 2]
    assert TOK.pad_batch([]).shape == (0, 0)


# --- token-budget batching ----------------------------------------------------------------

def check_batches(lengths: list[int], budget: int, batches: list[list[int]]) -> None:
    """Every index exactly once; each batch within budget unless a lone oversize sequence."""
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for batch in batches:
        assert batch
        cost = len(batch) * max(lengths[i] for i in batch)
        assert cost <= budget or len(batch) == 1


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(1, 500), max_size=200),
    st.integers(1, 2000),
    st.booleans(),
    st.integers(0, 10),
)
def test_token_budget_batches_property(lengths, budget, shuffle, seed):
    batches = token_budget_batches(lengths, budget, shuffle=shuffle, seed=seed)
    check_batches(lengths, budget, batches)


def test_token_budget_batches_known_answer_and_oversize():
    lengths = [5, 3, 100, 4, 4, 2]
    batches = token_budget_batches(lengths, 10, shuffle=False)
    assert batches == [[5, 1], [3, 4], [0], [2]]  # sorted by length; 100 > budget alone


def test_token_budget_batches_seeded_shuffle():
    lengths = list(np.random.default_rng(0).integers(10, 400, 300))
    a = token_budget_batches(lengths, 1000, shuffle=True, seed=3)
    b = token_budget_batches(lengths, 1000, shuffle=True, seed=3)
    c = token_budget_batches(lengths, 1000, shuffle=True, seed=4)
    plain = token_budget_batches(lengths, 1000, shuffle=False)
    assert a == b and a != c
    assert sorted(map(sorted, a)) == sorted(map(sorted, plain))  # same batches, new order
    assert a != plain


def test_token_budget_batches_rejects_bad_budget():
    with pytest.raises(ConfigError, match="tokens_per_batch"):
        token_budget_batches([3], 0, shuffle=False)


# --- windows ------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.integers(0, 3000), st.integers(1, 400), st.data())
def test_iter_windows_cover_everything(length, window, data):
    overlap = data.draw(st.integers(0, window - 1))
    spans = iter_windows(length, window, overlap)
    if length == 0:
        assert spans == []
        return
    assert spans[0][0] == 0 and spans[-1][1] == length
    covered = np.zeros(length, dtype=bool)
    for start, end in spans:
        assert 0 <= start < end <= length and end - start == min(window, length)
        covered[start:end] = True
    assert covered.all()
    for (s0, e0), (s1, _) in zip(spans, spans[1:]):
        assert s0 < s1 and e0 - s1 >= overlap


def test_iter_windows_known_answer_and_errors():
    assert iter_windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert iter_windows(4, 10, 2) == [(0, 4)]
    for window, overlap in [(0, 0), (5, 5), (5, -1)]:
        with pytest.raises(ValueError):
            iter_windows(10, window, overlap)

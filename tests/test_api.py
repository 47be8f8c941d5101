"""The Python API as a notebook user calls it: sciformer.load -> ProteinLM, with strings and
Biopython SeqRecords, against the CLI's files and known identities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from Bio.Seq import Seq
from Bio.SeqRecord import SeqRecord
from click.testing import CliRunner

import sciformer
from sciformer.cli import main
from sciformer.errors import CheckpointError, InputError

SEQ = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"  # 33 residues: several windows at crop 32


def test_load_returns_the_pipeline_of_the_task(masked_run: Path):
    lm = sciformer.load(masked_run, device="cpu")
    assert isinstance(lm, sciformer.ProteinLM) and "ProteinLM" in repr(lm)
    with pytest.raises(CheckpointError, match="run directory not found"):
        sciformer.load(masked_run / "nope")


def test_fill_masks_strings_and_records_agree_with_predict(tmp_path: Path, masked_run: Path):
    lm = sciformer.load(masked_run, device="cpu")
    masked = SEQ[:5] + "<mask>" + SEQ[6:]
    by_str = lm.fill_masks(masked, top_k=3)
    by_rec = lm.fill_masks([SeqRecord(Seq(masked), id="q1")], top_k=3)
    assert by_rec[0][0]["record"] == "q1" and by_rec[0][0]["position"] == 6
    assert by_str[0][0]["residues"] == by_rec[0][0]["residues"]
    probs = by_rec[0][0]["probs"]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9
    fa = tmp_path / "q.fa"
    fa.write_text(f">q1\n{masked}\n")
    res = CliRunner().invoke(main, ["predict", str(masked_run), str(fa), "--out",
                                    str(tmp_path / "q.tsv"), "--top-k", "3"])
    assert res.exit_code == 0, res.output
    row = (tmp_path / "q.tsv").read_text().splitlines()[1].split("\t")
    assert row[2::2] == by_rec[0][0]["residues"]
    np.testing.assert_allclose([float(x) for x in row[3::2]], probs, atol=1e-4)


def test_log_probs_pseudo_perplexity_and_embed(masked_run: Path):
    lm = sciformer.load(masked_run, device="cpu")
    (logp,) = lm.log_probs(SEQ)
    assert logp.shape == (len(SEQ), 33)
    np.testing.assert_allclose(np.exp(logp).sum(axis=1), 1.0, rtol=1e-5)
    ppl = lm.pseudo_perplexity([SEQ, SEQ[:20]])
    assert ppl.shape == (2,) and np.all(ppl > 1)
    tokens = lm.tokens(SEQ)[0]
    pll = lm.pseudo_log_likelihoods(tokens)
    assert ppl[0] == pytest.approx(float(np.exp(-pll.mean())))
    emb = lm.embed([SeqRecord(Seq(SEQ), id="a"), SEQ[:10]], layers=[0, -1], per_residue=True)
    assert emb["ids"] == ["a", "seq1"] and emb["layers"] == [0, 1]
    assert emb["pooled"].shape == (2, 2, 32) and emb["per_residue"][1].shape == (2, 10, 32)
    np.testing.assert_allclose(emb["pooled"][1], emb["per_residue"][1].mean(axis=1), rtol=1e-5)
    with pytest.raises(InputError, match="<mask>"):
        lm.pseudo_perplexity(SEQ[:5] + "<mask>")


def test_score_variants_is_the_masked_marginal(masked_run: Path):
    lm = sciformer.load(masked_run, device="cpu")
    (row,) = lm.score_variants(SEQ, ["K2R"])
    (logp,) = lm.log_probs(SEQ[0] + "<mask>" + SEQ[2:])  # position 2 masked alone
    a = lm.alphabet.index
    assert row["mutant"] == "K2R"
    assert row["masked_marginal"] == pytest.approx(logp[1, a("R")] - logp[1, a("K")], abs=1e-5)
    with pytest.raises(InputError, match="names wild-type"):
        lm.score_variants(SEQ, ["A2G"])

"""Variant-effect scores: known answers from `masked_log_probs`, parsing and every bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sciformer.cli import main
from sciformer.errors import InputError
from sciformer.pipelines import load
from sciformer.pipelines.residues import masked_log_probs
from sciformer.runs import load_model as load_run
from sciformer.tokenizers.protein import TOKENIZER
from sciformer.variants import Mutation, parse_mutant, score_variants_file
from tests.test_embed import tiny_protein_run


def score_variants(run: Path, wt: Path, variants: Path, out: Path) -> Path:
    return score_variants_file(load(run, "cpu"), wt, variants, out)


WT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"  # 33 residues; crop 16 -> several windows


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    run = tiny_protein_run(tmp_path / "run", crop=16)
    wt = tmp_path / "wt.fa"
    wt.write_text(f">wt some protein\n{WT}\n")
    return run, wt


def _logp(run: Path, seq: np.ndarray, pos: list[int]) -> np.ndarray:
    model, cfg, _ = load_run(run)
    (_, lp), = masked_log_probs(model, [seq], [np.array(pos)], cfg.data.crop_length,
                                cfg.data.tokens_per_batch, torch.device("cpu"))
    return lp


def test_scores_match_masked_log_probs(tmp_path: Path, setup) -> None:
    run, wt = setup
    variants = tmp_path / "v.csv"
    variants.write_text("mutant,assay\nK2R,1.5\nA4G:L23W,-0.2\nT3T,0\n")
    out = tmp_path / "scores.csv"
    res = CliRunner().invoke(main, ["predict", str(run), str(wt), "--variants", str(variants),
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(out.open()))
    assert [r["mutant"] for r in rows] == ["K2R", "A4G:L23W", "T3T"]
    assert [r["assay"] for r in rows] == ["1.5", "-0.2", "0"]  # passed through
    ids = TOKENIZER.encode(WT, add_special=False)
    a = TOKENIZER.alphabet.index
    unmasked = _logp(run, ids, list(range(len(WT))))

    def masked_at(pos: int) -> np.ndarray:
        m = ids.copy()
        m[pos] = TOKENIZER.mask_id
        return _logp(run, m, [pos])[0]

    want_mm = [masked_at(1)[a("R")] - masked_at(1)[a("K")],
               masked_at(3)[a("G")] - masked_at(3)[a("A")]
               + masked_at(22)[a("W")] - masked_at(22)[a("L")], 0.0]
    want_wt = [unmasked[1, a("R")] - unmasked[1, a("K")],
               unmasked[3, a("G")] - unmasked[3, a("A")]
               + unmasked[22, a("W")] - unmasked[22, a("L")], 0.0]
    np.testing.assert_allclose([float(r["masked_marginal"]) for r in rows], want_mm, atol=2e-6)
    np.testing.assert_allclose([float(r["wt_marginal"]) for r in rows], want_wt, atol=2e-6)
    assert abs(want_mm[0] - want_wt[0]) > 1e-4  # the two scores really differ


def test_parse_mutant() -> None:
    assert parse_mutant("A42G", "x") == [Mutation("A", 41, "G")]
    assert parse_mutant(" a42g:R57K ", "x") == [Mutation("A", 41, "G"), Mutation("R", 56, "K")]
    assert str(Mutation("A", 41, "G")) == "A42G"


@pytest.mark.parametrize("mutant, words", [
    ("A4", "'A4' is not like A42G"),
    ("A0G", "'A0G' is not like A42G"),
    ("K2R:K2A", "position 2 is mutated twice"),
    ("Y34A", "Y34A is beyond the end of 'wt'"),
    ("Q2A", "Q2A names wild-type Q at position 2 but 'wt' has K"),
    ("", "empty mutant"),
])
def test_bad_mutations_name_line_and_mutation(tmp_path: Path, setup, mutant: str,
                                              words: str) -> None:
    run, wt = setup
    variants = tmp_path / "bad.csv"
    variants.write_text(f"mutant,note\nK2R,ok\n{mutant},bad\n")
    out = tmp_path / "s.csv"
    with pytest.raises(InputError, match="bad.csv line 3") as err:
        score_variants(run, wt, variants, out)
    assert words in str(err.value)
    assert not out.exists()
    res = CliRunner().invoke(main, ["predict", str(run), str(wt), "--variants", str(variants),
                                    "--out", str(out)])
    assert res.exit_code == 1 and "bad.csv line 3" in res.output and "Traceback" not in res.output


def test_csv_and_record_problems(tmp_path: Path, setup) -> None:
    run, wt = setup
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("variant\nK2R\n")
    with pytest.raises(InputError, match="nocol.csv line 1: no 'mutant' column"):
        score_variants(run, wt, nocol, tmp_path / "s.csv")
    two = tmp_path / "two.fa"
    two.write_text(f">wt\n{WT}\n>other\nMAAAK\n")
    plain = tmp_path / "plain.csv"
    plain.write_text("mutant\nK2R\n")
    with pytest.raises(InputError, match="plain.csv line 2: .*add a 'record' column"):
        score_variants(run, two, plain, tmp_path / "s.csv")
    rec = tmp_path / "rec.csv"
    rec.write_text("record,mutant\nother,A2G\nwt,K2R\nmissing,K2R\n")
    with pytest.raises(InputError, match="rec.csv line 4: record 'missing'"):
        score_variants(run, two, rec, tmp_path / "s.csv")
    rec.write_text("record,mutant\nother,A2G\nwt,K2R\n")
    rows = list(csv.DictReader(score_variants(run, two, rec, tmp_path / "s.csv").open()))
    assert [r["record"] for r in rows] == ["other", "wt"]

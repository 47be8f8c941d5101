"""Linear probes on frozen embeddings: label kinds, features, metrics.json, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sciformer.cli import main
from sciformer.errors import InputError
from sciformer.evaluation.probe import (
    composition,
    fit_and_score,
    label_kind,
    read_labelled,
    residue_baseline_features,
)
from sciformer.tokenizers.protein import TOKENIZER
from tests.test_embed import tiny_protein_run

AA = list("ACDEFGHIKLMNPQRSTVWY")


def _proteins(n: int, seed: int = 0) -> list[str]:
    """Random proteins; half are rich in L/I/V/F (a class composition can tell apart)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = np.ones(20)
        if i % 2:
            p[[AA.index(a) for a in "LIVF"]] = 8.0
        out.append("".join(rng.choice(AA, int(rng.integers(20, 50)), p=p / p.sum())))
    return out


def _invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_sequence_probe_categorical_from_csv(tmp_path: Path) -> None:
    run = tiny_protein_run(tmp_path / "run")
    data = tmp_path / "lab.csv"
    rows = ["id,sequence,label"] + [f"p{i},{s},{'oily' if i % 2 else 'plain'}"
                                    for i, s in enumerate(_proteins(40))]
    data.write_text("\n".join(rows) + "\n")
    res = _invoke("evaluate", run, data, "--out-dir", tmp_path / "ev", "--probe", "sequence")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert m["task"] == "probe" and m["probe"] == "sequence" and m["label_kind"] == "categorical"
    assert m["n_examples"] == 8 and m["n_train"] == 32 and m["classes"] == ["oily", "plain"]
    assert 0 <= m["model"]["accuracy"] <= 1
    assert m["baselines"]["composition"]["accuracy"] >= 0.75  # composition separates them
    assert m["baselines"]["majority"]["accuracy"] == 0.5  # stratified split
    assert "composition" in res.output and "probe" in (tmp_path / "ev/summary.md").read_text()


def test_sequence_probe_numeric_from_fasta_header(tmp_path: Path) -> None:
    run = tiny_protein_run(tmp_path / "run")
    seqs = _proteins(30, seed=1)
    oily = [sum(s.count(a) for a in "LIVF") / len(s) for s in seqs]
    data = tmp_path / "lab.faa"
    data.write_text("".join(f">p{i} # 1 # 9 # ID=1_{i};gc_cont={v:.4f}\n{s}\n"
                            for i, (s, v) in enumerate(zip(seqs, oily))))
    res = _invoke("evaluate", run, data, "--out-dir", tmp_path / "ev", "--probe", "sequence",
                  "--label", "gc_cont")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert m["label_kind"] == "numeric" and m["label"] == "gc_cont"
    assert m["baselines"]["composition"]["spearman"] > 0.8  # the label IS a composition
    assert -1 <= m["model"]["spearman"] <= 1 and "majority" not in m["baselines"]


def test_residue_probe(tmp_path: Path) -> None:
    run = tiny_protein_run(tmp_path / "run")
    seqs = _proteins(20, seed=2)
    labels = ["".join("H" if a in "LIVF" else "-" for a in s) for s in seqs]
    data = tmp_path / "tm.csv"
    data.write_text("id,sequence,label\n" + "".join(
        f"p{i},{s},{lab}\n" for i, (s, lab) in enumerate(zip(seqs, labels))))
    res = _invoke("evaluate", run, data, "--out-dir", tmp_path / "ev", "--probe", "residue")
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert m["probe"] == "residue" and m["n_examples"] == 4
    assert m["n_test_items"] == sum(len(seqs[i]) for i in range(20)) - m["n_train_items"]
    assert m["baselines"]["composition"]["accuracy"] == 1.0  # the residue itself decides


def test_label_kinds_and_features() -> None:
    assert label_kind(["a", "b"]) == "categorical"
    assert label_kind(["0", "1", "1"]) == "categorical"  # a few integers are classes
    assert label_kind([str(v) for v in np.linspace(0, 1, 20)]) == "numeric"
    assert label_kind(["1", "nan"]) == "categorical"
    tokens = TOKENIZER.encode("AACX", add_special=False)
    comp = composition(tokens)
    assert comp[list("LAGVSERTIDPKQNFYMHWC").index("A")] == 0.5 and comp.sum() == 0.75
    feats = residue_baseline_features(TOKENIZER.encode("ACDEFG", add_special=False), half=1)
    assert feats.shape == (6, 40) and np.allclose(feats[:, :20].sum(1), 1)
    np.testing.assert_allclose(feats[0, 20:].sum(), 1.0)  # window fractions sum to one
    x = np.arange(20.0)[:, None]
    scores = fit_and_score(x[::2], x[::2, 0] * 2, x[1::2], x[1::2, 0] * 2, "numeric")
    assert scores["spearman"] == pytest.approx(1.0) and scores["rmse"] < 0.5


@pytest.mark.parametrize("content, name, words", [
    ("id,seq,label\np1,ACD,a\n", "x.csv", "x.csv line 1: no 'sequence' column"),
    ("id,sequence,label\np1,ACD,a\np1,ACE,b\n", "x.csv", "x.csv line 3: duplicate id 'p1'"),
    ("id,sequence,label\np1,ACD,a\np2,,b\n", "x.csv", "x.csv line 3: empty"),
    (">p1 label=a\nACD\n>p2 other=b\nACE\n", "x.fa", "x.fa line 3: record 'p2' has no 'label='"),
    ("id,sequence,label\np1,ACD,a\n", "x.csv", "at least 2 labelled proteins"),
])
def test_bad_labelled_files(tmp_path: Path, content: str, name: str, words: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError) as err:
        read_labelled(path)
    assert words in str(err.value) and name in str(err.value)


def test_bad_residue_labels_and_single_class(tmp_path: Path) -> None:
    run = tiny_protein_run(tmp_path / "run")
    short = tmp_path / "short.csv"
    short.write_text("id,sequence,label\np1,ACDE,--H\np2,ACDE,----\n")
    res = _invoke("evaluate", run, short, "--out-dir", tmp_path / "a", "--probe", "residue")
    assert res.exit_code == 1 and "short.csv" in res.output and "'p1' has 4 residues" in res.output
    one = tmp_path / "one.csv"
    one.write_text("id,sequence,label\n" + "".join(f"p{i},ACDEK,same\n" for i in range(6)))
    res = _invoke("evaluate", run, one, "--out-dir", tmp_path / "b", "--probe", "sequence")
    assert res.exit_code == 1 and "one.csv" in res.output and "single class" in res.output

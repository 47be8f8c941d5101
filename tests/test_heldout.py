"""Held-out scoring is decided by content: copies, .gz and same-named files of other content."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from sciformer.cli import main
from sciformer.errors import InputError
from sciformer.evaluation.run import evaluate
from sciformer.io.trajectories import write_trajectories
from tests.conftest import write_fasta


def _heldout_count(run: Path) -> int:
    return len(json.loads((run / "split.json").read_text())["heldout"])


@pytest.mark.parametrize("how", ["copy", "gz"])
def test_a_copy_of_the_training_file_scores_only_heldout_records(tmp_path: Path, fasta: Path,
                                                                  masked_run: Path, how: str):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if how == "copy":
        data = shutil.copy(fasta, elsewhere / "renamed.fa")
    else:
        data = elsewhere / "prot.fa.gz"
        data.write_bytes(gzip.compress(fasta.read_bytes()))
    m = evaluate(masked_run, data, tmp_path / "r", device="cpu")
    assert m["n_examples"] == _heldout_count(masked_run) == 6
    assert "skipped as used in training" in m["scope"]


def test_same_name_other_content_is_scored_whole(tmp_path: Path, fasta: Path,
                                                 masked_run: Path):
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    same_name = write_fasta(other_dir / fasta.name, n=9, seed=7)
    m = evaluate(masked_run, same_name, tmp_path / "r", device="cpu")
    assert m["n_examples"] == 9 and "not used in training" in m["scope"]


def test_only_training_records_is_an_error(tmp_path: Path, fasta: Path, masked_run: Path):
    split = json.loads((masked_run / "split.json").read_text())
    lines = fasta.read_text().splitlines()
    train_only = tmp_path / "train_only.fa"
    train_only.write_text("\n".join(ln for i in split["train"] for ln in lines[2 * i:2 * i + 2]))
    with pytest.raises(InputError, match="were used in training"):
        evaluate(masked_run, train_only, tmp_path / "r", device="cpu")
    assert not (tmp_path / "r").exists()  # no report folder for a refused evaluation


def test_the_same_trajectories_twice_are_refused(tmp_path: Path):
    states = np.random.default_rng(0).normal(size=(4, 120, 2)).astype(np.float32)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_trajectories(a, states, dt=0.1)
    write_trajectories(b, states.astype(np.float64), dt=0.1)  # same content, other dtype
    res = CliRunner().invoke(main, ["pretrain", str(a), str(b), "--out-dir",
                                    str(tmp_path / "run")])
    assert res.exit_code == 1 and "repeats" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "run").exists()

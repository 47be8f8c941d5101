"""Progress bars of predict/evaluate: shown when asked, counting every record or trajectory,
and never changing what is written."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from sciformer.evaluation.run import evaluate
from sciformer.predict import predict
from tests.test_forecast import l63_run


def _last_count(err: str, unit: str) -> str:
    """The final 'n/total' of the last bar line of `unit` in captured stderr."""
    lines = [part for part in err.replace("\r", "\n").splitlines() if unit in part]
    return lines[-1].split("|")[-1].split("[")[0].strip() if lines else ""


def test_masked_predict_and_evaluate_bars(masked_run: Path, fasta: Path, tmp_path: Path, capsys):
    query = tmp_path / "q.fa"
    query.write_text("".join(f">q{i}\nMKV<mask>LLA<mask>GT\n" for i in range(7)))
    quiet = predict(masked_run, query, tmp_path / "quiet.tsv").read_text()
    capsys.readouterr()
    shown = predict(masked_run, query, tmp_path / "shown.tsv", progress=True).read_text()
    assert _last_count(capsys.readouterr().err, "seq") == "7/7" and shown == quiet
    evaluate(masked_run, fasta, tmp_path / "eval", progress=True)  # the 6 held-out of 30
    assert _last_count(capsys.readouterr().err, "seq") == "6/6"


def test_forecast_predict_and_evaluate_bars(tmp_path: Path, capsys):
    r = l63_run(tmp_path, (6, 200), (5, 200))
    predict(r["run"], r["test"], tmp_path / "quiet.h5", horizon=8)
    capsys.readouterr()
    predict(r["run"], r["test"], tmp_path / "shown.h5", horizon=8, progress=True)
    assert _last_count(capsys.readouterr().err, "traj") == "5/5"
    with h5py.File(tmp_path / "quiet.h5") as a, h5py.File(tmp_path / "shown.h5") as b:
        np.testing.assert_array_equal(a["states"][()], b["states"][()])
    m = evaluate(r["run"], r["test"], tmp_path / "eval", horizon=16, progress=True)
    assert _last_count(capsys.readouterr().err, "traj") == "5/5"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n_trajectories"] == 5
    assert m["n_trajectories"] == 5

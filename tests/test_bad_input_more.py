"""More bad inputs of docs/bad-input.md, end to end through the command line.

The companion of tests/test_bad_input.py (same helpers and the same two tiny runs): values
the model cannot hold, metadata that is not a time scale, virtual datasets whose sources are
gone, I/O errors and non-UTF-8 bytes while reading, spreadsheet CSV quirks, missing probe
labels, learned positions shorter than the crop, tampered run directories, stray torchrun
variables, seeds out of range, huge forecasts. Each bad input must end in exit code 1 (2 for
Click's own usage errors), exactly one `Error:` line naming the file, record or key, no
traceback, and nothing left behind.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from sciformer.cli import main
from sciformer.errors import SciformerError
from sciformer.io.atomic import write_json_atomic
from tests.conftest import TINY_MASKED
from tests.test_bad_input import FORECAST, fail_in_one_line, runs, sets, states_file  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def fail_usage(args: list[str], *fragments: str) -> str:
    """Click's own parameter check: exit 2, one `Error:` line with every fragment."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    errors = [ln for ln in res.output.splitlines() if ln.startswith("Error")]
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and len(errors) == 1, res.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def seqs(n: int, length: int = 30, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), length)) for _ in range(n)]


# ---- <mask> --------------------------------------------------------------------------------
def test_all_mask_records_fill_or_are_refused(tmp_path: Path, runs):
    query = tmp_path / "q.fa"
    query.write_text(">a\n<mask><mask>\n>b\nMK<mask>\n")
    out = tmp_path / "p.tsv"
    res = CliRunner().invoke(main, ["predict", str(runs["masked"]), str(query), "--out", str(out),
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output  # a record of masks only is filled like any other
    assert [r.split("\t")[:2] for r in out.read_text().splitlines()[1:]] == \
        [["a", "1"], ["a", "2"], ["b", "3"]]
    fail_in_one_line(["predict", runs["masked"], query, "--score", "--out", tmp_path / "s.tsv",
                      "--device", "cpu"], f"{query}: record 'a' holds <mask>",
                     "--score needs complete sequences")  # never scored as a residue
    report = tmp_path / "new" / "report"
    fail_in_one_line(["evaluate", runs["masked"], query, "--out-dir", report, "--device", "cpu"],
                     f"{query} line 1: record 'a' contains <mask>")
    assert not (tmp_path / "s.tsv").exists() and not (tmp_path / "new").exists()


# ---- HDF5 values and metadata --------------------------------------------------------------
def test_finite_float64_beyond_float32_is_refused(tmp_path: Path, runs):
    states = np.random.default_rng(0).normal(size=(4, 60, 3))
    states[1, 5, 0] = 1e300  # finite in float64, inf once cast to the model's float32
    bad = states_file(tmp_path / "big.h5", states)
    frag = "trajectory 1 step 5: value 1e+300 in states is beyond the float32 range"
    fail_in_one_line(["pretrain", bad, "--out-dir", tmp_path / "run", *sets(FORECAST)],
                     str(bad), frag)
    fail_in_one_line(["predict", runs["forecast"], bad, "--out", tmp_path / "p.h5",
                      "--device", "cpu"], str(bad), frag)
    fail_in_one_line(["evaluate", runs["forecast"], bad, "--out-dir", tmp_path / "rep",
                      "--device", "cpu"], str(bad), frag)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.h5"]


@pytest.mark.parametrize("value", [float("nan"), -1.0, 0.0, float("inf")])
def test_lyapunov_time_must_be_a_positive_time(tmp_path: Path, runs, value: float):
    bad = states_file(tmp_path / "bad.h5", np.random.default_rng(0).normal(size=(4, 60, 3)))
    with h5py.File(bad, "a") as f:
        f.attrs["lyapunov_time"] = value
    fail_in_one_line(["evaluate", runs["forecast"], bad, "--out-dir", tmp_path / "rep",
                      "--device", "cpu"],
                     f"{bad}: attribute 'lyapunov_time' must be positive and finite, found")
    assert not (tmp_path / "rep").exists()


def test_virtual_dataset_with_a_missing_source_is_refused(tmp_path: Path, runs):
    src = states_file(tmp_path / "src.h5", np.random.default_rng(0).normal(size=(4, 60, 3)))
    layout = h5py.VirtualLayout(shape=(4, 60, 3), dtype="f8")
    layout[:] = h5py.VirtualSource(str(src), "states", shape=(4, 60, 3))
    virt = tmp_path / "virt.h5"
    with h5py.File(virt, "w") as f:
        f.create_virtual_dataset("states", layout, fillvalue=0)
        f.attrs["dt"] = 0.1
    out = tmp_path / "p.h5"
    res = CliRunner().invoke(main, ["predict", str(runs["forecast"]), str(virt), "--out",
                                    str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output  # with its source present it reads normally
    out.unlink()
    src.unlink()  # now HDF5 would read fill values (zeros) without a word
    fail_in_one_line(["predict", runs["forecast"], virt, "--out", out, "--device", "cpu"],
                     f"{virt}: 'states' is a virtual dataset whose source 'states' in "
                     f"'{src}' is missing")
    assert not out.exists()


# ---- reading: I/O errors and bytes that are not UTF-8 ------------------------------------
EIO = Path("/proc/self/mem")  # reading it from offset 0 fails with EIO (Input/output error)


def _eio_available() -> bool:
    try:
        with open(EIO, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        return exc.errno == 5
    return False


@pytest.mark.skipif(not _eio_available(), reason="needs Linux /proc/self/mem")
@pytest.mark.parametrize("suffix, verb", [
    (".fa", "pretrain"), (".fa", "predict"), (".fa", "evaluate"), (".fa", "embed"),
    (".csv", "variants"), (".csv", "probe"), (".yaml", "config"), (".yaml", "run"),
    (".h5", "predict"),
])
def test_an_io_error_while_reading_is_one_line(tmp_path: Path, runs, suffix: str, verb: str):
    bad = tmp_path / f"bad{suffix}"
    bad.symlink_to(EIO)
    out = tmp_path / "new" / "out"
    m, fa = runs["masked"], runs["fasta"]
    args = {"pretrain": ["pretrain", bad, "--out-dir", out],
            "predict": ["predict", m, bad, "--out", out, "--device", "cpu"],
            "evaluate": ["evaluate", m, bad, "--out-dir", out, "--device", "cpu"],
            "embed": ["embed", m, bad, "--out", out, "--device", "cpu"],
            "variants": ["predict", m, fa, "--variants", bad, "--out", out, "--device", "cpu"],
            "probe": ["evaluate", m, bad, "--probe", "sequence", "--out-dir", out,
                      "--device", "cpu"],
            "config": ["pretrain", fa, "--out-dir", out, "--config", bad],
            "run": ["run", bad]}[verb]
    if suffix == ".h5":
        args[1] = runs["forecast"]
    fail_in_one_line(args, str(bad), "cannot open as HDF5 ([Errno 5]" if suffix == ".h5"
                     else "(Input/output error)")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("kind", ["config", "workflow", "variants", "probe", "config.json"])
def test_bytes_that_are_not_utf8_are_one_line(tmp_path: Path, runs, kind: str):
    out = tmp_path / "new" / "out"
    wild = tmp_path / "wt.fa"
    wild.write_text(">wt\nMKVLAGG\n")
    if kind == "config":
        bad = tmp_path / "bad.yaml"
        bad.write_bytes(b"train:\n  lr: \xff\xfe\n")
        args, frag = ["pretrain", runs["fasta"], "--out-dir", out, "--config", bad], "not UTF-8"
    elif kind == "workflow":
        bad = tmp_path / "wf.yaml"
        bad.write_bytes(b"stages:\n  - \xff\n")
        args, frag = ["run", bad], "not UTF-8"
    elif kind == "variants":  # Latin-1 from a legacy spreadsheet
        bad = tmp_path / "v.csv"
        bad.write_bytes(b"mutant,note\nM1A,caf\xe9\n")
        args = ["predict", runs["masked"], wild, "--variants", bad, "--out", out,
                "--device", "cpu"]
        frag = "line 2: not UTF-8 text (byte 0xe9)"
    elif kind == "probe":
        bad = tmp_path / "labels.csv"
        rows = [f"s{i},{s},{i}.5" for i, s in enumerate(seqs(4))]
        bad.write_bytes(("id,sequence,label\n" + "\n".join(rows) + "\n").encode()
                        + b"s9,MKV,\xff1\n")
        args = ["evaluate", runs["masked"], bad, "--probe", "sequence", "--out-dir", out,
                "--device", "cpu"]
        frag = "line 6: not UTF-8 text (byte 0xff)"
    else:
        run = shutil.copytree(runs["masked"], tmp_path / "run")
        bad = run / "config.json"
        bad.write_bytes(bad.read_bytes().replace(b'"model"', b'"mod\xffel"', 1))
        args = ["predict", run, wild, "--score", "--out", out, "--device", "cpu"]
        frag = "not UTF-8 text"
    fail_in_one_line(args, str(bad), frag)
    assert not (tmp_path / "new").exists()


# ---- CSV from spreadsheets --------------------------------------------------------------
def test_variants_csv_bom_is_skipped_and_a_repeated_column_refused(tmp_path: Path, runs):
    wild = tmp_path / "wt.fa"
    wild.write_text(">wt\nMKVLAGG\n")
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffmutant,note\nM1A,x\nK2G,y\n".encode())  # what Excel writes
    out = tmp_path / "scores.csv"
    res = CliRunner().invoke(main, ["predict", str(runs["masked"]), str(wild), "--variants",
                                    str(bom), "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    lines = out.read_text().splitlines()
    assert lines[0] == "mutant,note,masked_marginal,wt_marginal"
    assert [ln.split(",")[:2] for ln in lines[1:]] == [["M1A", "x"], ["K2G", "y"]]
    dup = tmp_path / "dup.csv"
    dup.write_text("mutant,mutant\nM1A,K2G\n")  # which one is meant? never guess
    fail_in_one_line(["predict", runs["masked"], wild, "--variants", dup, "--out",
                      tmp_path / "d.csv", "--device", "cpu"],
                     f"{dup} line 1: column 'mutant' appears twice in the header")
    assert not (tmp_path / "d.csv").exists()


def _labels(path: Path, labels: list[str], header: str = "id,sequence,label") -> Path:
    rows = [f"s{i},{s},{lab}" for i, (s, lab) in enumerate(zip(seqs(len(labels)), labels))]
    path.write_bytes((header + "\n" + "\n".join(rows) + "\n").encode())
    return path


@pytest.mark.parametrize("case, fragment", [
    ("bom", None),
    ("duplicate", "line 1: column 'label' appears twice in the header"),
    ("nan", "record 's3' has 'label' 'nan', a missing or non-finite value"),
    ("NA", "record 's3' has 'label' 'NA', a missing or non-finite value"),
])
def test_probe_csv_bom_repeated_column_and_missing_labels(tmp_path: Path, runs, case: str,
                                                          fragment: str | None):
    labels = [f"{v:.2f}" for v in np.linspace(0.3, 9.7, 12)]  # numeric: a regression
    if case in ("nan", "NA"):
        labels[3] = case  # would turn the regression into a 12-class classification
    header = {"bom": "\ufeffid,sequence,label",
              "duplicate": "id,sequence,label,label"}.get(case, "id,sequence,label")
    data = _labels(tmp_path / "labels.csv", labels if case != "duplicate"
                   else [f"{lab},x" for lab in labels], header)
    report = tmp_path / "new" / "report"
    args = ["evaluate", runs["masked"], data, "--probe", "sequence", "--out-dir", report,
            "--device", "cpu"]
    if fragment is None:
        res = CliRunner().invoke(main, [str(a) for a in args])
        assert res.exit_code == 0, res.output
        metrics = json.loads((report / "metrics.json").read_text())
        assert metrics["label_kind"] == "numeric" and metrics["n_train"] + \
            metrics["n_examples"] == 12
        return
    fail_in_one_line(args, str(data), fragment)
    assert not (tmp_path / "new").exists()


# ---- config -------------------------------------------------------------------------------
@pytest.mark.parametrize("items, fragment", [
    (["model.positions=learned", "model.max_len=8"],
     "'model.max_len': 8 learned positions are fewer than the 34 tokens of "
     "data.crop_length=32 + 2 special tokens"),
    (["model.positions=learned", "model.max_len=33"], "fewer than the 34 tokens"),
], ids=["masked-8", "masked-33"])
def test_learned_positions_shorter_than_the_crop(tmp_path: Path, runs, items, fragment):
    out = tmp_path / "run"
    fail_in_one_line(["pretrain", runs["fasta"], "--out-dir", out, *sets(TINY_MASKED),
                      *sets(items)], fragment)
    assert not out.exists()


def test_learned_positions_shorter_than_the_forecast_context(tmp_path: Path):
    h5 = states_file(tmp_path / "l63.h5", np.random.default_rng(0).normal(size=(4, 60, 3)))
    out = tmp_path / "run"
    fail_in_one_line(["pretrain", h5, "--out-dir", out, *sets(FORECAST),
                      "--set", "model.positions=learned", "--set", "model.max_len=1"],
                     "'model.max_len': 1 learned positions are fewer than the 2 tokens of "
                     "data.context=16 / data.horizon=8 steps as patches of 8")
    assert not out.exists()


@pytest.mark.parametrize("seed", ["-1", str(2**63), str(2**70)])
def test_seeds_out_of_range(tmp_path: Path, runs, seed: str):
    out = tmp_path / "run"
    fail_in_one_line(["pretrain", runs["fasta"], "--out-dir", out, *sets(TINY_MASKED),
                      "--seed", seed], f"'train.seed': {seed} is not in [0, 2**63)")
    sim = tmp_path / "sim.h5"
    fail_usage(["simulate", "lorenz63", "--out", sim, "--n-traj", "1", "--n-steps", "10",
                "--seed", seed], "Invalid value for '--seed'", f"{seed} is not in the range")
    assert not out.exists() and not sim.exists()


def test_non_finite_values_are_never_written_as_json(tmp_path: Path):
    path = tmp_path / "new" / "config.json"
    with pytest.raises(SciformerError, match=r"config.json: refused to write 'train.lr' = nan"):
        write_json_atomic(path, {"model": {"d_model": 8}, "train": {"lr": float("nan")}})
    assert not (tmp_path / "new").exists()  # nothing written, no parent left
    write_json_atomic(tmp_path / "metrics.json", {"rho": float("nan"), "c": [1.0, math.inf]},
                      non_finite="null")  # results: an undefined score is null, not NaN
    assert (tmp_path / "metrics.json").read_text().split() == \
        ['{', '"rho":', 'null,', '"c":', '[', '1.0,', 'null', ']', '}']


# ---- tampered run directories ----------------------------------------------------------------
def _tamper(src: Path, dst: Path, edit) -> Path:
    run = shutil.copytree(src, dst)
    cfg = json.loads((run / "config.json").read_text())
    edit(cfg)
    (run / "config.json").write_text(json.dumps(cfg))
    return run


@pytest.mark.parametrize("which, edit, fragment", [
    ("masked", lambda c: c.update(task="forecast"), "unknown entries ['imported_from', "
     "'residue_counts'] for a 'forecast' run"),
    ("forecast", lambda c: c.update(task="masked"), "unknown entries ['anchor', 'base_systems', 'channel_agnostic'"),
    ("masked", lambda c: c.pop("task"), "no 'task' entry"),
    ("masked", lambda c: c.pop("model"), "no 'model' section"),
    ("forecast", lambda c: c.pop("tokenizer"), "'tokenizer' has no 'name'"),
    ("masked", lambda c: c["train"].update(lr=float("nan")), "'train.lr' must be a finite "
     "number, got nan"),
    ("forecast", lambda c: c.update(dt=float("inf")), "'dt' must be a finite number"),
    ("forecast", lambda c: c.update(lyapunov_time=-2.0), "'lyapunov_time' must be positive"),
    ("masked", lambda c: c.update(residue_counts=[1, 2]), "'residue_counts' has 2 entries, "
     "model.vocab_size is 33"),
    ("masked", lambda c: c.update(model=[1]), "section 'model' must be a mapping"),
], ids=["masked-as-forecast", "forecast-as-masked", "no-task", "no-model", "no-tokenizer",
        "nan-lr", "inf-dt", "negative-lyapunov", "short-counts", "model-list"])
def test_tampered_config_json_is_refused(tmp_path: Path, runs, which, edit, fragment):
    run = _tamper(runs[which], tmp_path / "run", edit)
    query = runs["fasta"] if which == "masked" else tmp_path / "q.h5"
    if which == "forecast":
        states_file(query, np.random.default_rng(1).normal(size=(2, 60, 3)))
    report = tmp_path / "new" / "report"
    fail_in_one_line(["evaluate", run, query, "--out-dir", report, "--device", "cpu"],
                     f"{run / 'config.json'}", fragment)
    assert not (tmp_path / "new").exists()


def _edit_state(state: dict, case: str):
    if case == "list":
        return [1, 2, 3]
    if case == "no-step":
        state.pop("step")
    elif case == "str-step":
        state["step"] = "6"
    elif case == "no-param-groups":
        state["optimizer"] = {"state": {}}
    elif case == "other-model":  # the right structure, but one parameter group too many
        groups = state["optimizer"]["param_groups"]
        state["optimizer"]["param_groups"] = groups + [dict(groups[0], params=[10_000])]
    return state


@pytest.mark.parametrize("case, fragment", [
    ("list", "not a sciformer train state (a list, expected a dict)"),
    ("no-step", "not a sciformer train state ('step' is missing)"),
    ("str-step", "not a sciformer train state ('step' is str)"),
    ("no-param-groups", "the optimizer state has no 'state' and 'param_groups'"),
    ("other-model", "does not fit this run"),
])
def test_train_state_of_the_wrong_structure_is_refused_on_resume(tmp_path: Path, runs,
                                                                 case: str, fragment: str):
    run = shutil.copytree(runs["masked"], tmp_path / "run")
    path = run / "checkpoints" / "step_00000006" / "train_state.pt"
    torch.save(_edit_state(torch.load(path, weights_only=True), case), path)
    before = sorted(p.name for p in run.rglob("*"))
    fail_in_one_line(["pretrain", runs["fasta"], "--out-dir", run, "--resume", "--steps", "8"],
                     str(path), fragment)
    assert sorted(p.name for p in run.rglob("*")) == before


# ---- environment ------------------------------------------------------------------------------
@pytest.mark.parametrize("env, fragment", [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT "
     "are not: this is not a torchrun launch"),
    ({"RANK": "1"}, "RANK=1 is set without WORLD_SIZE > 1"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a number of processes"),
])
def test_stray_torchrun_variables_are_one_line(tmp_path: Path, runs, monkeypatch, env,
                                               fragment):
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    fail_in_one_line(["pretrain", runs["fasta"], "--out-dir", out, *sets(TINY_MASKED)],
                     "environment variable", fragment)
    assert not out.exists()


# ---- huge requests, partial output -------------------------------------------------------
def test_huge_horizon_is_refused_up_front(tmp_path: Path, runs):
    out = tmp_path / "new" / "p.h5"
    fail_in_one_line(["predict", runs["forecast"], runs["forecast"].parent / "l63.h5", "--out",
                      out, "--horizon", "100000000", "--device", "cpu"],
                     "sample paths x 100000000 steps x 4 contexts need")
    assert not (tmp_path / "new").exists()


def test_failures_leave_no_new_folders_behind(tmp_path: Path, runs):
    nomask = runs["fasta"]  # predict needs <mask>; this fails after the run was loaded
    fail_in_one_line(["predict", runs["masked"], nomask, "--out", tmp_path / "a" / "b" / "p.tsv",
                      "--device", "cpu"], f"{nomask}: no <mask> tokens found")
    masked = tmp_path / "q.fa"
    masked.write_text(">a\nMK<mask>\n")
    fail_in_one_line(["evaluate", runs["masked"], masked, "--out-dir", tmp_path / "c" / "rep",
                      "--device", "cpu"], "contains <mask>")
    report = tmp_path / "empty-report"
    report.mkdir()  # an existing empty folder is left as it was
    fail_in_one_line(["evaluate", runs["masked"], masked, "--out-dir", report, "--device", "cpu"],
                     "contains <mask>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty-report", "q.fa"]
    assert list(report.iterdir()) == []


def test_workflow_flag_must_be_a_boolean(tmp_path: Path, runs):
    wf = tmp_path / "wf.yaml"
    wf.write_text(f"stages:\n  - predict: {{run: {runs['masked']}, input: {runs['fasta']}, "
                  f"out: {tmp_path / 'p.tsv'}, score: \"no\"}}\n")
    fail_in_one_line(["run", wf], f"{wf}: stage 1 (predict): 'score' must be true or false, "
                     "got 'no'")
    assert not (tmp_path / "p.tsv").exists()


def test_every_test_named_here_is_in_the_bad_input_table():
    """The table (docs/bad-input.md) names each of these tests, so none goes undocumented."""
    table = (ROOT / "docs" / "bad-input.md").read_text()
    names = [n for n in globals() if n.startswith("test_")]
    missing = [n for n in names if f"tests/test_bad_input_more.py::{n}`" not in table
               and n != "test_every_test_named_here_is_in_the_bad_input_table"]
    assert missing == []

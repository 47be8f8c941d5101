"""Every bad input of docs/bad-input.md, end to end through the command line.

The readers' own tests (test_fasta.py, test_trajectories.py, test_config.py) check each
error at the library level; here each bad input goes through `sciformer pretrain / predict /
evaluate` as a user runs it: exit code 1, exactly one line `Error: ...` naming the file (or
the config key), no traceback, and no output left behind. Inputs that are accepted (Windows
line endings, lowercase, `*`, unknown letters, a 100k-residue record) are checked to work.
A property test feeds randomly built HDF5 files to the trajectory reader.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sciformer.cli import main
from sciformer.config import load_config
from sciformer.errors import InputError
from sciformer.io.trajectories import TrajectoryFile, write_trajectories
from sciformer.train.checkpoint import load_state
from sciformer.train.loop import pretrain
from tests.conftest import TINY_MASKED, write_fasta

ROOT = Path(__file__).resolve().parents[1]
FORECAST = ["model.d_model=32", "model.n_heads=4", "model.n_encoder_layers=1",
            "model.n_decoder_layers=1", "model.d_ff=64", "data.context=16", "data.horizon=8",
            "train.batch_size=4", "train.max_steps=2", "train.eval_every=2",
            "data.val_fraction=0.25"]


def sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def states_file(path: Path, states: np.ndarray | None = None, **datasets) -> Path:
    """An HDF5 file with `states` (or other datasets) and dt = 0.1."""
    with h5py.File(path, "w") as f:
        f.attrs["dt"] = 0.1
        if states is not None:
            f["states"] = states
        for key, value in datasets.items():
            f[key] = value
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny masked-residue run and a tiny forecasting run (3 channels)."""
    root = tmp_path_factory.mktemp("runs")
    fa = write_fasta(root / "prot.fa")
    pretrain([fa], load_config(None, TINY_MASKED), root / "masked", progress=False)
    h5 = root / "l63.h5"
    write_trajectories(h5, np.random.default_rng(0).normal(size=(4, 60, 3)).astype(np.float32),
                       dt=0.1)
    pretrain([h5], load_config(None, FORECAST), root / "forecast", progress=False)
    return {"fasta": fa, "masked": root / "masked", "forecast": root / "forecast"}


def fail_in_one_line(args: list[str], *fragments: str) -> str:
    """Run the CLI; assert exit 1 and one `Error:` line holding every fragment; return it."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and len(lines) == 1, res.output
    assert lines[0].startswith("Error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---- FASTA through pretrain --------------------------------------------------------------------
@pytest.mark.parametrize("content, fragment", [
    (b"", "no FASTA records"),
    (b"ACDE\n>x\nAC\n", "line 1: text before the first '>'"),
    (b">a\n\n>b\nAC\n", "line 1: empty record 'a'"),
    (b">a\nAC\n>a\nDE\n", "line 3: duplicate id 'a'"),
    (b">a\nMK\nGG\x00\x01\xff\n", "line 3: not a text FASTA file"),
], ids=["empty", "no-header", "empty-record", "duplicate-id", "binary"])
def test_bad_fasta_pretrain(tmp_path: Path, content: bytes, fragment: str):
    bad = tmp_path / "bad.fa"
    bad.write_bytes(content)
    out = tmp_path / "run"
    fail_in_one_line(["pretrain", bad, "--out-dir", out, *sets(TINY_MASKED)], str(bad), fragment)
    assert not out.exists()


def test_unknown_data_suffix(tmp_path: Path):
    bad = tmp_path / "x.txt"
    bad.write_text(">a\nMK\n")
    fail_in_one_line(["pretrain", bad, "--out-dir", tmp_path / "run"], str(bad),
                     "cannot tell the data type from the suffix '.txt'")
    assert not (tmp_path / "run").exists()


# ---- HDF5 through pretrain ---------------------------------------------------------------------
def _hdf5_case(tmp_path: Path, case: str) -> Path:
    path = tmp_path / "bad.h5"
    if case == "not-hdf5":
        path.write_text("states,time\n1,2\n")
    elif case == "no-states":
        states_file(path, foo=np.zeros((2, 30, 3)))
    elif case == "wrong-rank":
        states_file(path, np.zeros((2, 30)))
    elif case == "nan":
        states = np.zeros((3, 30, 3))
        states[1, 7, 2] = np.nan
        states_file(path, states)
    elif case == "too-short":
        states_file(path, np.zeros((3, 20, 3)))
    return path


@pytest.mark.parametrize("case, fragment", [
    ("not-hdf5", "not an HDF5 file"),
    ("no-states", "no dataset 'states'"),
    ("wrong-rank", "has shape (2, 30), expected (n_traj, n_time, n_channels)"),
    ("nan", "trajectory 1 step 7: NaN or Inf in states"),
    ("too-short", "20 time steps, fewer than context 16 + horizon 8"),
])
def test_bad_hdf5_pretrain(tmp_path: Path, case: str, fragment: str):
    bad = _hdf5_case(tmp_path, case)
    out = tmp_path / "run"
    fail_in_one_line(["pretrain", bad, "--out-dir", out, *sets(FORECAST)], str(bad), fragment)
    assert not out.exists()


def test_hdf5_channel_count_differs_from_checkpoint(tmp_path: Path, runs):
    bad = states_file(tmp_path / "five.h5", np.zeros((2, 60, 5), dtype=np.float32))
    out, report = tmp_path / "pred.h5", tmp_path / "report"
    fail_in_one_line(["predict", runs["forecast"], bad, "--out", out, "--device", "cpu"],
                     str(bad), "channel count")
    assert not out.exists()
    fail_in_one_line(["evaluate", runs["forecast"], bad, "--out-dir", report, "--device", "cpu"],
                     str(bad), "channel count")
    assert not report.exists() or not any(report.iterdir())


# ---- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("item, fragment", [
    ("model.d_modl=3", "unknown key 'model.d_modl'"),
    ("train.lr=fast", "'train.lr' must be float"),
    ("data.mask_rate=1.5", "'data.mask_rate': 1.5 is not in (0, 1)"),
    ("model.d_model=100", "100 is not divisible by model.n_heads=8"),
], ids=["unknown-key", "wrong-type", "mask-rate", "heads"])
def test_bad_config_value(tmp_path: Path, runs, item: str, fragment: str):
    out = tmp_path / "run"
    fail_in_one_line(["pretrain", runs["fasta"], "--out-dir", out, "--set", item], fragment)
    assert not out.exists()


@pytest.mark.parametrize("text, fragment", [
    ("model:\n  d_modl: 3\n", "unknown key 'model.d_modl'"),
    ("optimizer:\n  lr: 1\n", "unknown section 'optimizer'"),
    ("train:\n  max_steps: many\n", "'train.max_steps' must be int"),
    ("model: [1, 2\n", "not valid YAML"),
], ids=["unknown-key", "unknown-section", "wrong-type", "not-yaml"])
def test_bad_config_file(tmp_path: Path, runs, text: str, fragment: str):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    out = tmp_path / "run"
    fail_in_one_line(["pretrain", runs["fasta"], "--out-dir", out, "--config", cfg],
                     str(cfg), fragment)
    assert not out.exists()


def test_evaluate_refuses_masks_in_heldout_fasta(tmp_path: Path, runs):
    bad = tmp_path / "masked.fa"
    bad.write_text(">a\nMKVLA\n>b\nMK<mask>LA\n")
    report = tmp_path / "report"
    fail_in_one_line(["evaluate", runs["masked"], bad, "--out-dir", report, "--device", "cpu"],
                     str(bad), "line 3: record 'b' contains <mask>")
    assert not report.exists() or not any(report.iterdir())


# ---- checkpoints -------------------------------------------------------------------------------
class Planted:
    def __reduce__(self):
        return (print, ("pickle code ran",))


@pytest.mark.parametrize("case, fragment", [
    ("truncated-weights", "model.safetensors: not a readable safetensors file"),
    ("config-mismatch", "config.json implies (32, 128)"),
    ("planted-pickle", "train_state.pt: refused to load train state: it holds pickled objects"),
    ("truncated-state", "train_state.pt: refused to load train state, not a readable torch file"),
    ("other-world", "step_00000006: saved with 2 processes (fsdp=False), resumed with 1"),
])
def test_broken_or_unsafe_checkpoint_is_refused(tmp_path: Path, runs, case: str, fragment: str,
                                                capfd):
    run = shutil.copytree(runs["masked"], tmp_path / "run")
    last = run / "checkpoints" / "step_00000006"
    if case == "truncated-weights":
        w = run / "model.safetensors"
        w.write_bytes(w.read_bytes()[:100])
    elif case == "config-mismatch":
        cfg = json.loads((run / "config.json").read_text())
        cfg["model"]["d_ff"] = 128
        (run / "config.json").write_text(json.dumps(cfg))
    elif case == "planted-pickle":
        (last / "train_state.pt").write_bytes(pickle.dumps({"step": Planted()}))
    elif case == "other-world":  # as if saved by a 2-process run
        state = load_state(last / "train_state.pt")
        torch.save({**state, "world": 2}, last / "train_state.pt")
    else:
        state = last / "train_state.pt"
        state.write_bytes(state.read_bytes()[:50])
    if case in ("truncated-weights", "config-mismatch"):
        out = tmp_path / "p.tsv"
        fail_in_one_line(["predict", run, runs["fasta"], "--out", out, "--device", "cpu"],
                         str(run), fragment)
        assert not out.exists()
    else:
        fail_in_one_line(["pretrain", runs["fasta"], "--out-dir", run, "--resume"], str(last),
                         fragment)
        assert "pickle code ran" not in capfd.readouterr().out


# ---- accepted inputs ---------------------------------------------------------------------------
def test_crlf_lowercase_star_and_unknown_letters_are_accepted(tmp_path: Path, runs):
    query = tmp_path / "q.fa"
    query.write_bytes(b">a\r\nmkv<mask>\r\nla*\r\n>b\r\nMJ<MASK>Z\r\n")
    out = tmp_path / "p.tsv"
    res = CliRunner().invoke(main, ["predict", str(runs["masked"]), str(query), "--out", str(out),
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    warnings = [ln for ln in res.output.splitlines() if ln.startswith("Warning:")]
    assert len(warnings) == 1 and "1 unknown residue letters in 1 records" in warnings[0]
    rows = [ln.split("\t")[:2] for ln in out.read_text().splitlines()[1:]]
    assert rows == [["a", "4"], ["b", "3"]]  # CRLF and case ignored, the trailing * dropped


def test_100k_residue_record_is_predicted_whole(tmp_path: Path, runs):
    rng = np.random.default_rng(0)
    seq = list("".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 100_000)))
    for pos in (0, 50_000, 99_999):
        seq[pos] = "<mask>"
    body = "".join(seq)
    query = tmp_path / "long.fa"
    query.write_text(">long\n" + "\n".join(body[i:i + 60] for i in range(0, len(body), 60)) + "\n")
    out = tmp_path / "p.tsv"
    res = CliRunner().invoke(main, ["predict", str(runs["masked"]), str(query), "--out", str(out),
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rows = [ln.split("\t") for ln in out.read_text().splitlines()[1:]]
    assert [r[1] for r in rows] == ["1", "50001", "100000"]  # read through windows, not cut
    assert all(0 < sum(float(p) for p in r[3::2]) <= 1.0001 for r in rows)  # top-5 of 25


def test_bom_and_cr_only_line_ends_are_accepted(tmp_path: Path, runs):
    """Excel/Notepad write a UTF-8 byte-order mark; classic Mac text uses CR alone."""
    query = tmp_path / "q.fa"
    query.write_bytes(b"\xef\xbb\xbf>a\rMKV<mask>\rLA\r>b\rMK<mask>\r")
    out = tmp_path / "p.tsv"
    res = CliRunner().invoke(main, ["predict", str(runs["masked"]), str(query), "--out", str(out),
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rows = [ln.split("\t")[:2] for ln in out.read_text().splitlines()[1:]]
    assert rows == [["a", "4"], ["b", "3"]]
    train = tmp_path / "train.fa"
    train.write_bytes(b"\xef\xbb\xbf" + runs["fasta"].read_bytes().replace(b"\n", b"\r"))
    res = CliRunner().invoke(main, ["pretrain", str(train), "--out-dir", str(tmp_path / "run"),
                                    *sets(TINY_MASKED), "--set", "train.max_steps=1"])
    assert res.exit_code == 0, res.output
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["n_records"] == 30  # every record, none merged by the CR line ends


@pytest.mark.parametrize("chunk", [1 << 20, 1, 2, 3, 5])
def test_fasta_bom_cr_only_and_crlf_read_alike(tmp_path: Path, monkeypatch, chunk: int):
    """The reader level: same records and line numbers for LF, CRLF, CR-only (+ BOM), also
    when a chunk boundary falls between CR and LF or inside the BOM-free text."""
    from sciformer.io import fasta

    monkeypatch.setattr(fasta, "_CHUNK", chunk)
    lf = b">a x\nMKV\nla\n\n>b\nGG*\n"
    expected = [("a", "x", "MKVLA", 1), ("b", "", "GG", 5)]
    for name, data in [("lf", lf), ("crlf", lf.replace(b"\n", b"\r\n")),
                       ("cr", b"\xef\xbb\xbf" + lf.replace(b"\n", b"\r")),
                       ("bom-crlf", b"\xef\xbb\xbf" + lf.replace(b"\n", b"\r\n"))]:
        path = tmp_path / f"{name}.fa"
        path.write_bytes(data)
        got = [(r.id, r.description, r.sequence, r.line) for r in fasta.read_fasta(path)]
        assert got == expected, name
        assert fasta.count_records(path) == 2, name
    dup = tmp_path / "dup.fa"
    dup.write_bytes(b"\xef\xbb\xbf>a\rMK\r\r>a\rGG\r")
    with pytest.raises(InputError, match=r"dup.fa line 4: duplicate id 'a' \(first seen at line 1\)"):
        list(fasta.read_fasta(dup))
    late_bom = tmp_path / "late.fa"  # a BOM anywhere else is still not text
    late_bom.write_bytes(b">a\nMK\n\xef\xbb\xbf>b\nGG\n")
    with pytest.raises(InputError, match="late.fa line 3: not a text FASTA file"):
        list(fasta.read_fasta(late_bom))


# ---- pretrain: divergence, run directories that are not its own -------------------------------
@pytest.mark.parametrize("value", ["inf", "-inf", ".nan", "NaN"])
def test_non_finite_config_numbers_are_refused_before_anything_runs(tmp_path: Path, runs,
                                                                    value: str):
    out = tmp_path / "new" / "run"
    fail_in_one_line(["pretrain", runs["fasta"], "--out-dir", out, *sets(TINY_MASKED),
                      "--set", f"train.lr={value}"], "'train.lr' must be a finite number")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("lr", ["1e30"])
def test_divergence_stops_with_the_step_and_leaves_nothing(tmp_path: Path, runs, lr: str):
    out = tmp_path / "new" / "run"
    fail_in_one_line(["pretrain", runs["fasta"], "--out-dir", out, *sets(TINY_MASKED),
                      "--set", f"train.lr={lr}"],
                     "training diverged at step 2: gradient norm is nan", "nothing was saved")
    assert not (tmp_path / "new").exists()  # no run left, no parent folder either
    res = CliRunner().invoke(main, ["pretrain", str(runs["fasta"]), "--out-dir", str(out),
                                    *sets(TINY_MASKED)])  # the corrected rerun is not blocked
    assert res.exit_code == 0, res.output


def test_divergence_after_a_checkpoint_keeps_it_and_saves_no_nan_weights(tmp_path: Path, runs,
                                                                          monkeypatch):
    from safetensors.torch import load_file

    from sciformer.train import loop

    real_step = loop.Trainer.train_step

    def poisoned(self):  # weights turn NaN during step 4 (e.g. an overflow in the update)
        if self.step == 3:
            with torch.no_grad():
                next(self.raw_model.parameters()).fill_(float("nan"))
        return real_step(self)

    monkeypatch.setattr(loop.Trainer, "train_step", poisoned)
    out = tmp_path / "run"
    fail_in_one_line(["pretrain", runs["fasta"], "--out-dir", out, *sets(TINY_MASKED),
                      "--set", "train.clip_norm=0"],  # no grad norm: the loss must catch it
                     "training diverged at step 4: loss is nan",
                     f"{out} keeps the checkpoint of step 3")
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "step_00000003"]
    weights = load_file(str(out / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_nan_weights_are_never_saved(tmp_path: Path, runs):
    out = tmp_path / "run"
    fail_in_one_line(["pretrain", runs["fasta"], "--out-dir", out, *sets(TINY_MASKED),
                      "--set", "train.lr=1e38", "--set", "train.clip_norm=0",
                      "--set", "train.checkpoint_every=1"],
                     "training diverged at step 1: ", "nothing was saved")
    assert not out.exists()


def test_existing_folder_that_is_not_a_run_is_left_alone(tmp_path: Path, runs):
    out = tmp_path / "results"
    out.mkdir()
    (out / ".draft.tmp").write_text("the user's")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    fail_in_one_line(["pretrain", runs["fasta"], "--out-dir", out, *sets(TINY_MASKED)],
                     f"{out}: is not empty (.draft.tmp, metrics.jsonl) and holds no run")
    assert (out / ".draft.tmp").read_text() == "the user's"
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "loss": 0.5}\n'
    assert sorted(p.name for p in out.iterdir()) == [".draft.tmp", "metrics.jsonl"]


def test_failed_new_run_in_an_existing_empty_folder_leaves_it_empty(tmp_path: Path, runs):
    out = tmp_path / "empty"
    out.mkdir()
    fail_in_one_line(["pretrain", runs["fasta"], "--out-dir", out, *sets(TINY_MASKED),
                      "--set", "train.lr=1e30"], "training diverged")  # after reading the data
    assert out.is_dir() and list(out.iterdir()) == []  # not even config.json or split.json


def test_resume_keeps_foreign_temp_files_and_refuses_other_data(tmp_path: Path, runs):
    run = tmp_path / "run"
    shutil.copytree(runs["masked"], run)
    (run / ".notes.tmp").write_text("the user's")
    (run / ".model.safetensors.abc123.tmp").write_bytes(b"left by a kill")
    other = write_fasta(tmp_path / "other.fa", n=20, seed=5)
    fail_in_one_line(["pretrain", other, "--out-dir", run, "--resume", "--steps", "8"],
                     f"{run}: --resume with other data than the run was trained on",
                     "(split.json 'fingerprints' differs)")
    moved = tmp_path / "moved.fa"
    shutil.copy(runs["fasta"], moved)  # the same data under another path resumes
    res = CliRunner().invoke(main, ["pretrain", str(moved), "--out-dir", str(run), "--resume",
                                    "--steps", "8"])
    assert res.exit_code == 0, res.output
    assert (run / ".notes.tmp").read_text() == "the user's"
    assert not (run / ".model.safetensors.abc123.tmp").exists()


def test_simulate_blow_up_is_an_error_not_nan_trajectories(tmp_path: Path):
    out = tmp_path / "new" / "l63.h5"
    fail_in_one_line(["simulate", "lorenz63", "--out", out, "--n-traj", "2", "--n-steps", "50",
                      "--param", "dt=0.5", "--param", "substeps=1", "--param", "burn_in=0"],
                     "system 'lorenz63': trajectory 0 blew up at step 3", "smaller dt")
    assert not (tmp_path / "new").exists()


# ---- property: random HDF5 structures ----------------------------------------------------------
DTYPES = st.sampled_from(["float32", "float64", "int32", "bool"])
SHAPES = st.lists(st.integers(0, 4), min_size=1, max_size=5).map(tuple)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["states", "tensor", "other"]), shape=SHAPES, dtype=DTYPES,
       dt=st.one_of(st.none(), st.floats(allow_nan=True),
                    st.text(st.characters(exclude_characters="\x00"), max_size=3)),  # h5py refuses NUL
       time_len=st.one_of(st.none(), st.integers(0, 6)), poison=st.booleans())
def test_random_hdf5_structures_only_raise_input_error(tmp_path, key, shape, dtype, dt,
                                                       time_len, poison):
    path = tmp_path / "random.h5"
    data = np.ones(shape, dtype=dtype)
    if poison and data.size and data.dtype.kind == "f":
        data.flat[-1] = np.nan
    with h5py.File(path, "w") as f:
        f[key] = data
        if dt is not None:
            f.attrs["dt"] = dt
        if time_len is not None:
            f["time" if key != "tensor" else "t-coordinate"] = np.arange(float(time_len))
    try:
        tf = TrajectoryFile(path)
    except InputError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
    else:  # opened: the contract holds and every trajectory reads whole
        m = tf.meta
        assert m.n_traj >= 1 and m.n_time >= 1 and len(m.state_shape) in (1, 2)
        assert np.isfinite(tf.trajectory(m.n_traj - 1)).all()
        tf.close()


# ---- the table in docs/bad-input.md is backed by tests that exist ------------------------------
def test_every_test_named_in_the_bad_input_table_exists():
    table = (ROOT / "docs" / "bad-input.md").read_text()
    named = set(re.findall(r"`(tests/test_\w+\.py)::(\w+)", table))
    assert len(named) >= 20
    for path, name in named:
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), f"{path}::{name}"

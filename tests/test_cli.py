"""The command line end to end on tiny data, as a user runs it (Click's CliRunner)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from sciformer.cli import main
from tests.conftest import TINY_MASKED, metrics_log, write_fasta


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def sets(items: list[str]) -> list[str]:
    out = []
    for item in items:
        out += ["--set", item]
    return out


def test_pretrain_predict_evaluate_masked(tmp_path: Path, fasta: Path):
    run = tmp_path / "run"
    res = invoke("pretrain", fasta, "--out-dir", run, *sets(TINY_MASKED))
    assert res.exit_code == 0, res.output
    for name in ("config.json", "model.safetensors", "train_state.pt", "metrics.jsonl", "split.json"):
        assert (run / name).is_file(), name
    logged = metrics_log(run)
    assert [r["step"] for r in logged] == [2, 3, 4, 6]
    assert "val_loss" in logged[1] and "val_loss" in logged[-1]
    split = json.loads((run / "split.json").read_text())
    assert len(split["heldout"]) == 6 and not set(split["heldout"]) & set(split["train"])

    query = tmp_path / "query.fa"
    query.write_text(">q1\nACDE<mask>GHIK<mask>\n>q2\nmkv<MASK>ly\n")
    out = tmp_path / "pred.tsv"
    res = invoke("predict", run, query, "--out", out)
    assert res.exit_code == 0, res.output
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert rows[0][:4] == ["record", "position", "aa1", "p1"]
    assert [(r[0], r[1]) for r in rows[1:]] == [("q1", "5"), ("q1", "10"), ("q2", "4")]
    probs = [float(x) for x in rows[1][3::2]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001

    scores = tmp_path / "scores.tsv"
    assert invoke("predict", run, fasta, "--out", scores, "--score").exit_code == 0
    lines = scores.read_text().splitlines()
    assert len(lines) == 31 and float(lines[1].split("\t")[2]) > 1.0

    report = tmp_path / "report"
    res = invoke("evaluate", run, fasta, "--out-dir", report)
    assert res.exit_code == 0, res.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["task"] == "masked"
    assert metrics["n_examples"] == 6  # only the held-out records of the training file
    assert "held-out" in metrics["scope"]
    for block in (metrics["model"], metrics["baselines"]["unigram"]):
        assert block["perplexity"] > 1 and 0 <= block["accuracy"] <= 1
    assert (report / "masked_report.png").read_bytes()[:4] == b"\x89PNG"
    assert "unigram" in (report / "summary.md").read_text()
    assert "unigram" in res.output


def test_evaluate_other_file_uses_every_record(tmp_path: Path, masked_run: Path):
    other = write_fasta(tmp_path / "other.fa", n=9, seed=5)
    report = tmp_path / "r"
    assert invoke("evaluate", masked_run, other, "--out-dir", report).exit_code == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n_examples"] == 9 and "not used in training" in metrics["scope"]


def test_predict_without_masks_is_a_clear_error(tmp_path: Path, masked_run: Path, fasta: Path):
    out = tmp_path / "p.tsv"
    res = CliRunner().invoke(main, ["predict", str(masked_run), str(fasta), "--out", str(out)])
    assert res.exit_code == 1
    assert "no <mask> tokens" in res.output and str(fasta) in res.output
    assert not out.exists()  # no half-written output


@pytest.mark.parametrize("content, words", [
    ("", ["no FASTA records"]),
    ("ACDE\n>x\nAC\n", ["before the first"]),
    (">a\n\n>b\nAC\n", ["empty record"]),
    (">a\nAC\n>a\nDE\n", ["duplicate"]),
])
def test_bad_fasta_fails_in_one_line(tmp_path: Path, content: str, words: list[str]):
    bad = tmp_path / "bad.fa"
    bad.write_text(content)
    res = CliRunner().invoke(main, ["pretrain", str(bad), "--out-dir", str(tmp_path / "r"),
                                    *sets(TINY_MASKED)])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "bad.fa" in lines[0]
    for w in words:
        assert w in lines[0]
    assert "Traceback" not in res.output


def test_bad_set_and_existing_run(tmp_path: Path, fasta: Path, masked_run: Path):
    res = CliRunner().invoke(main, ["pretrain", str(fasta), "--out-dir", str(tmp_path / "x"),
                                    "--set", "data.mask_rate=1.5"])
    assert res.exit_code == 1 and "data.mask_rate" in res.output
    res = CliRunner().invoke(main, ["pretrain", str(fasta), "--out-dir", str(masked_run)])
    assert res.exit_code == 1 and "--resume" in res.output


def test_run_workflow_skips_finished_pretraining(tmp_path: Path, fasta: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = dict(item.split("=") for item in TINY_MASKED)
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        "name: tiny\nstages:\n"
        f"  - pretrain: {{data: [{fasta}], out_dir: run, set: {json.dumps(overrides)}}}\n"
        f"  - evaluate: {{run: run, data: {fasta}, out_dir: run/eval}}\n"
    )
    res = invoke("run", wf)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run/eval/metrics.json").exists() and "unigram" in res.output
    again = invoke("run", wf)
    assert again.exit_code == 0 and "skipping" in again.output


def test_resume_without_steps_keeps_the_runs_length(tmp_path: Path, fasta: Path, masked_run: Path):
    import shutil

    shutil.rmtree(masked_run / "checkpoints" / "step_00000006")
    res = invoke("pretrain", fasta, "--out-dir", masked_run, "--resume")
    assert res.exit_code == 0, res.output
    steps = [r["step"] for r in metrics_log(masked_run)]
    assert steps[-1] == 6  # not the default train.max_steps


def test_workflow_runs_every_verb_through_the_cli_commands(tmp_path: Path, fasta: Path,
                                                           monkeypatch):
    """embed, predict --variants, predict --score and evaluate --probe as workflow stages."""
    monkeypatch.chdir(tmp_path)
    overrides = dict(item.split("=") for item in TINY_MASKED)
    wt = tmp_path / "wt.fa"
    wt.write_text(">wt\nMKTAYIAKQRQISFVKSHFSRQ\n")
    (tmp_path / "v.csv").write_text("mutant\nK2R\nA4G:I6L\n")
    probe = tmp_path / "labels.csv"
    rows = [f"p{i},{'MKV' * (4 + i % 3)}{'AG' * (i % 5)},{'a' if i % 2 else 'b'}"
            for i in range(24)]
    probe.write_text("id,sequence,label\n" + "\n".join(rows) + "\n")
    wf = tmp_path / "wf.yaml"
    wf.write_text(
        "name: every-verb\nstages:\n"
        f"  - pretrain: {{data: [{fasta}], out_dir: run, set: {json.dumps(overrides)}}}\n"
        f"  - embed: {{run: run, fasta: {fasta}, out: emb.h5, per_residue: true}}\n"
        f"  - predict: {{run: run, input: {wt}, variants: v.csv, out: scores.csv}}\n"
        f"  - predict: {{run: run, input: {wt}, score: true, out: ppl.tsv}}\n"
        f"  - evaluate: {{run: run, data: {probe}, probe: sequence, out_dir: probe}}\n")
    res = invoke("run", wf)
    assert res.exit_code == 0, res.output
    timed = re.findall(r"^\[(\w+)\] done in \d+ s$", res.output, flags=re.M)
    assert timed == ["pretrain", "embed", "predict", "predict", "evaluate"]  # each stage's time
    assert len((tmp_path / "scores.csv").read_text().splitlines()) == 3
    assert (tmp_path / "ppl.tsv").read_text().startswith("record\tlength\tpseudo_perplexity")
    assert json.loads((tmp_path / "probe/metrics.json").read_text())["task"] == "probe"
    import h5py
    with h5py.File(tmp_path / "emb.h5") as f:
        assert f["pooled/1"].shape == (30, 32) and len(f["per_residue"]) == 30
    wf.write_text(wf.read_text().replace("per_residue: true", "per_residue: 'no'"))
    res = invoke("run", wf)
    assert res.exit_code == 1 and "'per_residue' must be true or false" in res.output

"""Training loop: schedule, exact resume, checkpoint layout and safe loading."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sciformer.config import TrainConfig, load_config
from sciformer.errors import CheckpointError
from sciformer.runs import load_model as load_run
from sciformer.train.checkpoint import load_state
from sciformer.train.loop import lr_factor, pretrain
from tests.conftest import TINY_MASKED, metrics_log

DROPOUT = TINY_MASKED + ["model.dropout=0.1"]  # dropout on: the RNG state must be restored too


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, lr_min_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.55)
    assert lr_factor(100, cfg) == pytest.approx(0.1)


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in metrics_log(run)]


def test_resume_is_exact(tmp_path: Path, fasta: Path):
    """Stop after the step-3 checkpoint (as a kill would), resume: same weights, same curve."""
    run = tmp_path / "run"
    pretrain([fasta], load_config(None, DROPOUT), run, progress=False)
    final = load_file(str(run / "model.safetensors"))
    curve = _losses(run)
    shutil.rmtree(run / "checkpoints" / "step_00000006")
    pretrain([fasta], load_config(None, DROPOUT), run, resume=True, progress=False)
    again = load_file(str(run / "model.safetensors"))
    assert final.keys() == again.keys()
    for k in final:
        assert torch.equal(final[k], again[k]), k
    assert _losses(run) == curve


def test_checkpoint_layout_keeps_last_k_and_best(tmp_path: Path, fasta: Path):
    run = tmp_path / "run"
    pretrain([fasta], load_config(None, TINY_MASKED + ["train.checkpoint_every=1",
                                                       "train.keep_checkpoints=2"]), run, progress=False)
    steps = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert steps == ["step_00000005", "step_00000006"]
    assert (run / "checkpoints/best/model.safetensors").is_file()
    assert not list(run.rglob("*.tmp")) and not list((run / "checkpoints").glob(".tmp-*"))
    assert load_state(run / "train_state.pt")["step"] == 6


def test_resume_without_checkpoint_is_an_error(tmp_path: Path, fasta: Path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        pretrain([fasta], load_config(None, TINY_MASKED), tmp_path / "none", resume=True)


def test_truncated_weights_are_refused(masked_run: Path):
    w = masked_run / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_run(masked_run)


def test_config_mismatch_is_refused(masked_run: Path):
    cfg_path = masked_run / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["d_ff"] = 128
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match|shape"):
        load_run(masked_run)


class Planted:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_planted_pickle_is_refused(masked_run: Path, capsys):
    state = masked_run / "train_state.pt"
    with open(state, "wb") as fh:
        pickle.dump({"step": Planted()}, fh)
    with pytest.raises(CheckpointError, match="refused"):
        load_state(state)
    assert "pickle code ran" not in capsys.readouterr().out


def test_a_run_records_its_provenance(masked_run: Path):
    import subprocess

    import sciformer

    prov = json.loads((masked_run / "provenance.json").read_text())
    assert prov["sciformer"] == sciformer.__version__ and prov["torch"] == torch.__version__
    assert prov["command"] and prov["started"]
    repo = Path(sciformer.__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                          check=False, text=True)
    if head.returncode == 0:  # tested from a checkout: the commit the run was made with
        assert prov["source"]["commit"] == head.stdout.strip()
        assert isinstance(prov["source"]["dirty"], bool)
    else:
        assert prov["source"] is None

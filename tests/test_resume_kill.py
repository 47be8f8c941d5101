"""Exact resume in a fresh process after SIGKILL, including a kill in the middle of a
checkpoint write (made reachable by the test-only SCIFORMER_TEST_SLOW_CHECKPOINT pause
between the two files of a checkpoint)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sciformer.config import load_config
from sciformer.train import checkpoint as ckpt
from sciformer.train.distributed import rng_state, set_rng_state
from sciformer.train.loop import pretrain
from tests.conftest import TINY_MASKED, metrics_log, write_fasta

SETS = TINY_MASKED + ["model.dropout=0.1", "train.max_steps=8", "train.checkpoint_every=2",
                      "train.eval_every=2", "train.log_every=1", "train.keep_checkpoints=2",
                      "train.threads=1"]
PAUSE_S = "30"  # the killed runs sleep this long inside a checkpoint write
TIMEOUT_S = 90


def _cli(data: Path, run: Path, *extra: str, pause_at: int = 0) -> subprocess.Popen:
    """Start `python -m sciformer pretrain` in a fresh process (pausing in one checkpoint)."""
    sets = [a for item in SETS for a in ("--set", item)]
    env = {k: v for k, v in os.environ.items() if k != ckpt.SLOW_ENV}
    if pause_at:
        env[ckpt.SLOW_ENV] = f"{PAUSE_S}:{pause_at}"
    return subprocess.Popen([sys.executable, "-m", "sciformer", "pretrain", str(data),
                             "--out-dir", str(run), *sets, *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready, what: str) -> None:
    """SIGKILL `proc` as soon as `ready()` holds (fail if it exits or takes too long)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _curve(run: Path) -> list[tuple]:
    return [(r["step"], r["loss"], r.get("val_loss")) for r in metrics_log(run)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """(data, run): 8 steps in one go, in this process."""
    root = tmp_path_factory.mktemp("reference")
    data = write_fasta(root / "prot.fa")
    pretrain([data], load_config(None, SETS), root / "run", progress=False)
    return data, root / "run"


def _assert_same_run(run: Path, reference: Path) -> None:
    """Identical parameters, loss curve (each step logged once) and optimizer state."""
    final, expected = load_file(str(run / ckpt.WEIGHTS)), load_file(str(reference / ckpt.WEIGHTS))
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[k], expected[k]) for k in final)
    assert _curve(run) == _curve(reference)
    state, ref_state = ckpt.load_state(run / ckpt.STATE), ckpt.load_state(reference / ckpt.STATE)
    assert state["step"] == 8 and state["best"] == ref_state["best"]
    opt, ref_opt = state["optimizer"]["state"], ref_state["optimizer"]["state"]
    for key in ("exp_avg", "exp_avg_sq"):
        assert all(torch.equal(opt[i][key], ref_opt[i][key]) for i in ref_opt)


def test_sigkill_mid_checkpoint_write_then_resume_in_fresh_process(tmp_path: Path, reference):
    data, ref = reference
    run, steps = tmp_path / "run", tmp_path / "run" / "checkpoints"
    # killed while writing checkpoint 6: its weights are written, its train state is not
    proc = _cli(data, run, pause_at=6)
    _kill_when(proc, lambda: (steps / ".tmp-step_00000006" / ckpt.WEIGHTS).exists(),
               "the step-6 checkpoint write")
    assert ckpt.latest_checkpoint(run).name == "step_00000004"  # the partial one is not taken
    assert sorted(p.name for p in steps.iterdir()) == [
        ".tmp-step_00000006", "best", "step_00000002", "step_00000004"]
    # resumed from step 4 in a fresh process, runs to the end
    proc = _cli(data, run, "--resume")
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    _assert_same_run(run, ref)
    assert sorted(p.name for p in steps.iterdir()) == ["best", "step_00000006", "step_00000008"]


def test_killed_before_first_checkpoint_resumes_from_step_0(tmp_path: Path, reference):
    data, ref = reference
    run = tmp_path / "run"
    pretrain([data], load_config(None, SETS), run, progress=False)
    for folder in (run / "checkpoints").iterdir():  # as if killed before the first checkpoint
        shutil.rmtree(folder)
    with pytest.warns(UserWarning, match="starting again from step 0"):
        pretrain([data], load_config(None, SETS), run, resume=True, progress=False)
    _assert_same_run(run, ref)


def test_incomplete_checkpoint_folders_are_never_taken(tmp_path: Path, masked_run: Path):
    steps = masked_run / "checkpoints"
    good = ckpt.latest_checkpoint(masked_run)
    assert good is not None and good.name == "step_00000006"
    half = steps / "step_00000009"  # e.g. a copy interrupted by hand: weights only
    half.mkdir()
    save_file({"x": torch.zeros(1)}, str(half / ckpt.WEIGHTS))
    (steps / ".tmp-step_00000012").mkdir()
    assert ckpt.latest_checkpoint(masked_run) == good
    ckpt.clean_partial(masked_run)
    assert not (steps / ".tmp-step_00000012").exists()


def test_metrics_line_cut_by_a_kill_is_dropped_on_resume(tmp_path: Path, fasta: Path):
    run = tmp_path / "run"
    pretrain([fasta], load_config(None, TINY_MASKED), run, progress=False)
    log = run / "metrics.jsonl"
    clean = log.read_text()
    with open(log, "a") as fh:
        fh.write('{"step": 7, "lo')  # a write cut short
    pretrain([fasta], load_config(None, TINY_MASKED + ["train.max_steps=6"]), run,
             resume=True, progress=False)
    assert log.read_text() == clean


def test_every_rng_round_trips_through_a_weights_only_file(tmp_path: Path):
    torch.save({"rng": rng_state()}, tmp_path / "s.pt")
    draws = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(ckpt.load_state(tmp_path / "s.pt")["rng"])  # weights_only=True
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1])
    assert draws[2] == again[2]

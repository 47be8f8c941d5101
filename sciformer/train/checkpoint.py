"""Run directory: save and load checkpoints safely.

Layout (docs/formats.md):

    RUN/config.json          everything needed to rebuild model + tokenizer + task
    RUN/model.safetensors    latest weights (all `from_pretrained` needs)
    RUN/train_state.pt       optimizer, scheduler, RNG, data position (weights_only=True)
    RUN/metrics.jsonl        one JSON object per logged step
    RUN/split.json           held-out indices
    RUN/checkpoints/step_00000500/{model.safetensors,train_state.pt}   last K kept
    RUN/checkpoints/best/{model.safetensors,train_state.pt}             best on validation

Each checkpoint folder is written under a temporary name (``.tmp-step_N``) and renamed when
complete, so a crash mid-write never leaves a folder that looks complete; old folders are
renamed to ``.trash-*`` before they are deleted, and `latest_checkpoint` also checks that both
files are there. Leftovers of a killed write are removed by `clean_partial` when a run
(re)starts. Weights are safetensors only; the train state is loaded with ``weights_only=True``
(no pickled code is ever executed). The top-level copies are for `sciformer.load`;
``--resume`` always reads a complete ``checkpoints/step_N`` folder.

Test hook: when the environment variable ``SCIFORMER_TEST_SLOW_CHECKPOINT`` is ``S`` (seconds)
or ``S:N``, `save_checkpoint` sleeps S seconds between writing the weights and the train state
of every checkpoint (or only of step N), so a test can SIGKILL the process in the middle of a
checkpoint write (tests/test_resume_kill.py). Nothing else reads it.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from sciformer.config import RunConfig
from sciformer.errors import CheckpointError, first_line
from sciformer.io.atomic import atomic_path
from sciformer.provenance import PROVENANCE
from sciformer.runs import (
    CONFIG,
    STATE,
    WEIGHTS,
    check_weights,
    load_weights,
    read_split,
    read_weights,
)

SLOW_ENV = "SCIFORMER_TEST_SLOW_CHECKPOINT"  # test-only: seconds to pause mid-checkpoint


def _state_dict(model: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of the weights (safetensors refuses shared/strided tensors)."""
    tensors = model if isinstance(model, dict) else model.state_dict()
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def save_weights(model: nn.Module | dict[str, torch.Tensor], path: Path) -> None:
    """Write the model's weights to `path` atomically as safetensors."""
    with atomic_path(path) as tmp:
        save_file(_state_dict(model), str(tmp), metadata={"format": "pt"})


def save_state(state: dict[str, Any], path: Path) -> None:
    """Write the train state (tensors, numbers, strings, lists, dicts only) atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def save_checkpoint(run_dir: Path, model: nn.Module | dict[str, torch.Tensor],
                    state: dict[str, Any], step: int, keep: int, best: bool = False) -> Path:
    """Write checkpoints/step_N atomically, update the top-level copies, prune old steps.

    `model` is a module or its (full) state dict, e.g. gathered from FSDP shards.
    """
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp-step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(model, tmp / WEIGHTS)
    _test_pause(step)
    save_state(state, tmp / STATE)
    _remove_dir(final)
    os.replace(tmp, final)  # the folder appears complete or not at all
    for name in (WEIGHTS, STATE):
        with atomic_path(run_dir / name) as t:
            shutil.copyfile(final / name, t)
    if best:
        _replace_dir(final, ckpt_root / "best")
    for old in _complete_steps(run_dir)[:-keep]:
        _remove_dir(old)
    return final


def _test_pause(step: int) -> None:
    """Test-only: sleep as SCIFORMER_TEST_SLOW_CHECKPOINT says (see the module docstring)."""
    seconds, _, at = os.environ.get(SLOW_ENV, "").partition(":")
    if seconds and (not at or int(at) == step):
        time.sleep(float(seconds))


def _remove_dir(path: Path) -> None:
    """Rename to .trash-NAME, then delete: a half-deleted folder never looks complete."""
    if path.exists():
        trash = path.with_name(f".trash-{path.name}")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def clean_partial(run_dir: Path) -> None:
    """Remove what a killed checkpoint write left behind (temp folders, temp files, trash)."""
    root = Path(run_dir) / "checkpoints"
    for leftover in [*root.glob(".tmp-*"), *root.glob(".trash-*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    old_best = root / ".old-best"
    if old_best.exists() and not (root / "best").exists():
        os.replace(old_best, root / "best")  # killed between the two renames of _replace_dir
    shutil.rmtree(old_best, ignore_errors=True)
    for name in (WEIGHTS, STATE, CONFIG, "split.json", PROVENANCE, "metrics.jsonl"):
        for tmp in Path(run_dir).glob(f".{name}.*.tmp"):  # atomic_path temp files, no others
            tmp.unlink(missing_ok=True)


def _replace_dir(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".tmp-{dst.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    old = dst.with_name(f".old-{dst.name}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def _complete_steps(run_dir: Path) -> list[Path]:
    """checkpoints/step_N folders holding both files, oldest first."""
    steps = sorted(Path(run_dir, "checkpoints").glob("step_*"))
    return [p for p in steps if (p / WEIGHTS).is_file() and (p / STATE).is_file()]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoints/step_N folder, or None."""
    steps = _complete_steps(run_dir)
    return steps[-1] if steps else None


def load_state(path: Path) -> dict[str, Any]:
    """Load a train state with weights_only=True; anything else is refused with a clear error."""
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols first
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: train state not found") from None
    except Exception as exc:
        if "Weights only load failed" in str(exc):
            raise CheckpointError(f"{path}: refused to load train state: it holds pickled objects "
                                  "other than tensors, numbers and strings (loading it could run "
                                  "code; sciformer loads train states with weights_only=True)"
                                  ) from None
        raise CheckpointError(f"{path}: refused to load train state, not a readable torch file "
                              f"({first_line(exc, 200)})") from None
    return state


def load_train_state(path: Path) -> dict[str, Any]:
    """A train state saved by `Trainer.state` (`load_state`, then `check_state`)."""
    state = load_state(path)
    check_state(state, path)
    return state


#: The entries of a train state and the type each must have (`Trainer.state` writes them).
_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "step": (int,), "best": (int, float), "optimizer": (dict,), "scheduler": (dict,),
    "rank_rng": (list,)}


def check_state(state: Any, path: Path) -> None:
    """CheckpointError unless `state` has the structure `Trainer.state` saves: a dict with an
    int step >= 0, a number best, optimizer and scheduler state dicts and per-rank RNG
    states, so a tampered or foreign file is refused before anything is restored."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a sciformer train state (a "
                              f"{type(state).__name__}, expected a dict)")
    for key, types in _STATE_TYPES.items():
        value = state.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise CheckpointError(f"{path}: not a sciformer train state ('{key}' is "
                                  f"{'missing' if key not in state else type(value).__name__})")
    if state["step"] < 0:
        raise CheckpointError(f"{path}: not a sciformer train state (step {state['step']})")
    opt = state["optimizer"]
    if not (isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                    for g in opt["param_groups"])):
        raise CheckpointError(f"{path}: not a sciformer train state (the optimizer state has "
                              "no 'state' and 'param_groups')")


__all__ = [
    "RunConfig",
    "check_state",
    "clean_partial",
    "latest_checkpoint",
    "load_state",
    "load_train_state",
    "load_weights",
    "read_split",
    "read_weights",
    "save_checkpoint",
    "save_state",
    "save_weights",
]

"""Run directory: save and load checkpoints safely.

Layout (DESIGN.md contract):

    RUN/config.json          everything needed to rebuild model + tokenizer + task
    RUN/model.safetensors    latest weights (all `from_pretrained` needs)
    RUN/train_state.pt       optimizer, scheduler, RNG, data position (weights_only=True)
    RUN/metrics.jsonl        one JSON object per logged step
    RUN/split.json           held-out indices
    RUN/checkpoints/step_00000500/{model.safetensors,train_state.pt}   last K kept
    RUN/checkpoints/best/{model.safetensors,train_state.pt}             best on validation

Each checkpoint folder is written under a temporary name and renamed when complete, so a
crash mid-write never leaves a folder that looks complete. Weights are safetensors only;
the train state is loaded with ``weights_only=True`` (no pickled code is ever executed).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from sciformer.config import RunConfig, read_run_config
from sciformer.errors import CheckpointError
from sciformer.io.atomic import atomic_path

WEIGHTS, STATE, CONFIG = "model.safetensors", "train_state.pt", "config.json"


def _state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of the weights (safetensors refuses shared/strided tensors)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def save_weights(model: nn.Module, path: Path) -> None:
    """Write the model's weights to `path` atomically as safetensors."""
    with atomic_path(path) as tmp:
        save_file(_state_dict(model), str(tmp), metadata={"format": "pt"})


def save_state(state: dict[str, Any], path: Path) -> None:
    """Write the train state (tensors, numbers, strings, lists, dicts only) atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def save_checkpoint(run_dir: Path, model: nn.Module, state: dict[str, Any], step: int,
                    keep: int, best: bool = False) -> Path:
    """Write checkpoints/step_N atomically, update the top-level copies, prune old steps."""
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp-step_{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(model, tmp / WEIGHTS)
    save_state(state, tmp / STATE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # the folder appears complete or not at all
    for name in (WEIGHTS, STATE):
        with atomic_path(run_dir / name) as t:
            shutil.copyfile(final / name, t)
    if best:
        _replace_dir(final, ckpt_root / "best")
    for old in sorted(ckpt_root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _replace_dir(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".tmp-{dst.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    old = dst.with_name(f".old-{dst.name}")
    if dst.exists():
        os.replace(dst, old)
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoints/step_N folder, or None."""
    steps = sorted((run_dir / "checkpoints").glob("step_*"))
    return steps[-1] if steps else None


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights into `model`, refusing corrupt files and shape mismatches."""
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match config.json "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{path}: '{name}' has shape {tuple(tensor.shape)}, "
                                  f"config.json implies {tuple(expected[name].shape)}")
    model.load_state_dict(tensors)


def load_state(path: Path) -> dict[str, Any]:
    """Load a train state with weights_only=True; anything else is refused with a clear error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: train state not found") from None
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "refuse"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: refused to load train state ({first[:200]})") from None


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model of a run directory: (model in eval mode, RunConfig, extra state)."""
    from sciformer.model import SciFormer

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found")
    cfg, extra = read_run_config(run_dir / CONFIG)
    model = SciFormer(cfg.model)
    load_weights(model, run_dir / WEIGHTS)
    return model.to(device).eval(), cfg, extra


def read_split(run_dir: Path) -> dict[str, Any]:
    """The held-out indices recorded by pretraining (split.json)."""
    path = Path(run_dir) / "split.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found (was this run made by sciformer pretrain?)") from None


__all__ = ["RunConfig", "save_checkpoint", "latest_checkpoint", "load_weights", "load_state",
           "load_run", "read_split", "save_weights", "save_state"]

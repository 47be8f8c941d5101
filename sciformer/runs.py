"""The run directory, read side: config.json with its typed task state, weights, split.json.

Layout (documented in docs/formats.md):

    RUN/config.json          the RunConfig sections (model, data, train) plus the task state
    RUN/model.safetensors    weights, the only thing `sciformer.load` needs besides config.json
    RUN/train_state.pt       optimizer, scheduler, RNG, data position (training only)
    RUN/metrics.jsonl        one JSON object per logged step
    RUN/split.json           held-out indices

The task state is what a task learned from its data that inference needs to rebuild the
tokenizer and the baselines (the forecast tokenizer's statistics, the residue counts). It is
saved as top-level entries of config.json (`"task": "masked" | "forecast"` and the fields of
`MaskedState` / `ForecastState`) and read back into those dataclasses, so no code reads task
state by string key. Inference (`sciformer.pipelines`) reads runs through this module only and
never imports the training code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from sciformer.config import RunConfig, coerce_value, read_run_config
from sciformer.errors import CheckpointError, SciformerError

WEIGHTS, STATE, CONFIG, SPLIT = "model.safetensors", "train_state.pt", "config.json", "split.json"


@dataclass
class MaskedState:
    """Task state of a masked-residue (protein) run."""

    name: ClassVar[str] = "masked"
    train_files: list[str] = field(default_factory=list)  # FASTA files the run trained on
    residue_counts: list[int] = field(default_factory=list)  # training counts per token id
    imported_from: dict[str, Any] | None = None  # ESM-2 import: {"format", "path", "config"}


@dataclass
class ForecastState:
    """Task state of a forecasting run: the data's shape and units, the fitted tokenizer."""

    name: ClassVar[str] = "forecast"
    train_files: list[str] = field(default_factory=list)
    state_shape: list[int] = field(default_factory=list)  # one time step: (*space, channels)
    n_features: int = 0  # values per time step (product of state_shape)
    dt: float = 1.0  # time between steps
    lyapunov_time: float | None = None  # in the units of time, when the data says
    system: str | None = None
    field_names: list[str] | None = None
    tokenizer: dict[str, Any] = field(default_factory=dict)  # the tokenizer's to_config()
    channel_agnostic: bool = False  # forecasts states with any channel count
    base_systems: list[str] | None = None  # zoo runs: the base systems trained on
    anchor: dict[str, Any] | None = None  # hybrid runs: what the NVAR anchor chose (delays...)


TaskState = MaskedState | ForecastState
STATES: dict[str, type[MaskedState] | type[ForecastState]] = {
    "masked": MaskedState, "forecast": ForecastState}


def state_to_dict(state: TaskState) -> dict[str, Any]:
    """The JSON entries of config.json for `state` (with "task" naming the task)."""
    return {"task": state.name, **dataclasses.asdict(state)}


def state_from_dict(raw: dict[str, Any], source: str) -> TaskState:
    """Parse the task entries of config.json, refusing unknown tasks, keys and wrong types."""
    raw = dict(raw)
    name = raw.pop("task", None)
    if name is None:
        raise CheckpointError(f"{source}: no 'task' entry; this is not a sciformer run "
                              "directory, or one written by a version before 0.1")
    if name not in STATES:
        raise CheckpointError(f"{source}: unknown task '{name}' (valid: {', '.join(STATES)})")
    cls = STATES[name]
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CheckpointError(f"{source}: unknown entries {unknown} for a '{name}' run")
    try:
        values = {k: coerce_value(v, hints[k], k, source) for k, v in raw.items()}
    except SciformerError as exc:
        raise CheckpointError(str(exc)) from None
    state = cls(**values)
    if isinstance(state, ForecastState):
        _check_forecast_state(state, source)
    return state


def _check_forecast_state(s: ForecastState, source: str) -> None:
    if not s.state_shape or math.prod(s.state_shape) != s.n_features:
        raise CheckpointError(f"{source}: 'state_shape' {s.state_shape} does not multiply to "
                              f"'n_features' {s.n_features}")
    if not (s.dt > 0 and math.isfinite(s.dt)):
        raise CheckpointError(f"{source}: 'dt' must be a positive number, got {s.dt}")
    if s.lyapunov_time is not None and not (s.lyapunov_time > 0
                                            and math.isfinite(s.lyapunov_time)):
        raise CheckpointError(f"{source}: 'lyapunov_time' must be positive, got "
                              f"{s.lyapunov_time}")
    if "name" not in s.tokenizer:
        raise CheckpointError(f"{source}: 'tokenizer' has no 'name'")


def read_run(run_dir: str | Path) -> tuple[RunConfig, TaskState]:
    """The RunConfig and typed task state of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run directory not found")
    cfg, extra = read_run_config(run_dir / CONFIG)
    source = str(run_dir / CONFIG)
    state = state_from_dict(extra, source)
    if isinstance(state, MaskedState):
        _check_masked_state(state, cfg, source)
    return cfg, state


def _check_masked_state(s: MaskedState, cfg: RunConfig, source: str) -> None:
    """Residue counts (the unigram baseline) have one non-negative count per token id."""
    counts = s.residue_counts
    if counts and len(counts) != cfg.model.vocab_size:
        raise CheckpointError(f"{source}: 'residue_counts' has {len(counts)} entries, "
                              f"model.vocab_size is {cfg.model.vocab_size}")
    if any(c < 0 for c in counts):
        raise CheckpointError(f"{source}: 'residue_counts' holds a negative count")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file at `path` (unchecked)."""
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def read_weights(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The safetensors weights at `path`, checked against `model`'s names and shapes."""
    tensors = read_tensors(path)
    check_weights(model, tensors, str(path), "match config.json", "config.json implies")
    return tensors


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights into `model`, refusing corrupt files and shape mismatches."""
    model.load_state_dict(read_weights(model, path))


def check_weights(model: nn.Module, tensors: dict[str, torch.Tensor], source: str,
                  fits: str, implies: str) -> None:
    """CheckpointError unless `tensors` has exactly `model`'s parameter names and shapes,
    and every value is finite. `fits` and `implies` word the message ("weights do not
    {fits}", "{implies} (shape)")."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not {fits} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{source}: '{name}' has shape {tuple(tensor.shape)}, "
                                  f"{implies} {tuple(expected[name].shape)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{source}: '{name}' holds NaN or infinite values (did the "
                                  "training diverge?)")


def load_model(run_dir: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[nn.Module, RunConfig, TaskState]:
    """Rebuild the model of a run directory: (model in eval mode, RunConfig, task state)."""
    from sciformer.model import SciFormer

    cfg, state = read_run(run_dir)
    model = SciFormer(cfg.model)
    path = Path(run_dir) / WEIGHTS
    tensors = read_tensors(path)
    attach_anchor(model, tensors, cfg, str(path))
    check_weights(model, tensors, str(path), "match config.json", "config.json implies")
    model.load_state_dict(tensors)
    return model.to(device).eval(), cfg, state


def attach_anchor(model: nn.Module, tensors: dict[str, torch.Tensor], cfg: RunConfig,
                  source: str) -> None:
    """Give `model` the anchor saved among its weights (``anchor.*``; a hybrid run,
    `data.anchor: nvar` or `fno`), or the analogue anchor its config names (no tensors). Runs
    without those tensors (persistence, or written before the anchor existed) stay
    persistence-anchored; a config that disagrees is refused."""
    from sciformer.model.anchor import NVARAnchor
    from sciformer.model.field_anchor import FNOAnchor, is_fno

    kind = "fno" if is_fno(tensors) else "nvar"
    try:
        anchor = (FNOAnchor if kind == "fno" else NVARAnchor).from_tensors(tensors)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    said = cfg.data.anchor
    if said == "analog" and anchor is None:  # computed from the context: no tensors
        from sciformer.model.analog import AnalogAnchor

        model.anchor = AnalogAnchor()
        return
    if (anchor is None and said in ("nvar", "fno")) or (
            anchor is not None and said not in (kind, "auto")):
        has = f"holds {kind.upper()}" if anchor is not None else f"has no {said.upper()}"
        raise CheckpointError(f"{source}: {has} anchor tensors (anchor.*) but config.json "
                              f"says data.anchor={said}")
    if anchor is not None:
        model.anchor = anchor


def read_split(run_dir: str | Path) -> dict[str, Any]:
    """The held-out indices recorded by pretraining (split.json)."""
    path = Path(run_dir) / SPLIT
    try:
        split = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found (was this run made by sciformer pretrain?)"
                              ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(split, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return split


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; an unavailable cuda is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SciformerError(f"device '{name}': CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise SciformerError(f"device '{name}': not a device (auto, cpu, cuda, cuda:N)") from None

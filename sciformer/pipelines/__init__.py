"""Inference pipelines, one per task, and `load` that picks the right one for a run.

`sciformer.load(run_dir)` returns a `ProteinLM` (masked-residue runs) or a `Forecaster`
(forecasting runs), dispatched on the typed task state saved in the run's config.json. Every
CLI verb and workflow stage is a file adapter over these classes; none of them imports the
training code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sciformer.errors import ConfigError
from sciformer.pipelines.first_patch import FirstPatchCorrection
from sciformer.pipelines.forecast import Forecaster
from sciformer.pipelines.protein import ProteinLM
from sciformer.pipelines.recalibrate import SpreadCalibration
from sciformer.precision import PRECISIONS
from sciformer.runs import ForecastState, MaskedState, load_model, pick_device

Pipeline = ProteinLM | Forecaster


def load(run_dir: str | Path, device: str | torch.device = "auto", precision: str = "fp32"
         ) -> Pipeline:
    """The pipeline of a run directory: `ProteinLM` or `Forecaster`, on `device`
    ("auto": a GPU when there is one). Protein runs take `precision` "fp32", "bf16" or
    "auto" (bf16 where the device has it natively); forecasting runs compute in fp32 (an
    explicit "bf16" is refused)."""
    dev = device if isinstance(device, torch.device) else pick_device(device)
    if precision not in PRECISIONS:
        raise ConfigError(f"precision '{precision}': must be one of {', '.join(PRECISIONS)}")
    model, cfg, state = load_model(run_dir, dev)
    if isinstance(state, MaskedState):
        return ProteinLM(model, cfg, state, dev, precision)
    assert isinstance(state, ForecastState)
    if precision == "bf16":
        raise ConfigError(f"{run_dir}: precision 'bf16' applies to protein runs only; "
                          "forecasting runs compute in fp32")
    fc = Forecaster(model, cfg, state, dev)
    fc.calibration = SpreadCalibration.load(run_dir)  # None for runs without calibration.json
    fc.first_patch = FirstPatchCorrection.load(run_dir)  # None without first_patch.safetensors
    if fc.first_patch is not None and getattr(model, "anchor", None) is None:
        raise ConfigError(f"{run_dir}: first_patch.safetensors needs the NVAR anchor's "
                          "features, but this run has no NVAR anchor (remove the file or "
                          "rerun `sciformer calibrate`)")
    return fc


__all__ = ["Forecaster", "Pipeline", "ProteinLM", "load"]

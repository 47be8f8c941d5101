"""The Python entry points that run a whole verb: `pretrain` and `evaluate`.

Both take plain paths and return plain Python objects, so a notebook needs no CLI:

    run = sciformer.pretrain(["l96.h5"], {"train": {"max_steps": 1200}}, "runs/l96")
    metrics = sciformer.evaluate(run, "l96_heldout.h5", "runs/l96/eval")
    metrics["model"]["nrmse"], metrics["baselines"]["persistence"]["nrmse"]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sciformer.config import RunConfig, apply_overrides, load_config

ConfigLike = RunConfig | dict[str, Any] | str | Path | None


def resolve_config(config: ConfigLike, overrides: Sequence[str] = ()) -> RunConfig:
    """A validated RunConfig from a RunConfig, a nested dict, a YAML/JSON path or None
    (defaults), then `key=value` overrides."""
    if isinstance(config, RunConfig):
        return apply_overrides(config, overrides).validate()
    if isinstance(config, dict):
        return apply_overrides(RunConfig.from_dict(config, source="config"), overrides
                               ).validate()
    return load_config(config, overrides)


def pretrain(data: str | Path | Sequence[str | Path], config: ConfigLike = None,
             out_dir: str | Path = "runs/run", *, overrides: Sequence[str] = (),
             resume: bool = False, progress: bool | None = None) -> Path:
    """Pretrain on FASTA (masked residues) or trajectory HDF5 (forecasting) files into
    `out_dir`; returns the run directory (load it with `sciformer.load`)."""
    from sciformer.train.loop import pretrain as run

    paths = [data] if isinstance(data, (str, Path)) else list(data)
    cfg = resolve_config(config, overrides)
    run(paths, cfg, out_dir, resume=resume, progress=progress)
    return Path(out_dir)


def evaluate(run_dir: str | Path, data: str | Path, out_dir: str | Path, **options: Any
             ) -> dict[str, Any]:
    """Score the run on held-out `data` against baselines; writes metrics.json, plots and
    summary.md to `out_dir` and returns the metrics. Options as `sciformer evaluate`:
    context, horizon, samples, probe, label, device, progress."""
    from sciformer.evaluation.run import evaluate as run

    return run(run_dir, data, out_dir, **options)

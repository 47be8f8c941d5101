"""`sciformer evaluate`: score a run on held-out data, write metrics.json, plots, summary.md."""

from __future__ import annotations

from pathlib import Path

from sciformer.errors import InputError
from sciformer.io.atomic import write_json_atomic
from sciformer.io.outputs import atomic_dir, check_output, run_files
from sciformer.pipelines import Forecaster, ProteinLM, load


def evaluate(run_dir: str | Path, data: str | Path, out_dir: str | Path, *,
             context: int | None = None, horizon: int | None = None,
             samples: int | None = None, device: str = "auto", probe: str | None = None,
             label: str = "label", progress: bool = False, raw: bool = False) -> dict:
    """Evaluate the model in `run_dir` on `data`; returns the metrics written to metrics.json.
    `progress` shows a bar of records / trajectories scored.

    A forecasting run's paths are recalibrated when it has a ``calibration.json`` (the raw
    paths are scored too, as `model.raw`); `raw` scores the paths as drawn only.

    With `probe` ("sequence" | "residue"), fit a linear probe on frozen embeddings instead
    (`sciformer.evaluation.probe`), reading labels from column / header key `label`.
    """
    run_dir, data, out_dir = Path(run_dir), Path(data), Path(out_dir)
    check_output(out_dir, inputs=[data], protected=run_files(run_dir), kind="dir")
    pipe = load(run_dir, device)
    forecast_only = {"context": context, "horizon": horizon, "samples": samples,
                     "raw": raw or None}
    if isinstance(pipe, ProteinLM):
        for name, value in forecast_only.items():
            if value is not None:
                raise InputError(f"{run_dir}: --{name} does not apply to a masked-residue run")
    elif probe is not None:
        raise InputError(f"{run_dir}: --probe needs a protein (masked-residue) run")
    elif raw:
        pipe.calibration = None
    with atomic_dir(out_dir) as tmp:  # the report appears whole, or not at all
        if probe is not None:
            from sciformer.evaluation.probe import evaluate_probe

            metrics = evaluate_probe(pipe, data, tmp, probe, label)
        elif isinstance(pipe, Forecaster):
            from sciformer.evaluation.forecast import evaluate_forecast_run

            metrics = evaluate_forecast_run(pipe, run_dir, data, tmp, context=context,
                                            horizon=horizon, samples=samples,
                                            progress=progress)
        else:
            from sciformer.evaluation.masked import evaluate_masked_run

            metrics = evaluate_masked_run(pipe, run_dir, data, tmp, progress)
            if pipe.state.imported_from:  # no training data: the unigram is really uniform
                from sciformer.esm2 import relabel_untrained_baseline

                metrics = relabel_untrained_baseline(metrics, pipe.state, tmp)
        write_json_atomic(tmp / "metrics.json", metrics, non_finite="null")
    return metrics

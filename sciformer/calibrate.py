"""`sciformer calibrate RUN`: fit a forecasting run's post-training corrections -- the
first-patch correction of a hybrid run (``first_patch.safetensors``,
`sciformer.pipelines.first_patch`: fitted on the training trajectories, chosen on the
validation ones), then the spread recalibration of its sample paths on its validation
trajectories (``calibration.json``, `sciformer.pipelines.recalibrate`).

Pretraining a forecasting run does this at its end (`train.calibrate`); the command refits an
existing run (an older one, or with another method). The data are the run's own validation
trajectories (split.json ``heldout_origin``: whole trajectories of the training files that no
gradient step saw), never an evaluation file: up to `CALIBRATION_WINDOWS` windows of
context + horizon steps, evenly spaced, the horizon being the one `sciformer evaluate` scores
by default (about three Lyapunov times), so the factors cover every lead that evaluation sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sciformer.errors import InputError
from sciformer.evaluation.calibration import COVERAGE_MASSES
from sciformer.evaluation.metrics import coverage_per_step, crps_from_samples
from sciformer.io.trajectories import TrajectoryFile
from sciformer.model.anchor import NVARAnchor
from sciformer.pipelines import Forecaster, load
from sciformer.pipelines.recalibrate import (
    SMOOTH_FRACTION,
    SpreadCalibration,
    fit_factors,
)
from sciformer.runs import read_split

CALIBRATION_WINDOWS = 192  # validation windows the factors are fitted on (at most)
MAX_PER_TRAJECTORY = 64  # windows per validation trajectory (at most)
# fewer windows where their float32 sample paths would exceed this (large fields); the fit's
# peak memory is about 4x it (KS, 192 windows x 32 paths x 280 steps x 64 points: 0.44 GiB of
# paths, 3.9 GB peak)
PATH_BYTES = 2**29
#: windows per validation trajectory of a 2+-D field run (at most), as many as `evaluate`
#: scores per held-out trajectory: every sample path of a field is rolled out frame by frame
#: (by the FNO anchor's network, when the run has one), so on the ns2d workflow 16 windows
#: cost 66 s of its 10-minute budget and 136 had cost more CPU than training
FIELD_PER_TRAJECTORY = 8
SEED = 1_000_003  # seeds the validation paths' draws (evaluation seeds by window index)


def validation_windows(fc: Forecaster, run_dir: Path, horizon: int | None = None,
                       samples: int = 1) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Contexts (N, C, F) and truths (N, H, F) from the run's validation trajectories, and
    what they are (trajectories, windows, context, horizon); N at most `CALIBRATION_WINDOWS`,
    fewer where `samples` paths of them would exceed `PATH_BYTES`, and at most
    `FIELD_PER_TRAJECTORY` per trajectory for 2+-D fields."""
    from sciformer.evaluation.forecast import default_horizon, read_windows, window_starts

    origin = read_split(run_dir).get("heldout_origin") or []
    if not origin:
        raise InputError(f"{run_dir / 'split.json'}: the run has no validation trajectories "
                         "(data.val_fraction = 0) to fit a calibration on")
    files = fc.state.train_files
    by_file: dict[int, list[int]] = {}
    for fi, t in origin:
        by_file.setdefault(int(fi), []).append(int(t))
    opened = {fi: TrajectoryFile(files[fi]) for fi in by_file}
    meta = next(iter(opened.values())).meta
    c = fc.context_length
    lyap = meta.lyapunov_time or fc.state.lyapunov_time
    n_time = min(f.meta.n_time for f in opened.values())
    h = horizon or default_horizon(fc.trained_horizon, meta.dt, lyap, meta.state_shape)
    h = min(h, n_time - c)  # what the validation trajectories hold
    if h < 1:
        raise InputError(f"{files[0]}: validation trajectories of {n_time} steps are shorter "
                         f"than the context of {c} steps")
    path_bytes = 4 * samples * h * int(np.prod(meta.state_shape))  # one window's paths
    most = max(len(origin), min(CALIBRATION_WINDOWS, PATH_BYTES // max(1, path_bytes)))
    per = max(1, min(MAX_PER_TRAJECTORY, most // len(origin)))
    if len(meta.state_shape) >= 3:  # (*space, fields) with 2+ spatial dims
        per = min(per, FIELD_PER_TRAJECTORY)
    starts = window_starts(n_time, c + h, per)
    ctx, truth = [], []
    for fi, trajs in by_file.items():
        wins, _ = read_windows(opened[fi], sorted(trajs), starts, c + h)
        ctx.append(wins[:, :c])
        truth.append(wins[:, c:])
    about = {"data": "validation trajectories of the training files (split.json "
                     "heldout_origin), never used for gradient steps",
             "trajectories": [[int(a), int(b)] for a, b in origin],
             "windows_per_trajectory": len(starts), "context": c, "horizon": h}
    return np.concatenate(ctx), np.concatenate(truth), about


def refit_first_patch(fc: Forecaster, run_dir: Path) -> dict[str, Any]:
    """Fit the run's first-patch correction (`pipelines.first_patch`) on windows of its
    training trajectories, choosing the ridge strengths on its validation trajectories; save
    it (or remove a stale one when nothing gains) and set `fc.first_patch`. Returns what was
    done, for calibration.json. Runs without an NVAR anchor get none."""
    import torch

    from sciformer.evaluation.chaos_baselines import selection_windows
    from sciformer.evaluation.forecast import split_trajectories, training_trajectories
    from sciformer.pipelines.first_patch import (
        CHOICE_WINDOWS,
        FILE,
        FIT_WINDOWS,
        fit_first_patch,
    )
    from sciformer.pipelines.forecast import first_patch_median

    fc.first_patch = None
    (run_dir / FILE).unlink(missing_ok=True)
    if not isinstance(getattr(fc.model, "anchor", None), NVARAnchor):
        return {"fitted": False, "why": "not an NVAR-anchored run (no NVAR features)"}
    width = fc.context_length + fc.tokenizer.patch_len
    fit = selection_windows(training_trajectories(fc.state, run_dir), width, FIT_WINDOWS)
    choose = selection_windows(split_trajectories(fc.state, run_dir, "heldout_origin"), width,
                               CHOICE_WINDOWS)
    if len(fit) < 2 or len(choose) < 1:
        return {"fitted": False, "why": f"too few windows of {width} steps"}

    def median(ctx: np.ndarray) -> np.ndarray:
        parts = [first_patch_median(fc.model, fc.tokenizer,
                                    torch.from_numpy(ctx[i:i + 256]).float().to(fc.device),
                                    fc.levels).double().cpu().numpy()
                 for i in range(0, len(ctx), 256)]
        return np.concatenate(parts)

    c = fc.context_length
    corr = fit_first_patch(fc.model, fc.tokenizer, median, (fit[:, :c], fit[:, c:]),
                           (choose[:, :c], choose[:, c:]))
    if corr is None:
        return {"fitted": False, "why": "no ridge strength lowered the validation error"}
    corr.save(run_dir)
    fc.first_patch = corr
    return {"fitted": True, **corr.about}


def lead_scores(paths: np.ndarray, truth: np.ndarray) -> dict[str, list[float]]:
    """Per-lead coverage of the central intervals and mean CRPS of paths (S, n, H, F)
    against truth (n, H, F), a lead at a time (memory of one lead in float64)."""
    out: dict[str, list[float]] = {k: [] for k in (*COVERAGE_MASSES, "crps")}
    for h in range(paths.shape[2]):
        s, t = paths[:, :, h:h + 1], truth[:, h:h + 1]
        for key, cov in coverage_per_step(s, t).items():
            out[key].append(float(cov[0]))
        out["crps"].append(float(crps_from_samples(s, t)[0]))
    return out


def _summary(scores: dict[str, list[float]]) -> dict[str, Any]:
    """Range of each coverage curve and the mean CRPS, for calibration.json."""
    out: dict[str, Any] = {k: [round(min(v), 4), round(max(v), 4)]
                           for k, v in scores.items() if k != "crps"}
    out["crps"] = float(np.mean(scores["crps"]))
    return out


def calibrate(run_dir: str | Path, *, method: str = "crps", horizon: int | None = None,
              samples: int | None = None, device: str = "auto") -> SpreadCalibration:
    """Fit the spread factors of the run in `run_dir` on its validation trajectories, write
    ``calibration.json`` and return them. `samples` defaults to the run's `data.samples`."""
    run_dir = Path(run_dir)
    fc = load(run_dir, device)
    if not isinstance(fc, Forecaster):
        raise InputError(f"{run_dir}: calibrate needs a forecasting run")
    samples = samples or fc.cfg.data.samples
    ctx, truth, about = validation_windows(fc, run_dir, horizon, samples)
    first_patch = refit_first_patch(fc, run_dir)
    from sciformer.evaluation.model_forecast import model_batch

    paths = fc.sample(ctx, about["horizon"], samples, seed=SEED, batch=model_batch(fc.cfg),
                      calibrated=False)
    finite = np.isfinite(paths).all(axis=(0, 2, 3))  # windows none of whose paths diverged
    if not finite.any():
        raise InputError(f"{run_dir}: every validation window has a sample path that "
                         "diverged (non-finite); the model is unstable in closed loop, so no "
                         "calibration was written")
    paths, truth = paths[:, finite], truth[finite]
    first = fc.tokenizer.patch_len if first_patch["fitted"] else 0
    raw, factors = fit_factors(paths, truth, method, first=first)
    cal = SpreadCalibration(factors, {})
    before, after = lead_scores(paths, truth), lead_scores(cal.apply(paths), truth)
    cal.fitted = {**about, "n_windows": int(finite.sum()),
                  "windows_with_diverged_paths": int((~finite).sum()),
                  "samples": samples, "method": method,
                  "smoothing": f"local-linear fit of log factors over {SMOOTH_FRACTION:.0%} of "
                               "the leads" + (f", the first {first} (the corrected first "
                                              "patch) apart from the rest" if first else "")
                               + ("; then held inside each lead's coverage band"
                                  if method == "crps" else "")
                               + "; the last factor holds beyond the fitted horizon",
                  "raw_factors": [round(float(v), 5) for v in raw],
                  "validation_before": _summary(before), "validation_after": _summary(after),
                  "validation_per_lead": {"before": before, "after": after},
                  "first_patch": first_patch}
    cal.save(run_dir)
    return cal

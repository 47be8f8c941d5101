"""Does the Transformer of an FNO-anchored field run move the point forecast? Teacher-forced
VRMSE per step of the first patch after each window's context: the run's median quantile
against its FNO anchor alone (the same true context for both).

    python benchmarks/field_anchor_median.py RUN HELDOUT.h5 [--windows 8]

`--windows` evenly spaced windows per trajectory of HELDOUT.h5 (context + one patch each).
Prints one markdown row per predictor. Measured on the ns2d workflow (docs/fields.md): the
median was within 1% of the anchor at every step of the patch.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import sciformer
from sciformer.evaluation.fno import AnchorFNOBaseline
from sciformer.evaluation.forecast import read_windows, window_starts
from sciformer.evaluation.metrics import vrmse_per_step
from sciformer.io.trajectories import TrajectoryFile
from sciformer.pipelines.forecast import first_patch_median


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("heldout")
    ap.add_argument("--windows", type=int, default=8)
    a = ap.parse_args()
    fc = sciformer.load(a.run)
    alone = AnchorFNOBaseline.of_run(fc)  # the run's FNO anchor rolled out alone
    if alone is None:
        raise SystemExit(f"{a.run}: not an FNO-anchored run (data.anchor: fno)")
    c, L = fc.context_length, fc.tokenizer.patch_len
    f = TrajectoryFile(a.heldout)
    starts = window_starts(f.meta.n_time, c + L, a.windows)
    wins, _ = read_windows(f, list(range(f.meta.n_traj)), starts, c + L)
    wins = wins.astype(np.float32)
    truth = wins[:, c:].astype(np.float64)
    with torch.no_grad():
        median = first_patch_median(fc.model, fc.tokenizer, torch.from_numpy(wins[:, :c]),
                                    fc.levels).double().numpy()
    preds = {"model median": median, "FNO anchor alone": alone.predict(wins[:, :c], L)}
    print(f"{len(wins)} windows, steps 1-{L} after a {c}-step context (teacher-forced)\n")
    print("| predictor | " + " | ".join(f"step {i + 1}" for i in range(L)) + " |")
    print("|---|" + "---:|" * L)
    for name, pred in preds.items():
        per_step = vrmse_per_step(pred, truth, f.meta.state_shape).mean(axis=1)  # over fields
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in per_step) + " |")


if __name__ == "__main__":
    main()

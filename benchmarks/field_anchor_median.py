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
from sciformer.evaluation.forecast import read_windows, window_starts
from sciformer.io.trajectories import TrajectoryFile
from sciformer.model.field_anchor import FNOAnchor
from sciformer.pipelines.forecast import first_patch_median


def vrmse_per_step(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The Well's VRMSE per step, averaged over windows: pred, truth (N, L, F), one field."""
    err = ((pred - truth) ** 2).mean(axis=-1)
    return np.sqrt(err / (truth.var(axis=-1, ddof=1) + 1e-7)).mean(axis=0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("heldout")
    ap.add_argument("--windows", type=int, default=8)
    a = ap.parse_args()
    fc = sciformer.load(a.run)
    anchor = fc.model.anchor
    if not isinstance(anchor, FNOAnchor):
        raise SystemExit(f"{a.run}: not an FNO-anchored run (data.anchor: fno)")
    tok, c, L = fc.tokenizer, fc.context_length, fc.tokenizer.patch_len
    f = TrajectoryFile(a.heldout)
    starts = window_starts(f.meta.n_time, c + L, a.windows)
    wins, _ = read_windows(f, list(range(f.meta.n_traj)), starts, c + L)
    wins = wins.astype(np.float32)
    truth = wins[:, c:].astype(np.float64)
    reps = tok.n_features // len(tok.loc)
    loc, scale = np.tile(tok.loc, reps), np.tile(tok.scale, reps)
    with torch.no_grad():
        median = first_patch_median(fc.model, tok, torch.from_numpy(wins[:, :c]),
                                    fc.levels).double().numpy()
        z = torch.from_numpy(((wins[:, :c] - loc) / scale).astype(np.float32))
        alone = anchor.frames_forecast(z.view(len(z), c, *anchor.shape))
        alone = alone.reshape(len(z), L, -1).double().numpy() * scale + loc
    print(f"{len(wins)} windows, steps 1-{L} after a {c}-step context (teacher-forced)\n")
    print("| predictor | " + " | ".join(f"step {i + 1}" for i in range(L)) + " |")
    print("|---|" + "---:|" * L)
    for name, pred in (("model median", median), ("FNO anchor alone", alone)):
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in vrmse_per_step(pred, truth))
              + " |")


if __name__ == "__main__":
    main()

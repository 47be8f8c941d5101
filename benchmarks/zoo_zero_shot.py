"""Zero-shot table: evaluate one run on held-out trajectory files, compare with the
context-only baselines (nRMSE over the first Lyapunov time, VPT, CRPS).

    python benchmarks/zoo_zero_shot.py RUN FILE.h5 [FILE.h5 ...] --out DIR [--samples N]

Writes DIR/<system>/metrics.json (the `sciformer evaluate` output) and DIR/zero_shot.json
(the table), and prints it as markdown with the share of systems on which the model beats
each baseline on nrmse_1lt.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sciformer.evaluation.run import evaluate
from sciformer.evaluation.zero_shot import headline

COMPARED = ("parroting_ctx", "analog_ctx", "nvar_ctx", "ridge_ctx", "persistence", "mean_ctx")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("files", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", type=int, default=None)
    a = ap.parse_args()
    table = {}
    for f in a.files:
        name = Path(f).stem
        t0 = time.process_time()
        m = evaluate(a.run, f, Path(a.out) / name, samples=a.samples, device="cpu")
        table[name] = {**headline(m), "cpu_s": time.process_time() - t0,
                       "n_windows": m["n_examples"], "channels": len(m["channels"])}
    Path(a.out, "zero_shot.json").write_text(json.dumps(table, indent=1))
    print(render(table))


def render(table: dict) -> str:
    """Markdown: one row per system, nrmse_1lt / vpt / crps of the model and baselines."""
    cols = ["model", *COMPARED]
    lines = ["| system | metric | " + " | ".join(cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for sysname, row in table.items():
        for metric in ("nrmse_1lt", "vpt", "crps"):
            vals = [row[c][metric] for c in cols]
            lines.append(f"| {sysname} | {metric} | "
                         + " | ".join("-" if v is None else f"{v:.3g}" for v in vals) + " |")
    for base in COMPARED:
        wins = sum(r["model"]["nrmse_1lt"] < r[base]["nrmse_1lt"] for r in table.values())
        lines.append(f"\nmodel nrmse_1lt below {base}: {wins}/{len(table)} systems")
    both = sum(r["model"]["nrmse_1lt"] < min(r["parroting_ctx"]["nrmse_1lt"],
                                             r["nvar_ctx"]["nrmse_1lt"]) for r in table.values())
    lines.append(f"\nmodel nrmse_1lt below parroting_ctx and nvar_ctx (the zero-shot target): "
                 f"{both}/{len(table)} systems")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Peak memory of `predict` / `evaluate` against input size: do they stream?

    python -m benchmarks.predict_memory                      # 1k, 10k, 100k sequences
    python -m benchmarks.predict_memory --sizes 1000 10000 --trajectories 1000 10000

A tiny masked-residue run and a tiny forecasting run are trained first (seconds). Each
measurement then runs in a fresh Python process (torch pinned to one thread), which reports
its resident memory before the call and its peak resident memory (VmHWM) after it, so the
table shows what the call itself added, free of what earlier calls left behind.

- ``predict fasta``: FASTA records of `--length` residues with one ``<mask>`` each, written
  as a TSV of top-5 residues; records are read and scored `sciformer.predict.GROUP` at a time.
- ``evaluate fasta``: the same records without masks, scored against the unigram baseline;
  records are streamed in groups, 10 bytes per masked residue are kept for the metrics.
- ``predict hdf5``: forecasts of Lorenz-63 trajectories (for comparison: this path holds every
  context and forecast in memory before writing).
- ``evaluate hdf5``: the same trajectory files scored by the forecasting run against the
  baselines (one window per trajectory at these sizes, horizon three Lyapunov times);
  trajectories are read, forecast and scored `EVAL_BLOCK_TRAJECTORIES` at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import table

RESIDUES = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
MASKED = ["model.d_model=32", "model.n_heads=4", "model.n_encoder_layers=1", "model.d_ff=64",
          "data.crop_length=128", "data.tokens_per_batch=8192", "train.max_steps=4",
          "train.eval_every=4", "train.warmup_steps=1", "data.val_fraction=0.2"]
FORECAST = ["model.d_model=32", "model.n_heads=4", "model.n_encoder_layers=1",
            "model.n_decoder_layers=1", "model.d_ff=64", "data.context=16", "data.horizon=8",
            "train.batch_size=64", "train.max_steps=4", "train.eval_every=4",
            "data.val_fraction=0.25"]
# Steps per simulated trajectory: evaluate's default horizon on Lorenz-63 is three Lyapunov
# times, ceil(3 * 1.104 / 0.01) = 332 steps, plus the context of 16.
TRAJ_STEPS = 400

CHILD = """
import json, re, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from sciformer.predict import predict
from sciformer.evaluation.run import evaluate
def kib(field):
    return int(re.search(field + r":\\s+(\\d+)", Path("/proc/self/status").read_text()).group(1))
kind, run, data, out = sys.argv[1:5]
start, t0 = kib("VmRSS"), time.perf_counter()
if kind.startswith("predict"):
    predict(run, data, out, device="cpu")
else:
    evaluate(run, data, out, device="cpu")
print(json.dumps({"seconds": time.perf_counter() - t0, "start_mib": start / 1024,
                  "peak_mib": kib("VmHWM") / 1024}))
"""


def write_fasta(path: Path, n: int, length: int, mask: bool) -> Path:
    """`n` random records of `length` residues (one <mask> in the middle when `mask`)."""
    rng = np.random.default_rng(0)
    with open(path, "w") as fh:
        for start in range(0, n, 10_000):
            block = rng.choice(RESIDUES, size=(min(10_000, n - start), length))
            for i, row in enumerate(block):
                seq = "".join(row)
                if mask:
                    seq = seq[: length // 2] + "<mask>" + seq[length // 2 + 1:]
                fh.write(f">r{start + i}\n{seq}\n")
    return path


def train_runs(root: Path) -> dict[str, Path]:
    """The tiny runs every measurement loads."""
    from sciformer.config import load_config
    from sciformer.simulate import simulate_to_file
    from sciformer.train.loop import pretrain

    fa = write_fasta(root / "train.fa", 200, 100, mask=False)
    pretrain([fa], load_config(None, MASKED), root / "masked", progress=False)
    h5 = simulate_to_file("lorenz63", root / "train.h5", 8, 200, seed=0)
    pretrain([h5], load_config(None, FORECAST), root / "forecast", progress=False)
    return {"masked": root / "masked", "forecast": root / "forecast"}


def measure(kind: str, run: Path, data: Path, out: Path) -> dict[str, float]:
    """Run one call in a fresh process and return its timings and memory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", CHILD, kind, str(run), str(data), str(out)],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def cases(root: Path, runs: dict[str, Path], args: argparse.Namespace):
    """(task, records, input file, run, output) for every measurement."""
    from sciformer.simulate import simulate_to_file

    for n in args.sizes:
        q = write_fasta(root / f"q{n}.fa", n, args.length, mask=True)
        yield "predict fasta", n, q, runs["masked"], root / f"p{n}.tsv"
    for n in args.sizes if args.evaluate else []:
        e = write_fasta(root / f"e{n}.fa", n, args.length, mask=False)
        yield "evaluate fasta", n, e, runs["masked"], root / f"report{n}"
    files = {n: simulate_to_file("lorenz63", root / f"t{n}.h5", n, TRAJ_STEPS, seed=1)
             for n in args.trajectories}
    for n, h in files.items():
        yield "predict hdf5", n, h, runs["forecast"], root / f"f{n}.h5"
    for n, h in files.items() if args.evaluate else []:
        yield "evaluate hdf5", n, h, runs["forecast"], root / f"freport{n}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.predict_memory")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--length", type=int, default=60, help="residues per record")
    ap.add_argument("--trajectories", type=int, nargs="*", default=[1000, 10_000])
    ap.add_argument("--no-evaluate", dest="evaluate", action="store_false")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = train_runs(root)
        for task, n, data, run, out in cases(root, runs, args):
            t0 = time.perf_counter()
            m = measure(task, run, data, out)
            rows.append({"task": task, "records": n,
                         "input MiB": data.stat().st_size / 2**20, "seconds": m["seconds"],
                         "start MiB": m["start_mib"], "peak MiB": m["peak_mib"],
                         "added MiB": m["peak_mib"] - m["start_mib"]})
            print(f"  {task} {n}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    print(table(rows, ["task", "records", "input MiB", "seconds", "start MiB", "peak MiB",
                       "added MiB"], "Peak resident memory of one call vs input size"))


if __name__ == "__main__":
    main()

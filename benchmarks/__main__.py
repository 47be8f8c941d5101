"""`python -m benchmarks`: every speed comparison, printed as tables and written as JSON.

    python -m benchmarks                 # the full set (several minutes on 2 cores)
    python -m benchmarks --quick         # a smoke run of about a minute (small shapes)
    python -m benchmarks --only train decode --threads 1
    python -m benchmarks --device cuda   # on a GPU: training (fp32, bf16) and decoding

Sections: training throughput (sciformer vs HF T5 / HF ESM / torch.nn / an SDPA reference,
fp32 and bf16 autocast, dropout 0 and 0.1, with MFU), cached decoding (vs HF T5 generate), the cost of N forecast sample paths vs one,
what each optional speed-up (compile, activation checkpointing, bf16) does to sciformer's own
step (time and memory, in a child process),
scaling of time and memory with sequence length for every attention kind (run in a child
process), FASTA reading + tokenisation MB/s and padding waste. Torch is pinned to
`--threads` intra-op threads (2 by default). Results go to benchmarks/results/latest.json.
With `--device cuda` the training and decoding comparisons run on the GPU (timers wait for
the device; MFU against a GPU matmul); the other sections measure CPU work and are skipped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import decode as decode_bench
from benchmarks import fasta_speed, machine, matmul_peak, setup_threads, table
from benchmarks import sample_paths as samples_bench
from benchmarks import train_throughput as train_bench
from sciformer.io.atomic import write_json_atomic

RESULTS = Path(__file__).parent / "results" / "latest.json"
SECTIONS = ("train", "decode", "samples", "speedups", "scaling", "fasta", "protein")
ON_GPU = ("train", "decode")  # the sections that measure a device rather than the CPU


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, one setting each (~1 min)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per peer (default 3)")
    ap.add_argument("--bf16", choices=("auto", "full", "small", "skip"), default="auto",
                    help="bf16 training size: auto = full size only where bf16 matmuls are fast")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available on this machine")
    args.device = torch.device(args.device)
    if args.device.type != "cpu":
        skipped = [s for s in args.only if s not in ON_GPU]
        if skipped:
            print(f"--device {args.device}: skipping {', '.join(skipped)} (CPU measurements)")
        args.only = [s for s in args.only if s in ON_GPU]
    return args


def peaks(quick: bool, device: torch.device,
          before: dict[str, float] | None = None) -> dict[str, float]:
    """fp32 and bf16 matmul FLOP/s (the MFU denominators): the best of this measurement and
    `before`, so a burst of load on shared cores during one of them does not lower the peak."""
    n = (512 if quick else 1024) if device.type == "cpu" else 8192
    now = {"fp32": matmul_peak(torch.float32, n, repeats=10, device=device),
           "bf16": matmul_peak(torch.bfloat16, n, repeats=3, device=device)}
    return {k: max(v, (before or {}).get(k, 0.0)) for k, v in now.items()}


def train_section(args: argparse.Namespace, peak: dict[str, float]) -> dict[str, Any]:
    """fp32 (dropout 0 and 0.1) and bf16 autocast training throughput of both families.

    bf16 runs at full size only where the CPU multiplies bf16 matrices at least half as fast
    as fp32 (AVX-512-BF16/AMX, or `--bf16 full`); elsewhere (AVX2-only CPUs emulate bf16 and
    run it ~50x slower) one small-shape bf16 setting is measured, and the note says so.
    """
    quick = train_bench.Shape(batch=4, src_len=128, tgt_len=32)
    shape = quick if args.quick else train_bench.Shape()
    repeats = args.repeats or (1 if args.quick else 3)
    fp32 = [("fp32", 0.0)] if args.quick else [("fp32", 0.0), ("fp32", 0.1)]
    rows = train_bench.run(shape, fp32, repeats, peak, device=args.device)
    slow_bf16 = peak["bf16"] < 0.5 * peak["fp32"]
    note = ""
    if args.bf16 == "full" or (args.bf16 == "auto" and not slow_bf16 and not args.quick):
        rows += train_bench.run(shape, [("bf16", 0.0), ("bf16", 0.1)], repeats, peak,
                                device=args.device)
    elif args.bf16 == "small" or (args.bf16 == "auto" and slow_bf16):
        small = train_bench.Shape(batch=2, src_len=64, tgt_len=16)
        rows += train_bench.run(small, [("bf16", 0.0)], min(repeats, 2), peak,
                                device=args.device)
        for r in rows:  # utilisation of emulated bf16 "peak" means nothing: leave it blank
            r["mfu"] = None if r["precision"] == "bf16" else r["mfu"]
        note = (f"bf16 rows use batch {small.batch}, source {small.src_len}, target "
                f"{small.tgt_len}: this CPU multiplies bf16 matrices at "
                f"{peak['bf16'] / 1e9:.1f} GFLOP/s vs {peak['fp32'] / 1e9:.1f} in fp32 "
                "(no native bf16), so bf16 autocast slows every peer down here")
    return {"rows": rows, "summary": train_bench.summary(rows), "note": note}


def decode_section(args: argparse.Namespace) -> list[dict[str, Any]]:
    shape = train_bench.Shape(batch=4, src_len=128) if args.quick else train_bench.Shape()
    steps, repeats = (16, 1) if args.quick else (decode_bench.STEPS, 3)
    return decode_bench.run(shape, args.repeats or repeats, steps, skip_slow=args.quick,
                            device=args.device)


def _in_child(module: str, args: argparse.Namespace, *options: str) -> dict[str, Any]:
    """Run `python -m module --json OUT` in a child process and read OUT: the sections that
    measure memory change the process's malloc settings, which must not touch the others."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", module, "--json", str(out), "--threads", str(args.threads),
               *options]
        subprocess.run(cmd, check=True, cwd=Path(__file__).parent.parent)
        return json.loads(out.read_text())


def scaling_section(args: argparse.Namespace) -> dict[str, Any]:
    top = 12 if args.quick else 15  # up to 4k or 32k tokens
    lengths = [str(2**k) for k in range(9, top + 1)]
    return _in_child("benchmarks.scaling", args, "--lengths", *lengths,
                     "--repeats", "1" if args.quick else "2",
                     "--time-budget", "3" if args.quick else "20", "--memory-budget", "1.5")


def speedups_section(args: argparse.Namespace) -> dict[str, Any]:
    repeats = args.repeats or (1 if args.quick else 3)
    bf16 = {"small": "auto"}.get(args.bf16, args.bf16)
    return _in_child("benchmarks.speedups", args, "--repeats", str(repeats), "--bf16", bf16,
                     *(["--quick"] if args.quick else []))


def protein_section(args: argparse.Namespace) -> dict[str, Any]:
    """embed and pseudo-perplexity vs HF EsmForMaskedLM (benchmarks.protein_inference)."""
    return _in_child("benchmarks.protein_inference", args, *(["--quick"] if args.quick else []))


def fasta_section(args: argparse.Namespace) -> dict[str, Any]:
    return fasta_speed.run(8 if args.quick else 64, 2 if args.quick else 3)


def print_train(res: dict[str, Any]) -> None:
    cols = ["family", "precision", "dropout", "batch", "sciformer_tok_s", "sciformer_mfu",
            "x_hf_t5", "x_hf_t5_range", "x_hf_esm", "x_hf_esm_range", "x_torch_nn",
            "x_sdpa_ref", "attn_dropout_x_hf_t5", "attn_dropout_x_hf_esm"]
    print(table(res["summary"], cols, "\nTraining throughput: sciformer tokens/s, MFU, and its "
                "speed-up (x) over each peer (median of interleaved repeats; _range: lowest-"
                "highest per-repeat ratio); attn_dropout_x: with attention-weight dropout too, "
                "as the peers"))
    cols = ["family", "precision", "dropout", "peer", "step_s", "tokens_per_s", "mfu"]
    print(table(res["rows"], cols, "\nTraining throughput, every peer"))
    if res["note"]:
        print("note:", res["note"])


def print_scaling(res: dict[str, Any]) -> None:
    rows = res["rows"]
    lengths = sorted({r["length"] for r in rows})
    pivot = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        for mode in ("inference", "train"):
            cells = {r["length"]: r for r in rows if r["kind"] == kind and r["mode"] == mode}
            row = {"kind": kind, "mode": mode}
            for n in lengths:
                r = cells.get(n)
                row[str(n)] = ("skip" if r is None or "skipped" in r
                               else f"{r['seconds']:.2f}s/{r['peak_mb']:.0f}MB")
            pivot.append(row)
    print(table(pivot, ["kind", "mode", *map(str, lengths)],
                "\nScaling (1-layer encoder, batch 1): seconds / peak MB vs sequence length"))


def _rescale_mfu(res: dict[str, Any], peak: dict[str, float]) -> None:
    """Recompute MFU against the final (best) peak measurement (rows left blank stay so)."""
    for row in res["rows"]:
        if row["mfu"] is not None:
            row["mfu"] = row["flops_per_s"] / peak[row["precision"]]
    res["summary"] = train_bench.summary(res["rows"])


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    setup_threads(args.threads)
    started = time.time()
    peak = peaks(args.quick, args.device)
    results: dict[str, Any] = {"command": "python -m benchmarks " + " ".join(argv or sys.argv[1:]),
                               "machine": machine(), "device": str(args.device),
                               "matmul_peak_flops": peak}
    print(f"machine: {results['machine']}")
    if "train" in args.only:
        results["train"] = train_section(args, peak)
        results["matmul_peak_flops"] = peak = peaks(args.quick, args.device, before=peak)
        _rescale_mfu(results["train"], peak)
        print_train(results["train"])
    print(f"matmul peak: fp32 {peak['fp32'] / 1e9:.1f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f}")
    if "decode" in args.only:
        results["decode"] = decode_section(args)
        cols = ["peer", "batch", "steps", "seconds", "generated_tokens_per_s",
                "sciformer_cache_speedup", "speedup_range"]
        print(table(results["decode"], cols, "\nDecoding (greedy, batch x steps)"))
    if "samples" in args.only:
        results["samples"] = samples_bench.run(args.repeats or (1 if args.quick else 3),
                                               horizon=24 if args.quick else None)
        cols = ["shape", "samples", "contexts", "horizon", "seconds", "cost_vs_one_path",
                "range"]
        print(table(results["samples"], cols, "\nForecast sample paths: cost of S paths vs one"))
    if "speedups" in args.only:
        results["speedups"] = speedups_section(args)
        cols = ["family", "variant", "batch", "first_step_s", "step_s", "speedup",
                "speedup_range", "peak_mb", "memory_vs_eager"]
        print(table(results["speedups"]["rows"], cols, "\nOptional speed-ups of sciformer's "
                    "training step vs the plain fp32 eager step (speedup > 1 = faster; "
                    "first_step_s includes compiling)"))
        print(table(results["speedups"]["memory_vs_depth"],
                    ["layers", "eager_peak_mb", "checkpointing_peak_mb"],
                    "\nPeak MB of one encoder-decoder forward + backward vs depth"))
        if results["speedups"]["note"]:
            print("note:", results["speedups"]["note"])
    if "scaling" in args.only:
        results["scaling"] = scaling_section(args)
        print_scaling(results["scaling"])
    if "fasta" in args.only:
        results["fasta"] = fasta_section(args)
        cols = ["reader", "mb", "records", "mb_per_s_wall", "mb_per_s_cpu"]
        print(table(results["fasta"]["rows"], cols, "\nFASTA reading + tokenisation"))
        print(f"padding waste at {results['fasta']['padding_waste']['budget']} tokens/batch: "
              f"length-sorted {results['fasta']['padding_waste']['sorted']:.1%}, "
              f"file order {results['fasta']['padding_waste']['file_order']:.1%}")
    if "protein" in args.only:
        results["protein"] = protein_section(args)
        print(table(results["protein"]["rows"], ["task", "precision", "peer", "residues_per_s",
                                                 "peak_mb", "sciformer_x", "max_abs_diff"],
                    "\nProtein inference vs HF EsmForMaskedLM (ESM-2 8M shape)"))
    results["machine_after"] = machine()
    results["seconds"] = time.time() - started
    write_json_atomic(args.out, results)
    load = (results["machine"]["load_average_1m"], results["machine_after"]["load_average_1m"])
    print(f"\nwrote {args.out} ({results['seconds']:.0f} s; load average {load[0]} -> {load[1]})")


if __name__ == "__main__":
    main()

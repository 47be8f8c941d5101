"""What each optional speed-up does to sciformer's own training step: time and memory.

The switches a user can turn on (`train.compile`, `train.checkpoint_activations`,
`train.precision=bf16`) against the plain fp32 eager step, for both model families of the
training benchmark at its size (`benchmarks.train_throughput`), dropout 0:

- ``eager``: the plain step (forward, loss, backward, AdamW);
- ``compile``: the whole loss computation under `torch.compile` (Inductor), as the trainer
  compiles its step; ``first_step_s`` includes the compilation;
- ``checkpointing``: activation checkpointing (each layer's activations recomputed in the
  backward pass): trades time for memory;
- ``bf16``: bf16 autocast; only where the CPU has native bf16 (or `--bf16 full`), since
  AVX2-only CPUs emulate it far slower than fp32.

Also: the peak memory of one forward + backward vs depth (2+2 ... 16+16 layers), plain and
checkpointed, since what checkpointing saves grows with the number of layers.

Reported per variant: the first step (compilation included), the median step of interleaved
repeats, the speed-up over eager (eager time / variant time; above 1 = faster) with its
per-repeat range, and the peak resident memory of one step above the level before it
(`benchmarks.PeakMemory`). Runs in its own process (`python -m benchmarks.speedups --json
OUT`; `benchmarks.__main__` does this) because measuring memory changes malloc settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks import PeakMemory, interleaved, machine, median, ratio_range, setup_threads
from benchmarks import train_throughput as tt
from sciformer import compiling
from sciformer.train.loop import native_cpu_bf16

FAMILIES = {  # family -> (model builder, batch builder, loss)
    "encdec": (tt.encdec_model, tt.encdec_batch, tt.encdec_loss),
    "masked": (tt.masked_model, tt.masked_batch, tt.masked_loss),
}


def steps(family: str, s: tt.Shape, variants: list[str]) -> dict[str, Callable[[], None]]:
    """One training-step callable per variant, each with its own (identically seeded) model."""
    build, make_batch, loss = FAMILIES[family]
    batch = make_batch(s)
    out = {}
    for name in variants:
        model = build(s, 0.0)
        model.checkpointing = name == "checkpointing"
        fn = lambda m=model: loss(m, batch)  # noqa: E731
        if name == "compile":  # as the trainer compiles its step
            compiling.prepare()
            fn = torch.compile(fn)
        out[name] = tt.train_step(model, fn, "bf16" if name == "bf16" else "fp32")
    return out


def run(s: tt.Shape, variants: list[str], repeats: int) -> list[dict[str, Any]]:
    """Rows of (family, variant, first step s, median step s, speed-up over eager, peak MB)."""
    rows = []
    for family in FAMILIES:
        torch._dynamo.reset()
        fns = steps(family, s, variants)
        first = {}
        for name, fn in fns.items():  # compilation happens here, outside the timed repeats
            start = time.perf_counter()
            fn()
            first[name] = time.perf_counter() - start
        raw = interleaved(fns, repeats)
        peak = {}
        for name, fn in fns.items():
            with PeakMemory() as mem:
                fn()
            peak[name] = None if mem.value is None else mem.value / 2**20
        eager = median(raw["eager"])
        rows += [{"family": family, "variant": name, "batch": s.batch,
                  "first_step_s": first[name], "step_s": median(raw[name]),
                  "speedup": eager / median(raw[name]),
                  "speedup_range": ratio_range(raw, "eager", name), "peak_mb": peak[name],
                  "memory_vs_eager": (peak[name] / peak["eager"]
                                      if peak[name] and peak["eager"] else None),
                  "repeats_s": raw[name]} for name in fns]
    return rows


def memory_vs_depth(s: tt.Shape, depths: list[int]) -> list[dict[str, Any]]:
    """Peak memory of one forward + backward of the encoder-decoder (n + n layers), plain and
    with activation checkpointing: what checkpointing saves grows with depth."""
    rows = []
    for n in depths:
        shape = dataclasses.replace(s, n_layers=n)
        batch = tt.encdec_batch(shape)
        row: dict[str, Any] = {"layers": f"{n}+{n}"}
        for name in ("eager", "checkpointing"):
            model = tt.encdec_model(shape, 0.0).train()
            model.checkpointing = name == "checkpointing"
            tt.encdec_loss(model, batch).backward()  # warm-up: gradients allocated once
            model.zero_grad(set_to_none=True)
            with PeakMemory() as mem:
                tt.encdec_loss(model, batch).backward()
            row[f"{name}_peak_mb"] = None if mem.value is None else mem.value / 2**20
        rows.append(row)
    return rows


def choose(bf16: str, quick: bool) -> tuple[list[str], str]:
    """The variants to run and a note on those left out."""
    variants, notes = ["eager", "checkpointing"], []
    if quick:
        notes.append("compile left out of --quick (compiling takes about a minute per family)")
    else:
        variants.insert(1, "compile")
    if bf16 == "full" or (bf16 == "auto" and native_cpu_bf16()):
        variants.append("bf16")
    else:
        notes.append("bf16 left out: this CPU has no native bf16 (AVX2 emulates it far slower "
                     "than fp32; --bf16 full runs it anyway)" if bf16 == "auto"
                     else "bf16 left out (--bf16 skip)")
    return variants, "; ".join(notes)


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.speedups`: measure and write the rows as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, no compile")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", choices=("auto", "full", "skip"), default="auto")
    ap.add_argument("--depths", type=int, nargs="*", default=[2, 4, 8, 16],
                    help="layer counts for the checkpointing memory-vs-depth rows")
    ap.add_argument("--json", required=True, help="where to write the rows")
    args = ap.parse_args(argv)
    setup_threads(args.threads)
    shape = tt.Shape(batch=4, src_len=128, tgt_len=32) if args.quick else tt.Shape()
    variants, note = choose(args.bf16, args.quick)
    rows = run(shape, variants, args.repeats)
    depth = memory_vs_depth(shape, args.depths[:2] if args.quick else args.depths)
    with open(args.json, "w") as fh:
        json.dump({"machine": machine(), "rows": rows, "memory_vs_depth": depth, "note": note}, fh)


if __name__ == "__main__":
    main()

"""Time and peak memory of the encoder vs sequence length, for every attention kind.

One sequence (batch 1) of L tokens, 1k ... 32k, through a one-layer sciformer encoder of the
reference width (d_model 256, 8 heads, d_ff 1024), for each kind in
`sciformer.model.attention.KERNELS`:

- inference: a forward pass under `torch.no_grad()` (what `embed`/`predict` do);
- training: forward + backward of a token cross-entropy.

Peak memory is the process's resident-memory high-water mark above its level before the
call (`benchmarks.PeakMemory`), so it includes every temporary. The quadratic kinds are not
run where they would not fit: `dot` and `additive` materialise (L x L) and (L x L x d_head)
score tensors per head, so lengths whose estimated footprint exceeds `--memory-budget` are
skipped and say so; every kind also stops growing L once the previous length took longer
than `--time-budget` seconds (the next would take at least twice as long).

Run in its own process (`python -m benchmarks.scaling --json OUT`; `benchmarks.__main__`
does this) because measuring memory changes the process's malloc settings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks import PeakMemory, machine, setup_threads
from sciformer.config import ModelConfig
from sciformer.model import SciFormer
from sciformer.model.attention import KERNELS

LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768]
QUADRATIC = {"scaled_dot": 2, "dot": 2, "additive": 2, "linear": 1, "local": 1}  # time exponent


def model_for(kind: str, d_model: int = 256, n_heads: int = 8, window: int = 128) -> SciFormer:
    """A one-layer encoder of attention `kind` (dropout 0, ESM vocabulary)."""
    torch.manual_seed(0)
    return SciFormer(ModelConfig(d_model=d_model, n_heads=n_heads, n_encoder_layers=1,
                                 n_decoder_layers=0, d_ff=4 * d_model, dropout=0.0,
                                 attention=kind, window=window, vocab_size=33))


def score_bytes(kind: str, length: int, n_heads: int = 8, d_head: int = 32,
                train: bool = True) -> float:
    """Rough peak bytes of the dense score tensors of `kind` at `length` (0 when not dense).

    dot: scores, softmax and their gradients, (H, L, L) float32 each (~4 live in training,
    ~2 in inference); additive: the tanh features (H, L, L, d_head), kept for backward.
    """
    if kind == "dot":
        return (4 if train else 2) * n_heads * length**2 * 4
    if kind == "additive":
        return (3 if train else 2) * n_heads * length**2 * d_head * 4
    return 0.0


def _step(model: SciFormer, tokens: torch.Tensor, train: bool) -> None:
    if train:
        logits = model.token_logits(model.encode(tokens))  # (1, L, V)
        F.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.no_grad():
            model.encode(tokens)


def measure(kind: str, length: int, train: bool, repeats: int) -> dict[str, Any]:
    """Median seconds and peak memory (MB) of one forward (+ backward) at `length` tokens."""
    model = model_for(kind).train(train)
    tokens = torch.randint(4, 24, (1, length), generator=torch.Generator().manual_seed(0))
    _step(model, tokens[:, :256], train)  # warm-up on a short input
    times = []
    with PeakMemory() as mem:
        start = time.perf_counter()
        _step(model, tokens, train)
        times.append(time.perf_counter() - start)
    for _ in range(repeats - 1):
        start = time.perf_counter()
        _step(model, tokens, train)
        times.append(time.perf_counter() - start)
    times.sort()
    return {"kind": kind, "length": length, "mode": "train" if train else "inference",
            "seconds": times[len(times) // 2], "tokens_per_s": length / times[len(times) // 2],
            "peak_mb": mem.value / 2**20 if mem.value is not None else None}


def run(lengths: list[int], kinds: list[str], repeats: int, time_budget: float,
        memory_budget: float) -> list[dict[str, Any]]:
    """Every (kind, mode, length) row; skipped lengths carry a `skipped` reason instead."""
    rows = []
    for kind in kinds:
        for train in (False, True):
            last = 0.0
            for length in lengths:
                mode = "train" if train else "inference"
                need = score_bytes(kind, length, train=train)
                if need > memory_budget:
                    rows.append({"kind": kind, "length": length, "mode": mode,
                                 "skipped": f"score tensors ~{need / 2**30:.1f} GiB > budget"})
                    continue
                if last > time_budget:
                    rows.append({"kind": kind, "length": length, "mode": mode,
                                 "skipped": f"previous length took {last:.0f} s > time budget"})
                    continue
                row = measure(kind, length, train, repeats if length <= 4096 else 1)
                last = row["seconds"] * 2 ** (QUADRATIC[kind] - 1)  # next length's lower bound
                rows.append(row)
                print(f"  scaling {kind:10s} {mode:9s} L={length:6d} {row['seconds']:.2f} s "
                      f"{row['peak_mb'] or 0:.0f} MB", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    """`python -m benchmarks.scaling`: measure and write the rows as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    ap.add_argument("--kinds", nargs="+", default=list(KERNELS), choices=list(KERNELS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--time-budget", type=float, default=20.0, help="seconds per measurement")
    ap.add_argument("--memory-budget", type=float, default=3.0, help="GiB of score tensors")
    ap.add_argument("--json", required=True, help="where to write the rows")
    args = ap.parse_args(argv)
    setup_threads(args.threads)
    rows = run(args.lengths, args.kinds, args.repeats, args.time_budget, args.memory_budget * 2**30)
    with open(args.json, "w") as fh:
        json.dump({"machine": machine(), "rows": rows}, fh)


if __name__ == "__main__":
    main()

"""Protein inference: sciformer `embed` and pseudo-perplexity against HF EsmForMaskedLM.

One random ESM-2-shaped model (default the 8M shape: width 320, 6 layers, 20 heads) is built
with `transformers`, saved and imported with `import-esm2`, so both sides hold the same
weights (`benchmarks.embed_throughput.build_pair`). Each measurement runs the same proteins
(the first shipped ones no longer than one window) through:

- ``embed``: sciformer's `embed_sequences` (mean of the final layer per protein), which
  batches length-sorted pieces to the token budget and closes a batch before it pads more
  than 10% (`residues.inference_batches`), vs HF `model.esm(...).last_hidden_state` as a user
  of fair-esm's recipe runs it: length-sorted batches filled to the token budget (fair-esm's
  `get_batch_indices`, as its `extract.py`; already better than batching in file order), and,
  in a third row, HF given sciformer's own batches (the kernels compared alone);
- ``pseudo-perplexity``: every residue masked in turn (Salazar et al. 2020), the L masked
  copies batched to the same token budget: sciformer's `predict --score` path
  (`sciformer.pipelines.residues.each_masked_alone`, which computes the last layer only at
  the masked position) vs HF's full `EsmForMaskedLM` logits read at the masked position.

Residues per second (scored residues / wall seconds, median of interleaved repeats after a
warm-up) and the peak resident memory above the start (`benchmarks.PeakMemory`) of each call
are reported, with the largest difference between the two sides' outputs. bf16 rows are
measured only where the CPU has native bf16 (`sciformer.precision.native_cpu_bf16`:
AVX-512-BF16/AMX); elsewhere the note says it was skipped. sciformer's bf16 is its
`precision="bf16"` option; HF's is `torch.autocast` around the call, as a user would write it.
This measures only; it changes no model code.

    python -m benchmarks.protein_inference [--size 8M] [--quick] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import PeakMemory, matmul_peak, median, setup_threads, table
from benchmarks.embed_throughput import SIZES, build_pair, proteins, run_hf
from sciformer.pipelines.residues import each_masked_alone, embed_sequences, inference_batches
from sciformer.precision import native_cpu_bf16
from sciformer.tokenizers.protein import TOKENIZER, frame, token_budget_batches

CPU = torch.device("cpu")


@torch.no_grad()
def hf_pseudo_log_probs(model, seq: np.ndarray, budget: int) -> np.ndarray:
    """log p(true residue) at every position of `seq` under HF, each masked alone; the
    masked copies go through in batches of at most `budget` tokens."""
    framed = frame(seq)  # (L + 2,)
    out = np.empty(len(seq))
    for members in token_budget_batches([len(framed)] * len(seq), budget, shuffle=False):
        pos = torch.as_tensor(members)
        tokens = torch.as_tensor(framed).repeat(len(members), 1)  # (B, L + 2)
        tokens[torch.arange(len(members)), pos + 1] = TOKENIZER.mask_id
        logits = model(input_ids=tokens).logits  # (B, L + 2, V): every position computed
        picked = logits[torch.arange(len(members)), pos + 1].float()  # (B, V)
        logp = torch.log_softmax(picked, dim=-1)
        out[members] = logp[torch.arange(len(members)), torch.as_tensor(seq[members])].numpy()
    return out


@torch.no_grad()
def ours_pseudo_log_probs(model, seq: np.ndarray, window: int, budget: int,
                          precision: str = "fp32") -> np.ndarray:
    """log p(true residue) at every position of `seq`, each masked alone, through the path
    of `ProteinLM.pseudo_log_likelihoods` (`predict --score`)."""
    logp = each_masked_alone(model, seq, np.arange(len(seq)), window, budget, CPU, precision)
    return logp[np.arange(len(seq)), seq.astype(np.int64)]


def ours_embed(model, seqs: list[np.ndarray], layer: int, window: int, budget: int,
               precision: str = "fp32") -> np.ndarray:
    """Mean `layer` vector per protein through sciformer's embedding path (`embed`)."""
    return np.stack([res[0].mean(axis=0) for _, res, _ in embed_sequences(
        model, seqs, [layer], window, budget, CPU, precision=precision)])


@torch.no_grad()
def hf_embed_in_batches(model, seqs: list[np.ndarray], batches: list[list[int]]) -> np.ndarray:
    """HF's mean last_hidden_state per protein, computed in the given batches."""
    out: list[np.ndarray] = [np.empty(0)] * len(seqs)
    for members in batches:
        tokens = TOKENIZER.pad_batch([frame(seqs[m]) for m in members])
        h = model.esm(input_ids=tokens, attention_mask=(tokens != TOKENIZER.pad_id).long())
        h = h.last_hidden_state.float().numpy()
        for row, m in enumerate(members):
            out[m] = h[row, 1:1 + len(seqs[m])].mean(axis=0)
    return np.stack(out)


def _autocast(precision: str, peer: str):
    """bf16 autocast around an HF call (sciformer's side takes its own option), or nothing."""
    if precision == "bf16" and peer != "sciformer":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _timed_repeats(jobs: dict[str, Any], repeats: int) -> dict[str, dict[str, list[float]]]:
    """Wall and process-CPU seconds of each job, `repeats` times, peers interleaved."""
    out: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in jobs}
    for _ in range(repeats):
        for name, fn in jobs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            out[name]["cpu"].append(time.process_time() - cpu)
            out[name]["wall"].append(time.perf_counter() - wall)
    return out


def _measure(jobs: dict[str, Any], residues: int, repeats: int, precision: str
             ) -> dict[str, dict[str, Any]]:
    """Residues per wall second and per CPU second (medians of interleaved repeats) and the
    peak MB of one call of each job. On a shared machine the CPU-second rate is the stable
    one: with one thread it is the work itself, whatever else the cores are running."""
    out = {}
    for name, fn in jobs.items():
        with _autocast(precision, name):
            fn()  # warm-up outside the memory window
            with PeakMemory() as mem:
                result = fn()
        out[name] = {"result": result,
                     "peak_mb": None if mem.value is None else mem.value / 2**20}
    timed = {name: _in_precision(fn, precision, name) for name, fn in jobs.items()}
    times = _timed_repeats(timed, repeats)
    for name in jobs:
        out[name]["residues_per_s"] = residues / median(times[name]["wall"])
        out[name]["residues_per_cpu_s"] = residues / median(times[name]["cpu"])
    return out


def _in_precision(fn: Any, precision: str, peer: str) -> Any:
    """`fn` run under the peer's bf16 autocast where it needs one."""
    def call() -> Any:
        with _autocast(precision, peer):
            return fn()
    return call


def _jobs(hf, ours, cfg, embed_seqs, ppl_seqs, budget: int, precision: str
          ) -> dict[str, tuple[int, dict[str, Any]]]:
    """{task: (residues, {peer: job})} for one precision."""
    window, layer = cfg.data.crop_length, cfg.model.n_encoder_layers
    ours_batches = inference_batches([len(s) + 2 for s in embed_seqs], budget)
    return {
        "embed": (sum(map(len, embed_seqs)), {
            "sciformer": lambda: ours_embed(ours, embed_seqs, layer, window, budget,
                                            precision),
            "HF EsmForMaskedLM": lambda: run_hf(hf, embed_seqs, budget, CPU),
            "HF, sciformer's batches": lambda: hf_embed_in_batches(hf, embed_seqs,
                                                                   ours_batches)}),
        "pseudo-perplexity": (sum(map(len, ppl_seqs)), {
            "sciformer": lambda: np.concatenate(
                [ours_pseudo_log_probs(ours, s, window, budget, precision) for s in ppl_seqs]),
            "HF EsmForMaskedLM": lambda: np.concatenate(
                [hf_pseudo_log_probs(hf, s, budget) for s in ppl_seqs])}),
    }


def run(size: str, n_embed: int, n_ppl: int, repeats: int, budget: int) -> dict[str, Any]:
    """Rows of both tasks, every peer, fp32 (and bf16 where the CPU has it natively)."""
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours, cfg = build_pair(size, CPU, Path(tmp))
    embed_seqs = proteins(n_embed, cfg.data.crop_length)
    ppl_seqs = proteins(n_ppl, 256)
    cfg.data.tokens_per_batch = budget
    bf16_speed = matmul_peak(torch.bfloat16, 512, 3) / matmul_peak(torch.float32, 512, 3)
    native_bf16 = native_cpu_bf16()
    fp32_results: dict[str, np.ndarray] = {}
    rows = []
    for precision in ("fp32", "bf16") if native_bf16 else ("fp32",):
        tasks = _jobs(hf, ours, cfg, embed_seqs, ppl_seqs, budget, precision)
        for task, (residues, jobs) in tasks.items():
            res = _measure(jobs, residues, repeats, precision)
            mine = res["sciformer"]
            ours_out = np.asarray(mine["result"], np.float64)
            ref = fp32_results.setdefault(task, ours_out)  # sciformer's fp32 result
            for name in jobs:
                r = res[name]
                out = np.asarray(r["result"], np.float64)
                rows.append({
                    "size": size, "task": task, "precision": precision, "peer": name,
                    "residues": residues, "residues_per_s": r["residues_per_s"],
                    "residues_per_cpu_s": r["residues_per_cpu_s"], "peak_mb": r["peak_mb"],
                    "max_abs_diff": float(np.abs(ours_out - out).max()),
                    "vs_fp32": float(np.abs(out - ref).max()),
                    "sciformer_x": mine["residues_per_s"] / r["residues_per_s"],
                    "sciformer_x_cpu": mine["residues_per_cpu_s"] / r["residues_per_cpu_s"]})
    note = "" if native_bf16 else ("bf16 skipped: this CPU has no native bf16 (AVX-512-BF16 "
                                   "/ AMX), so bf16 would be emulated and slower than fp32")
    return {"size": size, "shape": SIZES[size], "budget": budget, "rows": rows, "note": note,
            "bf16_matmul_over_fp32": bf16_speed}


@torch.no_grad()
def pseudo_perplexity_memory(lengths: list[int], window: int = 126) -> list[dict[str, Any]]:
    """Peak memory of sciformer's pseudo-perplexity (every residue masked alone) on random
    sequences of the given lengths, with the tiny ESM-2 shape (64 wide, 2 layers) and
    windows of `window` residues: with masked copies built a window at a time, the peak
    should grow with the length only through the (L, 33) output, not as L^2."""
    with tempfile.TemporaryDirectory() as tmp:
        _, ours, _ = build_pair("tiny", CPU, Path(tmp))
    rng = np.random.default_rng(0)
    rows = []
    for n in lengths:
        seq = np.asarray(TOKENIZER.standard_ids, np.uint8)[rng.integers(0, 20, n)]
        with PeakMemory() as mem:
            wall, cpu = time.perf_counter(), time.process_time()
            logp = ours_pseudo_log_probs(ours, seq, window, 4096)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        rows.append({"residues": n, "window": window,
                     "peak_mb": None if mem.value is None else mem.value / 2**20,
                     "cpu_s": cpu, "wall_s": wall,
                     "pseudo_perplexity": float(np.exp(-logp.mean()))})
    return rows


@torch.no_grad()
def roofline(size: str, n_proteins: int = 3, budget: int = 4096) -> list[dict[str, Any]]:
    """Where pseudo-perplexity's time goes on each side (`torch.profiler` op self times):
    matmuls, attention and everything else, and the matmuls' FLOP rate against this core's
    sgemm peak. Matmul FLOPs are counted analytically: 12 d^2 multiply-adds per token and
    layer (QKV, output, a 4x feed-forward); sciformer's sparse last layer computes only keys
    and values for every token (5/6 of a layer fewer)."""
    from torch.profiler import profile

    with tempfile.TemporaryDirectory() as tmp:
        hf, ours, cfg = build_pair(size, CPU, Path(tmp))
    d, layers, _ = SIZES[size]
    seqs = proteins(n_proteins, 256)
    tokens = sum(len(s) * (len(s) + 2) for s in seqs)  # L masked copies of L + 2 tokens
    peak = max(matmul_peak(torch.float32, 1024, 5) for _ in range(3))
    window = cfg.data.crop_length
    rows = []
    for peer, fn, depth in (
            ("sciformer", lambda s: ours_pseudo_log_probs(ours, s, window, budget),
             layers - 5 / 6),
            ("HF EsmForMaskedLM", lambda s: hf_pseudo_log_probs(hf, s, budget), layers)):
        fn(seqs[0][:40])  # warm-up
        with profile() as prof:
            for s in seqs:
                fn(s)
        self_s = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
        matmul = sum(self_s.get(k, 0.0) for k in ("aten::addmm", "aten::mm", "aten::bmm"))
        attention = sum(v for k, v in self_s.items() if "attention" in k)
        flops = 2 * tokens * 12 * d * d * depth
        rows.append({"size": size, "peer": peer, "matmul_s": matmul, "attention_s": attention,
                     "other_s": sum(self_s.values()) - matmul - attention,
                     "matmul_gflops": flops / matmul / 1e9,
                     "of_sgemm_peak": flops / matmul / peak, "peak_gflops": peak / 1e9})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=SIZES, nargs="+", default=["8M"])
    ap.add_argument("--quick", action="store_true", help="fewer proteins, one repeat")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens-per-batch", type=int, default=4096)
    ap.add_argument("--memory-lengths", type=int, nargs="*", default=[],
                    help="also measure pseudo-perplexity peak memory at these lengths")
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    ap.add_argument("--roofline", action="store_true",
                    help="only profile pseudo-perplexity (matmul share and FLOP rate)")
    args = ap.parse_args(argv)
    setup_threads(args.threads)
    if args.roofline:
        rows = [r for size in args.size for r in roofline(size)]
        print(table(rows, list(rows[0]), "\nPseudo-perplexity: op self time (s) by kind, "
                    "matmul FLOP rate vs this core's sgemm peak"))
        return
    results = [run(size, 8 if args.quick else 32, 1 if args.quick else 3,
                   args.repeats or (1 if args.quick else 3), args.tokens_per_batch)
               for size in args.size]
    cols = ["size", "task", "precision", "peer", "residues", "residues_per_s",
            "residues_per_cpu_s", "peak_mb", "sciformer_x", "sciformer_x_cpu", "max_abs_diff",
            "vs_fp32"]
    rows = [r for res in results for r in res["rows"]]
    print(table(rows, cols, f"\nProtein inference vs HF EsmForMaskedLM, {args.threads} threads "
                "(sciformer_x: sciformer's rate over the row's; max_abs_diff: largest "
                "difference from sciformer's result; vs_fp32: from sciformer's fp32 result)"))
    for res in results:
        print(f"{res['size']}: bf16 matmul {res['bf16_matmul_over_fp32']:.2f}x fp32. "
              + (res["note"] or ""))
    memory = pseudo_perplexity_memory(args.memory_lengths) if args.memory_lengths else []
    if memory:
        print(table(memory, list(memory[0]), "\nPseudo-perplexity peak memory (tiny shape)"))
    if args.json:
        args.json.write_text(json.dumps({"sizes": results, "memory": memory}, default=str))


if __name__ == "__main__":
    main()

"""Embedding throughput: sciformer embed vs Hugging Face EsmForMaskedLM at the same size.

One random ESM-2-shaped model is built with `transformers` (no download), saved, and imported
with `sciformer import-esm2`, so both sides hold the same weights. Both embed the same
proteins (the first N records of the shipped proteome) in length-sorted token-budget
batches (fair-esm's recipe; sciformer also closes a batch before it pads more than 10%,
`residues.inference_batches`), in the same process, and produce the same thing: the mean
final-layer vector per protein.
sciformer's time includes its windowing/blending bookkeeping; HF gets pre-built batches.
Residues per second are printed per repeat, with medians and the sciformer / HF ratio.

    python benchmarks/embed_throughput.py [--size 8M] [--n-seqs 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sciformer.esm2 import import_esm2
from sciformer.io.fasta import read_fasta
from sciformer.pipelines.residues import embed_sequences
from sciformer.runs import load_model as load_run
from sciformer.tokenizers.protein import TOKENIZER, frame, token_budget_batches

ROOT = Path(__file__).resolve().parents[1]
#: ESM-2 sizes (Lin et al. 2023, table S1): width, layers, heads.
SIZES = {"tiny": (64, 2, 4), "8M": (320, 6, 20), "35M": (480, 12, 20), "150M": (640, 30, 20)}


def build_pair(size: str, device: torch.device, folder: Path):
    """(HF EsmForMaskedLM, sciformer model) holding the same random weights, in eval mode."""
    from transformers import EsmConfig, EsmForMaskedLM

    d, layers, heads = SIZES[size]
    cfg = EsmConfig(vocab_size=33, hidden_size=d, num_hidden_layers=layers,
                    num_attention_heads=heads, intermediate_size=4 * d,
                    position_embedding_type="rotary", token_dropout=True, pad_token_id=1,
                    mask_token_id=32, max_position_embeddings=1026, emb_layer_norm_before=False,
                    layer_norm_eps=1e-5, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    hf = EsmForMaskedLM(cfg).eval()
    hf.save_pretrained(folder / "hf")
    import_esm2(folder / "hf", folder / "run")
    ours, run_cfg, _ = load_run(folder / "run", device)
    return hf.to(device), ours, run_cfg


def proteins(n: int, max_len: int) -> list[np.ndarray]:
    """Residue ids of the first `n` shipped proteins no longer than `max_len`."""
    out = []
    for rec in read_fasta(ROOT / "data/proteins/train.faa"):
        ids = TOKENIZER.encode(rec.sequence, add_special=False)
        if len(ids) <= max_len:
            out.append(ids)
        if len(out) == n:
            break
    return out


@torch.no_grad()
def run_ours(model, seqs, layer: int, window: int, budget: int, device) -> np.ndarray:
    """Mean final-layer vector per protein through sciformer's embedding path."""
    pooled = [per_res[0].mean(axis=0)
              for _, per_res, _ in embed_sequences(model, seqs, [layer], window, budget, device)]
    return np.stack(pooled)


@torch.no_grad()
def run_hf(model, seqs, budget: int, device) -> np.ndarray:
    """The same with HF: token-budget batches, last_hidden_state averaged over residues."""
    out = [None] * len(seqs)
    for members in token_budget_batches([len(s) + 2 for s in seqs], budget, shuffle=False):
        tokens = TOKENIZER.pad_batch([frame(seqs[m]) for m in members]).to(device)
        h = model.esm(input_ids=tokens, attention_mask=(tokens != TOKENIZER.pad_id).long())
        h = h.last_hidden_state.float().cpu().numpy()
        for row, m in enumerate(members):
            out[m] = h[row, 1:1 + len(seqs[m])].mean(axis=0)
    return np.stack(out)


def timed(fn, device) -> tuple[float, np.ndarray]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="8M")
    parser.add_argument("--n-seqs", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens-per-batch", type=int, default=4096)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours, cfg = build_pair(args.size, device, Path(tmp))
    seqs = proteins(args.n_seqs, cfg.data.crop_length)  # one window each: same work both sides
    residues = sum(len(s) for s in seqs)
    layer, window = cfg.model.n_encoder_layers, cfg.data.crop_length
    jobs = {"sciformer": lambda: run_ours(ours, seqs, layer, window, args.tokens_per_batch, device),
            "HF EsmForMaskedLM": lambda: run_hf(hf, seqs, args.tokens_per_batch, device)}
    for fn in jobs.values():  # warm-up
        fn()
    rates: dict[str, list[float]] = {name: [] for name in jobs}
    results = {}
    for _ in range(args.repeats):
        for name, fn in jobs.items():
            seconds, results[name] = timed(fn, device)
            rates[name].append(residues / seconds)
    diff = np.abs(results["sciformer"] - results["HF EsmForMaskedLM"]).max()
    print(f"ESM-2 {args.size} shape {SIZES[args.size]}, {len(seqs)} proteins, {residues} residues, "
          f"device {device}, threads {torch.get_num_threads()}, budget {args.tokens_per_batch}")
    print(f"max |pooled difference| between the two: {diff:.2e}")
    print("| implementation | median residues/s | repeats |\n|---|---:|---|")
    for name, r in rates.items():
        print(f"| {name} | {statistics.median(r):,.0f} | {', '.join(f'{x:,.0f}' for x in r)} |")
    ratio = statistics.median(rates["sciformer"]) / statistics.median(rates["HF EsmForMaskedLM"])
    print(f"ratio sciformer / HF (median): {ratio:.2f}")


if __name__ == "__main__":
    main()

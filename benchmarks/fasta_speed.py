"""FASTA reading + tokenisation speed, and the padding waste of token-budget batching.

A synthetic UniProt-like file (gamma-distributed lengths, mean ~380 residues, 60-column
lines, Swiss-Prot style headers) of `size_mb` megabytes is written to a temporary folder and
read three ways, interleaved, several times:

- ``batches+encode``: `read_fasta_batches` + `ProteinTokenizer.encode_concatenated`, the bulk
  path (vectorised parse, one table lookup per block, no per-record Python);
- ``records+encode``: `read_fasta` + `ProteinTokenizer.encode` per record (the record path);
- ``records``: `read_fasta` alone.

Throughput is file megabytes (10^6 bytes) per second of wall time and of process CPU time
(the latter is less sensitive to other programs sharing the cores).

Padding waste: the fraction of padded batch cells that are padding when sequences (cropped
to 256 residues + <cls>/<eos>, as the masked task does) are grouped by
`token_budget_batches` (length-sorted, fair-esm style) vs in file order to the same budget.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import median
from sciformer.io.fasta import read_fasta, read_fasta_batches
from sciformer.tokenizers.protein import ProteinTokenizer, token_budget_batches

AMINO = np.frombuffer(b"LAGVSERTIDPKQNFYMHWC", dtype=np.uint8)


def write_synthetic(path: Path, size_mb: float, seed: int = 0) -> list[int]:
    """Write a UniProt-like FASTA file of about `size_mb` MB; return the record lengths."""
    rng = np.random.default_rng(seed)
    parts, lengths, total, i = [], [], 0, 0
    while total < size_mb * 1e6:
        n = int(rng.gamma(2.0, 180.0)) + 20
        seq = AMINO[rng.integers(0, 20, n)].tobytes()
        body = b"\n".join(seq[j : j + 60] for j in range(0, n, 60))
        head = b">sp|Q%05d|PROT%d_HUMAN Synthetic protein %d OS=Homo sapiens OX=9606" % (i, i, i)
        rec = head + b"\n" + body + b"\n"
        parts.append(rec)
        lengths.append(n)
        total, i = total + len(rec), i + 1
    path.write_bytes(b"".join(parts))
    return lengths


def readers(path: Path) -> dict[str, Callable[[], int]]:
    """The three ways of reading `path`; each returns the number of residues seen."""
    tok = ProteinTokenizer()

    def bulk() -> int:
        batches = read_fasta_batches(path)
        return sum(len(tok.encode_concatenated(b.residues, b.offsets)[0]) for b in batches)

    def per_record() -> int:
        return sum(len(tok.encode(r.sequence, add_special=False)) for r in read_fasta(path))

    def records() -> int:
        return sum(len(r.sequence) for r in read_fasta(path))

    return {"batches+encode": bulk, "records+encode": per_record, "records": records}


def padding_waste(lengths: list[int], budget: int, sort: bool) -> float:
    """Fraction of padded cells that are padding, for sorted (fair-esm) or file-order batches."""
    if sort:
        batches = token_budget_batches(lengths, budget, shuffle=False)
    else:
        batches, current, longest = [], [], 0
        for i, n in enumerate(lengths):
            if current and (len(current) + 1) * max(longest, n) > budget:
                batches.append(current)
                current, longest = [], 0
            current.append(i)
            longest = max(longest, n)
        batches.append(current)
    cells = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1.0 - sum(lengths) / cells


def run(size_mb: float, repeats: int) -> dict[str, Any]:
    """Throughput rows (MB/s wall and CPU) and padding waste of the synthetic file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic.fa"
        lengths = write_synthetic(path, size_mb)
        size = path.stat().st_size
        fns = readers(path)
        wall: dict[str, list[float]] = {k: [] for k in fns}
        cpu: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                w, c = time.perf_counter(), time.process_time()
                fn()
                wall[name].append(time.perf_counter() - w)
                cpu[name].append(time.process_time() - c)
    mb = size / 1e6
    rows = [{"reader": k, "mb": mb, "records": len(lengths), "mb_per_s_wall": mb / median(wall[k]),
             "mb_per_s_cpu": mb / median(cpu[k])} for k in fns]
    cropped = [min(n, 256) + 2 for n in lengths]
    waste = {"budget": 8192, "sorted": padding_waste(cropped, 8192, True),
             "file_order": padding_waste(cropped, 8192, False)}
    return {"rows": rows, "padding_waste": waste}

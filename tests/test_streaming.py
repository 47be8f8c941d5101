"""predict/evaluate stream large inputs: peak memory does not grow with the input's size.

Peaks are Python + numpy allocations traced by tracemalloc (deterministic, unlike RSS). The
FASTA read size and the record groups are shrunk here so that inputs of a few hundred kB
already span many reads and groups. What may still grow: the set of record ids the reader
keeps to refuse duplicate ids (~130 bytes a record) and, in evaluate, the 10 bytes kept per
masked residue for the metrics (20 while they are joined). Holding the input itself would
cost over 600 bytes a record here. benchmarks/predict_memory.py measures RSS up to 100k records.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import sciformer.evaluation.masked as evaluate_masked
import sciformer.predict as predict_mod
from sciformer.io import fasta as fasta_mod
from sciformer.runs import load_model as load_run

RESIDUES = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
SMALL, LARGE = 100, 800
PER_RECORD = 250  # allowed growth in bytes per extra record (ids set + bookkeeping)


@pytest.fixture(autouse=True)
def small_buffers(monkeypatch):
    monkeypatch.setattr(fasta_mod, "_CHUNK", 1 << 14)  # 16 kB reads
    monkeypatch.setattr(predict_mod, "GROUP", 16)
    monkeypatch.setattr(evaluate_masked, "GROUP", 16)


def write_records(path: Path, n: int, length: int, mask: bool) -> Path:
    """n random records of `length` residues (one <mask> in the middle when `mask`)."""
    rng = np.random.default_rng(n)
    with open(path, "w") as fh:
        for i in range(n):
            seq = "".join(rng.choice(RESIDUES, length))
            if mask:
                seq = seq[: length // 2] + "<mask>" + seq[length // 2 + 1:]
            fh.write(f">r{i}\n{seq}\n")
    return path


def traced_peak(fn: Callable[[], object]) -> int:
    """Peak bytes allocated (Python objects and numpy buffers) while `fn` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_predict_memory_does_not_grow_with_input(tmp_path: Path, masked_run: Path):
    inputs = {n: write_records(tmp_path / f"in{n}.fa", n, 600, mask=True) for n in (SMALL, LARGE)}
    outs = {n: tmp_path / f"out{n}.tsv" for n in inputs}
    run = lambda n: predict_mod.predict(masked_run, inputs[n], outs[n], device="cpu")  # noqa: E731
    run(SMALL)  # warm-up: lazy imports and caches are not the input's fault
    peaks = {n: traced_peak(lambda n=n: run(n)) for n in inputs}
    print(f"predict traced peak: {SMALL} records {peaks[SMALL] / 2**20:.2f} MiB, "
          f"{LARGE} records {peaks[LARGE] / 2**20:.2f} MiB")
    assert len(outs[LARGE].read_text().splitlines()) == LARGE + 1  # every record answered
    assert peaks[LARGE] - peaks[SMALL] < PER_RECORD * (LARGE - SMALL)  # input: 600 B a record


def test_evaluate_memory_does_not_grow_with_input(tmp_path: Path, masked_run: Path):
    model, cfg, _ = load_run(masked_run)
    inputs = {n: write_records(tmp_path / f"ev{n}.fa", n, 60, mask=False) for n in (SMALL, LARGE)}
    run = lambda n: evaluate_masked.score_records(  # noqa: E731
        model, cfg, inputs[n], None, torch.device("cpu"))
    run(SMALL)
    peaks = {n: traced_peak(lambda n=n: run(n)) for n in inputs}
    print(f"evaluate traced peak: {SMALL} records {peaks[SMALL] / 2**20:.2f} MiB, "
          f"{LARGE} records {peaks[LARGE] / 2**20:.2f} MiB")
    (small, _), (res, n_records) = run(SMALL), run(LARGE)
    assert n_records == LARGE and len(res["true"]) >= LARGE  # >= one masked residue each
    extra_masked = len(res["true"]) - len(small["true"])
    assert peaks[LARGE] - peaks[SMALL] < PER_RECORD * (LARGE - SMALL) + 20 * extra_masked


def test_evaluate_streaming_masks_the_same_positions_as_one_batch(tmp_path: Path, masked_run: Path):
    """Group size does not change which residues are masked (one random stream)."""
    model, cfg, _ = load_run(masked_run)
    data = write_records(tmp_path / "ev.fa", 40, 40, mask=False)
    grouped, _ = evaluate_masked.score_records(model, cfg, data, None, torch.device("cpu"))
    evaluate_masked.GROUP = 10_000
    whole, _ = evaluate_masked.score_records(model, cfg, data, None, torch.device("cpu"))
    assert np.array_equal(grouped["true"], whole["true"])
    np.testing.assert_allclose(grouped["log_prob"], whole["log_prob"], atol=1e-5)

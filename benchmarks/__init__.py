"""Speed benchmarks of sciformer against peers run side by side in the same process.

`python -m benchmarks` runs them all and prints tables of medians and ratios (see
`benchmarks.__main__`). This module holds what every benchmark shares: interleaved timing,
the matmul peak that model FLOPs utilisation is measured against, peak-memory probes, the
machine description and plain-text tables.

Timing discipline: peers are timed in turn within each repeat (A B C, A B C, ...), never all
repeats of A then all of B, so a change of machine load hits every peer alike; the median of
the repeats is reported, and ratios are taken between medians measured in the same run.
"""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

THREADS = 2  # the benchmarks pin torch to this many intra-op threads (the reference machine's)
CPU = torch.device("cpu")


def setup_threads(threads: int = THREADS) -> None:
    """Pin torch's intra-op threads so runs on different machines compare like for like."""
    torch.set_num_threads(threads)


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int,
                warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each callable, `repeats` times, peers interleaved within each repeat.

    Each callable runs `warmup` untimed times first (allocator, kernels, lazy init).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def ratio_range(times: dict[str, list[float]], peer: str, ours: str) -> str:
    """'lo-hi' of the per-repeat ratios peer time / our time (peers run interleaved, so each
    repeat compares runs made moments apart): shows how much the machine's noise moves a ratio."""
    ratios = [p / o for p, o in zip(times[peer], times[ours])]
    return f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"


def median(xs: list[float]) -> float:
    """Median of a non-empty list (NaN when empty)."""
    return statistics.median(xs) if xs else float("nan")


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on a GPU, so that a timer around it measures it (CPU: no-op)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synced(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """`fn` that returns only once `device` has finished the work it queued (for timing)."""
    def run() -> Any:
        out = fn()
        synchronize(device)
        return out
    return run


def matmul_peak(dtype: torch.dtype, n: int = 1024, repeats: int = 5,
                budget_s: float = 20.0, device: torch.device = CPU) -> float:
    """Best-of-repeats FLOP/s of an (n x n) @ (n x n) matmul in `dtype` on `device`.

    The reference that model FLOPs utilisation (MFU) is measured against, taken in the same
    process and moment as the model timings. The best repeat is the peak; a dtype the CPU
    has no fast kernels for (bf16 without AVX-512-BF16/AMX) stops early once past `budget_s`.
    """
    a, b = (torch.randn(n, n).to(device, dtype) for _ in range(2))
    a @ b  # warm-up
    synchronize(device)
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        synchronize(device)
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if spent > budget_s:
            break
    return 2 * n**3 / best


class PeakMemory:
    """Peak resident memory (bytes) above the starting point, over a `with` block, on Linux.

    Large allocations are forced onto mmap (so freed tensors leave the process at once),
    free heap pages are returned (`malloc_trim`), and the kernel's high-water mark VmHWM is
    reset by writing 5 to /proc/self/clear_refs; the peak is VmHWM after minus VmRSS before.
    `value` is None where this is unavailable.
    """

    _libc: Any = None

    def __init__(self) -> None:
        self.value: int | None = None

    @classmethod
    def _malloc(cls) -> Any:
        if cls._libc is None:
            cls._libc = ctypes.CDLL("libc.so.6")
            cls._libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: fixed 1 MiB, no dynamic growth
        return cls._libc

    def __enter__(self) -> PeakMemory:
        try:
            self._malloc().malloc_trim(0)
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._start = _proc_status("VmRSS")
        except OSError:
            self._start = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._start is not None:
            self.value = max(0, _proc_status("VmHWM") - self._start)


def _proc_status(field: str) -> int:
    """A memory field of /proc/self/status in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}")


def machine() -> dict[str, Any]:
    """What the numbers were measured on, including the load, which skews absolute speeds."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_average_1m": round(load[0], 2),
            "python": platform.python_version()}


def table(rows: list[dict[str, Any]], columns: list[str], title: str = "") -> str:
    """A fixed-width text table of `rows` (dicts) with the given column keys."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # NaN
                return "-"
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return "-" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c)
              for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(s.rjust(w) for s, w in zip(cells, widths))  # noqa: E731
    out = [title] if title else []
    out += [line(columns), line(["-" * w for w in widths])] + [line(b) for b in body]
    return "\n".join(out)

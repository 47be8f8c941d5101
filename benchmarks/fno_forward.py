"""The FNO's forward pass (sciformer.evaluation.fno.FNO2d) against the textbook form of the
same network, run side by side on the same weights and inputs: 1 x 1 `nn.Conv2d` layers and
spectral layers by a full `rfft2`, the kept modes times the complex weights (einsum) and an
`irfft2` of the zero-padded spectrum.

    python -m benchmarks.fno_forward [--threads 2] [--grid 64] [--rows 1 2 8 16 32 64]

Prints, per rows per call (frames forecast together, as the FNO anchor's `ROWS`), the
milliseconds per frame of each (the best of six timings, taken in three interleaved rounds
so that a noisy machine hurts both alike), their ratio, the largest difference of the outputs, and then one training step
(forward + backward) at 16 rows. What it ran on (CPU, threads, load) is printed first.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmarks import machine
from sciformer.evaluation.fno import FNO2d, SpectralConv2d


def textbook_spectral(layer: SpectralConv2d, x: Tensor) -> Tensor:
    """`layer`'s output the textbook way: a full rfft2 of x (B, W, X, Y), the lowest modes of
    both signs along x times the complex weights, an irfft2 of the zero-padded spectrum (also
    the reference the tests hold SpectralConv2d to)."""
    m = layer.modes
    spec = torch.fft.rfft2(x)
    wgt = torch.view_as_complex(layer.weight)
    out = torch.zeros_like(spec)
    out[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", spec[:, :, :m, :m], wgt[0])
    out[:, :, -m:, :m] = torch.einsum("bixy,ioxy->boxy", spec[:, :, -m:, :m], wgt[1])
    return torch.fft.irfft2(out, s=x.shape[-2:])


class TextbookFNO(nn.Module):
    """FNO2d's network computed the textbook way, reading FNO2d's weights."""

    def __init__(self, net: FNO2d) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        net = self.net
        b, _, nx, ny = x.shape
        gx = torch.linspace(0, 1, nx).view(1, 1, nx, 1).expand(b, 1, nx, ny)
        gy = torch.linspace(0, 1, ny).view(1, 1, 1, ny).expand(b, 1, nx, ny)
        h = net.lift(torch.cat([x, gx, gy], dim=1))
        for i, (spec, point) in enumerate(zip(net.spectral, net.pointwise)):
            h = textbook_spectral(spec, h) + point(h)
            if i < len(net.spectral) - 1:
                h = nn.functional.gelu(h)
        return net.project(h)


def best_ms(fn: Callable[[], object], repeats: int = 5, calls: int = 3) -> float:
    """Best mean milliseconds per call over `repeats` runs of `calls` calls."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls * 1e3)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--grid", type=int, default=64)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 2, 8, 16, 32, 64])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(machine())
    print(f"FNO width 24, 12 x 12 modes, 4 layers, {a.grid} x {a.grid}, 4 frames in")
    torch.manual_seed(0)
    net = FNO2d(4, 1, 24, 12, 4)
    for layer in net.spectral:  # weights of a trained size, so outputs are comparable
        layer.weight.data.normal_(0.0, 1.0 / 24)
    ref = TextbookFNO(net)
    print("| rows | textbook ms/frame | sciformer ms/frame | speed-up | max abs diff |")
    print("|---:|---:|---:|---:|---:|")
    with torch.no_grad():
        for rows in a.rows:
            x = torch.randn(rows, 4, a.grid, a.grid)
            diff = float((net(x) - ref(x)).abs().max())
            t_ref, t_new = float("inf"), float("inf")
            for _ in range(3):  # interleaved
                t_ref = min(t_ref, best_ms(lambda: ref(x), repeats=2))
                t_new = min(t_new, best_ms(lambda: net(x), repeats=2))
            print(f"| {rows} | {t_ref / rows:.2f} | {t_new / rows:.2f} | "
                  f"{t_ref / t_new:.2f}x | {diff:.1e} |")
    x = torch.randn(16, 4, a.grid, a.grid)
    steps = {}
    for name, model in (("textbook", ref), ("sciformer", net)):
        steps[name] = best_ms(lambda m=model: m(x).square().mean().backward(), repeats=3)
    print(f"training step (forward + backward, 16 rows): textbook {steps['textbook']:.0f} ms, "
          f"sciformer {steps['sciformer']:.0f} ms, "
          f"{steps['textbook'] / steps['sciformer']:.2f}x")


if __name__ == "__main__":
    main()

"""Numeric precision of a forward pass: fp32, or bf16 autocast where the hardware has it.

One place answers "does this device multiply bf16 natively?" for training
(`train.precision`) and inference (`--precision`, `sciformer.load(..., precision=)`):

- CUDA: `torch.cuda.is_bf16_supported()` (Ampere and later);
- CPU: the `avx512_bf16` or `amx_bf16` flag in /proc/cpuinfo (Linux); where that file cannot
  be read, oneDNN's own answer. A CPU without them (AVX2 only, or AVX-512 without BF16)
  emulates bf16 matrix products many times slower than fp32.

``auto`` resolves to bf16 only where that answer is yes. bf16 runs under `torch.autocast`:
matrix products in bf16, LayerNorm and softmax in fp32; outputs are returned in fp32.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch

from sciformer.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "auto")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """The CPU feature flags of /proc/cpuinfo, or None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX-512-BF16 or AMX)."""
    flags = cpu_flags()
    if flags is not None:
        return any(f in flags for f in CPU_BF16_FLAGS)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 natively (CUDA with bf16 support, or a CPU with
    AVX-512-BF16 / AMX)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return native_cpu_bf16()
    return False


def resolve_precision(precision: str, device: torch.device, what: str = "--precision") -> str:
    """'fp32' or 'bf16' for `precision` on `device`: ``auto`` is bf16 only where the device
    has native bf16; an explicit bf16 without it works but warns once that it will be slow."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{what} '{precision}': must be one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and not native_bf16(device):
        warnings.warn(f"{what}=bf16: this {device.type.upper()} has no native bf16 "
                      "(AVX-512-BF16 / AMX), so bf16 is emulated and slower than fp32",
                      UserWarning, stacklevel=3)
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when `precision` is bf16, else a no-op."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()

"""What a device can do at best, measured: dense matmul FLOP/s, copy bandwidth, and the
roofline ceiling they set on the MFU (for ``rdbench bench train``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from rdbench.device import synchronize

if TYPE_CHECKING:
    import torch


def matmul_peak(device: torch.device, n: int | None = None, repeats: int = 5) -> float:
    """Measured dense fp32 matmul FLOP/s (2 n³ per product; TF32 on CUDA as in training)."""
    import torch

    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    return 2 * n**3 / best_seconds(lambda: a @ b, device, repeats)


def copy_bandwidth(device: torch.device, n_bytes: int | None = None, repeats: int = 5) -> float:
    """Measured bytes/s of a device-to-device copy (bytes read + bytes written)."""
    import torch

    n_bytes = n_bytes or (2 << 30 if device.type == "cuda" else 256 << 20)
    src = torch.empty(n_bytes // 4, device=device).uniform_()
    dst = torch.empty_like(src)
    return 2 * n_bytes / best_seconds(lambda: dst.copy_(src), device, repeats)


def best_seconds(work: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``work`` (after one warm-up), synced."""
    work()
    synchronize(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        work()
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return best


def mfu_ceiling(flops: float, n_bytes: float, peak: float, bandwidth: float) -> float:
    """Roofline bound on the MFU of work of ``flops`` that must move ``n_bytes``."""
    return flops / max(flops / peak, n_bytes / bandwidth) / peak

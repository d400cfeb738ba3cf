"""Device names from the command line → ``torch.device``, validated before any work starts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rdbench.io import InputError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:N`` as given.

    A malformed name, a CUDA device on a machine without CUDA, or a CUDA index beyond the
    devices present is an :class:`InputError`.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"invalid device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device {name} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"device {name} does not exist "
                             f"({torch.cuda.device_count()} CUDA device(s))")
    return device


def device_name(device: torch.device) -> str:
    """GPU name, or the CPU model from /proc/cpuinfo with the thread count (for benches)."""
    import platform
    from pathlib import Path

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine() or "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU): for timings."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)

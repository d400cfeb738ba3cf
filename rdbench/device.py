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

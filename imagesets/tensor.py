"""The one conversion from stored pixels to what a model sees (SPEC §2: v = uint8 / 255).

Datasets store uint8 (N, H, W, C); models take float32 (N, C, H, W) in [0, 1]. Training
keeps the uint8 layout-converted set on its device and converts each minibatch there;
evaluation, the report and the kp analyses convert chunks of the memory-mapped set. All of
them call these two functions. torch is imported on use, so ``import imagesets`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


def channels_first(images: np.ndarray, device: Any = "cpu") -> torch.Tensor:
    """uint8 (..., H, W, C) (a numpy array or memmap slice) -> contiguous uint8 tensor
    (..., C, H, W) on ``device``."""
    import torch

    array = np.ascontiguousarray(images)
    if not array.flags.writeable:  # a read-only memmap slice: torch wants its own memory
        array = array.copy()
    if array.dtype != np.uint8 or array.ndim < 3:
        raise ValueError(f"expected uint8 images (..., H, W, C), got {array.dtype} {array.shape}")
    return torch.from_numpy(array).to(device).movedim(-1, -3).contiguous()


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 values in [0, 1] (v = u / 255), any shape, same device."""
    return pixels.float().div_(255.0)


def model_input(images: np.ndarray, device: Any = "cpu") -> torch.Tensor:
    """uint8 (..., H, W, C) -> float32 (..., C, H, W) in [0, 1] on ``device``."""
    return to_float(channels_first(images, device))


def as_image(values: Any) -> np.ndarray:
    """A model-side image (C, H, W) in [0, 1] (tensor or array) -> (H, W, C) float for display."""
    array = values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)
    return np.clip(np.moveaxis(array, -3, -1), 0.0, 1.0)

"""Which torch device to run on: `auto` (CUDA when present), `cpu` or `cuda`, with one clear error.

Kept apart from the model code so a command can name a device (and fail on a bad one) without importing the
model stack first; torch itself is imported only when a device is picked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(RuntimeError):
    """The device asked for is not available here; the message says what to use instead."""


def pick_device(device: str) -> torch.device:
    """The torch device for `device` (one of DEVICES)."""
    import torch

    if device not in DEVICES:
        raise DeviceError(f"--device must be auto, cpu or cuda, not {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda but no CUDA device is available (use --device cpu or auto)")
    return torch.device(device)

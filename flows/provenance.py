"""Provenance of a run: which code and which machine made it (stored with every catalog run)."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

from cloud_core.provenance import code_version

__all__ = ["code_version", "machine"]


def machine(device: str = "auto") -> dict[str, Any]:
    """Host name, platform, cores and the compute device a run used."""
    info: dict[str, Any] = {
        "host": f"{socket.gethostname()} ({platform.system()} {platform.machine()}, {os.cpu_count()} cores)",
        "python": platform.python_version(),
    }
    try:
        import torch

        use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
        info["device"] = f"cuda: {torch.cuda.get_device_name(0)}" if use_cuda else "cpu"
        info["torch"] = torch.__version__
    except ImportError:
        info["device"] = "cpu"
    return info

"""Provenance of a run: which code and which machine made it (stored with every catalog run)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any


@cache
def code_version() -> str:
    """The package version, plus the git commit (and `-dirty`) when running from a checkout."""
    try:
        version = metadata.version("cloud-screen")
    except metadata.PackageNotFoundError:
        version = "unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if commit.returncode == 0 and commit.stdout.strip():
            return f"{version}+{commit.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return version


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

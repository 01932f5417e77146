"""Which code made a result: the package version and, in a checkout, the git commit (cards, catalog runs)."""

from __future__ import annotations

import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path


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

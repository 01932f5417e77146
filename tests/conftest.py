"""Shared test fixtures: small structures made here, and the shared datasets when they are present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
REFERENCE = SHARED_DATA / "cloud_reference"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package, driven by Playwright (no `playwright install`)
# This network refuses Chromium's own background connections; these flags stop it from trying.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# What `cloud-screen screen` quiets in its own process environment when run in-process by a CliRunner test.
CLI_QUIETED_ENVIRONMENT = ("PREFECT_LOGGING_LEVEL", "PREFECT_SERVER_ANALYTICS_ENABLED", "DASK_LOGGING__DISTRIBUTED")


@pytest.fixture(autouse=True)
def _cli_environment_stays_in_its_test():
    """Restore what an in-process CLI run set in os.environ, so that it cannot change later tests' subprocesses."""
    saved = {name: os.environ.get(name) for name in CLI_QUIETED_ENVIRONMENT}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def sync_playwright_or_skip():
    """The sync Playwright entry point, or skip when Playwright or Debian's chromium is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright not installed (pip install playwright; the system chromium is used)")
    return sync_playwright


def process_running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie (a killed orphan stays one until init reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test when the datasets are not beside the checkout."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present (shared datasets are optional)")
    return path


@pytest.fixture(scope="session")
def rocksalt():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="session")
def corundum():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup(
        "R-3c", Lattice.hexagonal(4.76, 12.99), ["Al", "O"], [[0, 0, 0.35216], [0.30624, 0, 0.25]]
    )


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect test server for the whole session, with its home (SQLite, results) in a temporary folder."""
    import os

    home = tmp_path_factory.mktemp("prefect-home")
    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):  # the first start migrates a SQLite database
        yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

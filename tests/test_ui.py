"""End to end through the Prefect UI: a local server, `cloud-screen serve`, and headless Chromium.

A `prefect server start` on a free port of 127.0.0.1 (a temporary PREFECT_HOME), the deployments of
prefect.yaml served from a temporary folder, then the `screen-on-demand` deployment is run from its
"Custom run" form with a smaller demo source and a catalog in tmp. The flow run must complete and its
predictions must be in the catalog; the nightly cron schedule must have produced scheduled runs.
Screenshots go to $CLOUD_SCREEN_ARTIFACTS (or the test's tmp folder).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import CHROMIUM, CHROMIUM_ARGS, ROOT, sync_playwright_or_skip

COUNT = 150  # demo candidates of the UI-triggered run
BATCH_SIZE = 64  # several batches, so the run exercises the encode/infer overlap
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 1.0) -> T:
    """Call `check` until it returns something other than None (or False); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value is not None and value is not False:
                return value
        except Exception as exc:  # connection refused, lock held, ... until the deadline
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error!r})")


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} missing)"


def _start(command: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """A subprocess in its own process group (so teardown ends it and its children), output to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    """End a process group started by `_start`: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A `prefect server start` bound to 127.0.0.1 on a free port, with a fresh PREFECT_HOME."""
    sync_playwright_or_skip()
    import httpx

    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": api,  # otherwise the UI talks to :4200
        "PREFECT_SERVER_UI_V2_ENABLED": "true",  # the UI new users see (the test drives its forms)
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    env.pop("PREFECT_API_URL", None)
    log = home / "server.log"
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    process = _start(command, env, home, log)
    try:
        _wait_for(
            lambda: process.poll() is None and httpx.get(f"{api}/health", timeout=5).status_code == 200,
            120,
            f"the Prefect server at {api} (log: {_tail(log, 1500)})",
        )
        yield {"api": api, "ui": f"http://127.0.0.1:{port}", "home": home, "log": log}
    finally:
        _stop(process)


@pytest.fixture(scope="module")
def served(server: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`cloud-screen serve` with PREFECT_API_URL at the test server, run from a temporary folder."""
    import httpx

    cwd = tmp_path_factory.mktemp("serve-cwd")
    env = {
        **os.environ,
        "PREFECT_HOME": str(server["home"]),
        "PREFECT_API_URL": server["api"],
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    log = cwd / "serve.log"
    process = _start([sys.executable, "-m", "flows.cli", "serve"], env, cwd, log)
    try:

        def deployments_ready() -> bool:
            assert process.poll() is None, f"cloud-screen serve exited: {_tail(log)}"
            names = ("screen/screen-nightly", "screen/screen-on-demand", "train/train", "evaluate/evaluate")
            return all(httpx.get(f"{server['api']}/deployments/name/{n}", timeout=5).status_code == 200 for n in names)

        _wait_for(deployments_ready, 90, "the served deployments")
        yield {**server, "cwd": cwd, "serve_log": log, "process": process}
    finally:
        _stop(process)


def _deployment_id(api: str, name: str) -> str:
    import httpx

    response = httpx.get(f"{api}/deployments/name/{name}", timeout=10)
    response.raise_for_status()
    return response.json()["id"]


def _flow_runs(api: str, deployment_id: str, state_type: str | None = None) -> list[dict[str, Any]]:
    """The flow runs of a deployment, in one state type (SCHEDULED, COMPLETED, ...) or all."""
    import httpx

    body: dict[str, Any] = {"deployments": {"id": {"any_": [deployment_id]}}}
    if state_type:
        body["flow_runs"] = {"state": {"type": {"any_": [state_type]}}}
    response = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def _field(page, label: str):
    """The form control labelled `label` ("count" matches "Count (Optional)"), from the UI's label elements."""
    return page.get_by_label(re.compile(rf"^\s*{re.escape(label)}(\s*\(Optional\))?\s*$", re.I), exact=True)


def _screenshot(page, path: Path) -> None:
    """The whole page: the UI scrolls inside a container, so grow the viewport to the content first."""
    size = page.viewport_size
    height = page.evaluate("() => Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))")
    page.set_viewport_size({"width": size["width"], "height": min(max(height, size["height"]), 12_000)})
    page.wait_for_timeout(300)
    page.screenshot(path=str(path))
    page.set_viewport_size(size)


def _catalog_counts(catalog: Path, run_id: str) -> dict[str, Any]:
    """Rows of a run in the catalog, read-only (the writer's short transactions may hold the lock: retry)."""
    import duckdb

    def read() -> dict[str, Any]:
        with duckdb.connect(str(catalog), read_only=True) as con:
            runs = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchall()
            predictions = con.execute("SELECT count(*) FROM predictions WHERE run_id = ?", [run_id]).fetchone()[0]
            failures = con.execute("SELECT count(*) FROM failures WHERE run_id = ?", [run_id]).fetchone()[0]
            return {"runs": [r[0] for r in runs], "predictions": predictions, "failures": failures}

    return _wait_for(read, 60, f"a read-only connection to {catalog}", interval=0.5)


def test_serve_reads_the_deployments_of_prefect_yaml() -> None:
    """`cloud-screen serve` serves what prefect.yaml declares: same names, schedules and default parameters."""
    from flows.deployments import project_root, read_deployments, runner_deployment

    specs = {spec["name"]: spec for spec in read_deployments(project_root() / "prefect.yaml")}
    assert set(specs) == {"screen-nightly", "screen-on-demand", "train", "evaluate"}
    served = {spec["name"]: runner_deployment(spec) for spec in specs.values()}
    for name, deployment in served.items():
        assert deployment.parameters == specs[name]["parameters"], name
        assert deployment.entrypoint.startswith("flows."), deployment.entrypoint  # importable from any folder
    nightly = served["screen-nightly"].schedules
    assert [(s.schedule.cron, s.schedule.timezone) for s in nightly] == [("0 2 * * *", "UTC")]
    assert not served["screen-on-demand"].schedules
    assert specs["screen-nightly"]["work_pool"]["name"] == "cloud-screen-process"


@pytest.mark.ui
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_nightly_schedule_creates_scheduled_runs(served: dict[str, Any]) -> None:
    deployment_id = _deployment_id(served["api"], "screen/screen-nightly")
    scheduled = _wait_for(
        lambda: _flow_runs(served["api"], deployment_id, "SCHEDULED") or None, 90, "scheduled runs of screen-nightly"
    )
    assert all("T02:00:00" in run["expected_start_time"] for run in scheduled), scheduled  # "0 2 * * *", UTC
    assert scheduled[0]["parameters"]["catalog"] == "screen-nightly.duckdb"


@pytest.mark.ui
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_custom_run_from_the_ui_fills_the_catalog(served: dict[str, Any], tmp_path: Path) -> None:
    import httpx

    sync_playwright = sync_playwright_or_skip()
    artifacts = Path(os.environ.get("CLOUD_SCREEN_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    catalog = tmp_path / "ui-catalog.duckdb"
    api, ui = served["api"], served["ui"]
    deployment_id = _deployment_id(api, "screen/screen-on-demand")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(ui)  # the default UI (V2)
            page.get_by_role("link", name="Deployments", exact=True).click()
            page.get_by_role("link", name="screen-on-demand", exact=True).click()
            page.get_by_role("button", name="Run", exact=True).click()
            page.get_by_role("menuitem", name="Custom run").click()
            page.get_by_role("heading", name="Parameters").wait_for()

            _field(page, "catalog").fill(str(catalog))
            _field(page, "count").fill(str(COUNT))
            _field(page, "batch_size").fill(str(BATCH_SIZE))
            _screenshot(page, artifacts / "ui-custom-run-form.png")

            page.get_by_role("button", name="Submit", exact=True).click()
            page.get_by_text("View run", exact=True).click()  # the toast that confirms the new run
            page.wait_for_url(re.compile(r"/runs/flow-run/[0-9a-f-]{36}"))
            run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", page.url).group(1)
            run_page = page.url

            run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
            assert run["deployment_id"] == deployment_id, run
            assert run["parameters"]["catalog"] == str(catalog), run["parameters"]
            assert run["parameters"]["source"]["count"] == COUNT, run["parameters"]
            assert run["parameters"]["batch_size"] == BATCH_SIZE, run["parameters"]

            def finished() -> dict[str, Any] | None:
                state = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"]
                return state if state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

            state = _wait_for(finished, 240, f"flow run {run_id} to finish (serve log: {served['serve_log']})", 2)
            page.goto(run_page)
            page.get_by_text(state["name"]).first.wait_for(timeout=15_000)
            _screenshot(page, artifacts / "ui-flow-run-finished.png")
        except Exception:
            if "page" in locals():
                page.screenshot(path=str(artifacts / "ui-failure.png"))
                print(f"page {page.url} at the failure:\n{page.inner_text('body')[:5000]}")
            raise
        finally:
            browser.close()

    assert state["type"] == "COMPLETED", f"{state}\n{_tail(served['serve_log'])}"
    counts = _catalog_counts(catalog, run_id)
    assert counts["runs"] == ["completed"], counts
    assert counts["predictions"] >= 1, counts
    assert counts["predictions"] + counts["failures"] == COUNT, counts  # every candidate predicted or a failure

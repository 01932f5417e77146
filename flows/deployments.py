"""Deployments: `cloud-screen serve` serves the deployments of `prefect.yaml`, and the pull step they share.

`prefect.yaml` at the project root is the one source of truth for deployment names, schedules and default
parameters. `prefect deploy --all` registers them for a `process` work pool (run by `prefect worker start`);
`cloud-screen serve` reads the same file and serves them from one process without a work pool or worker.
Relative paths in parameters (catalogs, bundles) resolve against $CLOUD_SCREEN_HOME when it is set; otherwise
against the project checkout for work-pool runs and the current folder for served runs.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Annotated, Any

import typer

HOME_ENV = "CLOUD_SCREEN_HOME"
START_SERVER_HINT = (
    "start one with `prefect server start --host 127.0.0.1` and point at it with "
    "`prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api`"
)


def project_root() -> Path:
    """The folder holding `prefect.yaml` and the `flows` package (the checkout, for an editable install)."""
    return Path(__file__).resolve().parents[1]


def project_directory(directory: str = "") -> dict[str, str]:
    """Pull step of `prefect.yaml`: move the flow run to `directory`, else $CLOUD_SCREEN_HOME, else the project.

    Works from any checkout: the project is found from the installed `flows` package, not from a path written
    into the deployment.
    """
    target = Path(directory or os.environ.get(HOME_ENV) or project_root()).expanduser().resolve()
    os.chdir(target)
    return {"directory": str(target)}


def read_deployments(config: Path) -> list[dict[str, Any]]:
    """The `deployments` of a prefect.yaml (YAML anchors resolved), each with name, entrypoint and parameters."""
    import yaml

    document = yaml.safe_load(config.read_text()) or {}
    deployments = document.get("deployments") or []
    for spec in deployments:
        if not spec.get("name") or not spec.get("entrypoint"):
            raise ValueError(f"{config}: every deployment needs a name and an entrypoint ({spec!r})")
    return deployments


def load_flow(entrypoint: str):
    """The flow of an entrypoint, `flows/screen.py:screen` or `flows.screen.screen`, imported as a module."""
    if ":" in entrypoint:
        path, name = entrypoint.rsplit(":", 1)
        module = path.removesuffix(".py").replace("/", ".").replace("\\", ".")
    else:
        module, name = entrypoint.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def schedules_of(spec: dict[str, Any]) -> list[Any] | None:
    """The `schedules` of a prefect.yaml deployment as Prefect schedule objects (cron, interval or rrule).

    None when the deployment names no `schedules` (as with `prefect deploy`: the server keeps what it has).
    """
    from datetime import timedelta

    from prefect.schedules import Cron, Interval, RRule

    if spec.get("schedules") is None:
        return None
    result = []
    for entry in spec["schedules"]:
        options = {
            "timezone": entry.get("timezone"),
            "active": entry.get("active", True),
            "parameters": entry.get("parameters"),
            "slug": entry.get("slug"),
        }
        if "cron" in entry:
            result.append(Cron(entry["cron"], day_or=entry.get("day_or", True), **options))
        elif "interval" in entry:
            result.append(Interval(timedelta(seconds=float(entry["interval"])), **options))
        elif "rrule" in entry:
            result.append(RRule(entry["rrule"], **options))
        else:
            raise ValueError(f"deployment {spec['name']!r}: unsupported schedule {entry!r}")
    return result


def runner_deployment(spec: dict[str, Any]):
    """One prefect.yaml deployment as a RunnerDeployment for `prefect.serve` (same name, schedule, defaults)."""
    from prefect.deployments.runner import EntrypointType

    return load_flow(spec["entrypoint"]).to_deployment(
        name=spec["name"],
        description=spec.get("description"),
        tags=spec.get("tags"),
        parameters=spec.get("parameters") or {},
        schedules=schedules_of(spec),
        concurrency_limit=spec.get("concurrency_limit"),
        paused=spec.get("paused"),
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def server_problem(url: str, timeout: float = 5.0) -> str | None:
    """Why no Prefect API answers at `url` (the exception's name), or None when its health check passes."""
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=timeout).raise_for_status()
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return None


def api_problem() -> str | None:
    """Why the configured Prefect API cannot be used, or None when a server answers."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return f"PREFECT_API_URL is not set, so there is no Prefect server to serve to: {START_SERVER_HINT}"
    if problem := server_problem(url):
        return f"no Prefect server answers at {url} ({problem}): {START_SERVER_HINT}"
    return None


def serve(
    config: Annotated[
        Path | None, typer.Option(help="prefect.yaml to serve (default: the project's).", show_default=False)
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Most flow runs at once (default: no limit).")] = None,
) -> None:
    """Serve the deployments of prefect.yaml (schedules included) to the Prefect server at PREFECT_API_URL.

    Flow runs execute in $CLOUD_SCREEN_HOME when set, else in the current folder: relative paths in parameters
    (catalogs, bundles) are relative to it.
    """
    from prefect import serve as prefect_serve

    from flows.cli import fail

    config = config or project_root() / "prefect.yaml"
    if not config.is_file():
        fail(f"no deployment file at {config} (pass --config path/to/prefect.yaml)")
    problem = api_problem()
    if problem:
        fail(problem)
    try:
        deployments = [runner_deployment(spec) for spec in read_deployments(config)]
    except (ValueError, ImportError, AttributeError) as exc:
        fail(f"cannot read the deployments of {config}: {exc}")
    if os.environ.get(HOME_ENV):
        project_directory()
    typer.echo(f"serving {', '.join(d.name for d in deployments)} from {config} in {Path.cwd()}", err=True)
    prefect_serve(*deployments, limit=limit)

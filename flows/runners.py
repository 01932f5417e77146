"""Where the screen flow's batches run: threads of the flow's own process, or a Dask cluster (prefect-dask).

Prefect fixes a flow's task runner when the flow is decorated, but which machines score the batches is a
choice per run (a form field in the UI, `--runner` on the command line). So the flow opens the runner its
`runner` parameter names and submits its batches to it (`TaskRunner.submit`, what `task.submit` does with the
flow's own runner); each batch is still a Prefect task run with its state, logs and retries.

A Dask cluster is a `LocalCluster` of worker processes on this machine (they share its GPU) or any running
scheduler: `dask scheduler` + one `dask worker` per GPU by hand, or a dask-jobqueue cluster (Slurm, PBS, ...)
that provides one (docs/cluster.md). Workers only score batches and write Parquet shards beside the catalog; the
flow's process stays the catalog's one writer, so the catalog folder must be on a file system every worker
reaches under the same path.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal
from urllib.parse import urlsplit

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LOCAL_IN_FLIGHT = 2  # local: the next batch encodes (CPU) while this one is predicted (GPU or CPU)
IN_FLIGHT_PER_THREAD = 2  # dask: each worker thread has its next batch waiting, so no worker idles between two
CONNECT_TIMEOUT_S = 10.0


class RunnerError(RuntimeError):
    """A runner that cannot be used as asked; the message is one line that says what to do."""


class RunnerSpec(BaseModel):
    """Where the batches are scored (a form in the Prefect UI; `--runner` and `--dask-*` on the command line)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "dask"] = Field(
        "local",
        description="local: threads of the flow's process; dask: a Dask cluster (a scheduler at `address`, "
        "else a LocalCluster on this machine).",
    )
    address: str | None = Field(
        None, description="dask: address of a running scheduler, e.g. tcp://10.0.0.5:8786 (empty: a LocalCluster)."
    )
    n_workers: int = Field(2, ge=1, le=512, description="dask LocalCluster: worker processes on this machine.")
    threads_per_worker: int = Field(1, ge=1, le=64, description="dask LocalCluster: batches per worker at once.")

    @field_validator("address")
    @classmethod
    def _full_address(cls, address: str | None) -> str | None:
        return scheduler_address(address) if address and address.strip() else None

    @model_validator(mode="after")
    def _consistent(self) -> RunnerSpec:
        if self.address and self.kind != "dask":
            raise ValueError("an address needs kind 'dask'")
        return self

    def label(self) -> str:
        if self.kind == "local":
            return "local"
        if self.address:
            return f"dask:{self.address}"
        return f"dask:LocalCluster({self.n_workers} workers x {self.threads_per_worker} threads)"


def scheduler_address(address: str) -> str:
    """`host:port` or `tcp://host:port` (also tls://) as Dask's full address; ValueError when it is neither."""
    full = address.strip() if "://" in address else f"tcp://{address.strip()}"
    parts = urlsplit(full)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("tcp", "tls") or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ValueError(f"Dask scheduler address {address!r} is not tcp://HOST:PORT (or tls://HOST:PORT)")
    return full.rstrip("/")


def check_scheduler(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in one line, at once, when nothing listens at a Dask scheduler address (not after Dask's retries)."""
    parts = urlsplit(scheduler_address(address))
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RunnerError(
            f"no Dask scheduler answers at {address} ({reason}): start one there (`dask scheduler`, or a "
            "dask-jobqueue cluster), or leave the address out to run a LocalCluster on this machine"
        ) from None


@contextmanager
def open_runner(spec: RunnerSpec) -> Iterator[tuple[TaskRunner, int]]:
    """The started task runner to submit batches to, and how many batches may be in flight at once.

    In flight is what bounds memory: the flow waits for its oldest batch before it submits more.
    """
    if spec.kind == "local":
        with ThreadPoolTaskRunner(max_workers=LOCAL_IN_FLIGHT) as runner:
            yield runner, LOCAL_IN_FLIGHT
        return

    import dask
    from prefect_dask import DaskTaskRunner

    if spec.address:
        check_scheduler(spec.address)
        runner = DaskTaskRunner(address=spec.address, client_kwargs={"timeout": f"{CONNECT_TIMEOUT_S}s"})
    else:
        runner = DaskTaskRunner(
            cluster_kwargs={
                "n_workers": spec.n_workers,
                "threads_per_worker": spec.threads_per_worker,
                "processes": True,  # one model and one GIL per worker; a killed worker costs its batch only
            }
        )
    # Non-daemon workers: each batch encodes in a pool of processes, which a daemon process may not start.
    # Read by the nanny whenever it (re)starts a worker process, so it stays set while the cluster lives.
    with _workers_use_this_api(), dask.config.set({"distributed.worker.daemon": False}), runner:
        try:  # a cluster still starting (dask-jobqueue jobs in the queue) counts the workers that joined so far
            threads = sum(runner.client.nthreads().values())
        except (OSError, TimeoutError) as exc:
            raise RunnerError(f"cannot connect to the Dask cluster ({spec.label()}): {exc}") from None
        yield runner, max(LOCAL_IN_FLIGHT, IN_FLIGHT_PER_THREAD * threads)


@contextmanager
def _workers_use_this_api() -> Iterator[None]:
    """Have Dask workers report to the Prefect API this flow run uses.

    prefect-dask sends each task the flow's settings (PREFECT_API_URL among them). A run without a server
    (`cloud-screen screen`) has no PREFECT_API_URL: Prefect started a temporary server for this process. A worker
    would then start a temporary server of its own (~10 s, and its task runs recorded there), so it is given
    this one's address instead. (Workers on other machines need a server they can reach: docs/cluster.md.)
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    from prefect.client.orchestration import get_client

    url = str(get_client(sync_client=True).api_url).rstrip("/")
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield

"""Many machines: the screen flow's batches on a Dask cluster, shards beside the catalog, one catalog writer.

Real parts throughout: Dask LocalClusters of worker processes, the session's Prefect test server, real DuckDB
files. A Dask run stores what a local run stores (same candidates once each, same predictions, same ranking),
also when a worker process is killed with SIGKILL in the middle of a batch (docs/cluster.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from catalogs.catalog import Catalog, CatalogError
from catalogs.shards import ShardStore, read_info, read_shards
from flows.runners import RunnerSpec
from flows.sources import SourceSpec
from tests.test_faults import PREDICTED, ROOT, synthetic_rows

COUNT, BATCH = 640, 64  # 10 batches: enough for a worker to be killed in the middle of the run


def screen_into(catalog: Path, **options):
    """The test screen: demo candidates, one encoder process per batch (two cores run two workers)."""
    from flows.screen import screen

    source = SourceSpec(count=COUNT)
    return screen(catalog=str(catalog), source=source, batch_size=BATCH, report=False, encode_workers=1, **options)


def stored(catalog: Path, run_id: str) -> dict[str, pl.DataFrame]:
    """A run's predictions, failures and ranking as stored, in a fixed order."""
    store = Catalog(catalog)
    columns = ", ".join(PREDICTED)
    return {
        "predictions": store.query(
            f"SELECT candidate_id, {columns} FROM predictions WHERE run_id = ? ORDER BY candidate_id", [run_id]
        ),
        "failures": store.query("SELECT source_id, error FROM failures WHERE run_id = ? ORDER BY source_id", [run_id]),
        "ranking": store.query(
            "SELECT candidate_id, rank, score, pareto FROM rankings WHERE run_id = ? ORDER BY rank, candidate_id",
            [run_id],
        ),
    }


def assert_same_screen(mine: dict[str, pl.DataFrame], reference: dict[str, pl.DataFrame]) -> None:
    """Every candidate once, the same ones, the same predictions (to float32 rounding) and the same ranking."""
    ids = mine["predictions"]["candidate_id"]
    assert ids.n_unique() == ids.len() == reference["predictions"].height > 0
    assert ids.to_list() == reference["predictions"]["candidate_id"].to_list()
    for column in PREDICTED:
        np.testing.assert_allclose(
            mine["predictions"][column].to_numpy(), reference["predictions"][column].to_numpy(), rtol=1e-5, atol=1e-5
        )
    assert mine["failures"].equals(reference["failures"])
    assert (
        mine["ranking"]
        .select("candidate_id", "rank", "pareto")
        .equals(reference["ranking"].select("candidate_id", "rank", "pareto"))
    )
    np.testing.assert_allclose(mine["ranking"]["score"].to_numpy(), reference["ranking"]["score"].to_numpy(), 1e-5)


@pytest.fixture(scope="module")
def local_screen(tmp_path_factory, prefect_harness) -> dict[str, pl.DataFrame]:
    """The reference: the same screen with the default runner (threads of the test process)."""
    catalog = tmp_path_factory.mktemp("local") / "local.duckdb"
    result = screen_into(catalog)
    assert result.counts["appends"] == 1  # 640 rows: one append at the end of the run
    return stored(catalog, result.run_id)


# ------------------------------------------------------------------------------------------------ shards


def test_a_shard_written_twice_and_ingested_twice_stores_its_rows_once(tmp_path):
    """What a rescheduled task or a resumed run does to a shard: the same name gets the same rows again (an atomic
    replace), and an append of shards already stored adds nothing."""
    store = ShardStore(tmp_path / "c.duckdb.shards")
    rows = synthetic_rows(300)
    first = store.publish(rows.slice(0, 200), store.shard_path("r", 0, "k0"), "k0", {"failed": 0.0}, cache=True)
    again = store.publish(rows.slice(0, 200), store.shard_path("r", 0, "k0"), "k0", {"failed": 0.0}, cache=True)
    second = store.publish(rows.slice(200, 100), store.shard_path("r", 1, "k1"), "k1", {"failed": 0.0}, cache=True)
    assert first == again and read_info(first.path) == first and second.rows == 100
    assert not list(store.run_folder("r").glob(".*"))  # no temporary file left behind
    catalog = Catalog(tmp_path / "c.duckdb")
    run = catalog.start_run(flow="screen", run_id="r")
    assert catalog.append(run, read_shards([first.path, first.path])).predictions_new == 200  # listed twice
    assert catalog.append(run, read_shards([first.path, second.path])).predictions_new == 100
    assert catalog.append(run, read_shards([second.path, first.path])).predictions_new == 0
    assert catalog.query("SELECT count(*), count(DISTINCT candidate_id) FROM predictions").row(0) == (300, 300)

    # another run finds the batch in the cache; removing the first run's shards leaves the cache whole
    store.remove_run("r")
    found = store.reuse(store.shard_path("r2", 0, "k0"), "k0", cache=True)
    assert found is not None and found.reused and found.rows == 200
    assert store.reuse(store.shard_path("r3", 0, "k0"), "k0", cache=False) is None  # cache off: score it
    # a sweep removes cache entries unused for longer than asked, never a run's own shard
    assert store.sweep(cache_days=1, now=time.time() + 2 * 86400) == 2
    assert read_info(found.path) == found.__class__(found.path, 200, {"failed": 0.0})
    assert store.reuse(store.shard_path("r4", 0, "k0"), "k0", cache=True) is None
    # an unreadable shard (a power cut before its data reached the disk) is scored again, not ingested
    Path(found.path).write_bytes(b"PAR1 cut short")
    assert store.reuse(Path(found.path), "k0", cache=True) is None


def test_an_append_reads_its_shards_in_parts_within_one_transaction(tmp_path):
    """The writer reads an append's shards a few at a time (memory holds one part) into one transaction: a
    candidate in two parts is stored once, and a shard that cannot be read leaves nothing of the append."""
    store = ShardStore(tmp_path / "c.duckdb.shards")
    rows = synthetic_rows(300)
    shards = [
        store.publish(rows.slice(100 * i, 100), store.shard_path("r", i, f"k{i}"), f"k{i}", {}, cache=False).path
        for i in range(3)
    ]
    parts = list(read_shards([*shards, shards[0]], part_rows=150))
    assert [part.height for part in parts] == [200, 200]  # whole shards, at least 150 rows a part
    catalog = Catalog(tmp_path / "c.duckdb")
    run = catalog.start_run(flow="screen", run_id="r")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 cut short")
    with pytest.raises(CatalogError, match=r"cannot read shard .*broken\.parquet.*resume the run"):
        catalog.append(run, read_shards([shards[0], shards[1], broken], part_rows=100))
    assert catalog.query("SELECT count(*) FROM predictions").item() == 0  # the parts before it were rolled back
    counts = catalog.append(run, read_shards([*shards, shards[0]], part_rows=150))
    assert (counts.predictions_new, counts.skipped) == (300, 100)
    assert catalog.query("SELECT count(*), count(DISTINCT candidate_id) FROM candidates").row(0) == (300, 300)


def test_runner_spec_and_a_scheduler_that_does_not_answer():
    from flows.runners import RunnerError, check_scheduler

    assert RunnerSpec(kind="dask", address="10.0.0.5:8786").address == "tcp://10.0.0.5:8786"
    assert RunnerSpec(kind="dask", address="  ").address is None
    with pytest.raises(ValueError, match="an address needs kind 'dask'"):
        RunnerSpec(address="tcp://10.0.0.5:8786")
    with pytest.raises(ValueError, match=r"is not tcp://HOST:PORT"):
        RunnerSpec(kind="dask", address="http://10.0.0.5")
    with pytest.raises(RunnerError, match=r"^no Dask scheduler answers at tcp://127.0.0.1:9 \(Connection refused\)"):
        check_scheduler("tcp://127.0.0.1:9")


# ------------------------------------------------------------------------------------------------ Dask


def test_screen_on_a_two_worker_dask_cluster_equals_the_local_run(tmp_path, local_screen):
    """The runner's own LocalCluster (2 worker processes), appends of 128 rows: the catalog holds what the local
    run's holds, and the run's shards are gone once it completed (the cache keeps its names for them)."""
    catalog = tmp_path / "dask.duckdb"
    result = screen_into(catalog, runner=RunnerSpec(kind="dask", n_workers=2), append_rows=128)
    assert result.counts["candidates"] == COUNT and result.counts["batches"] == 10
    assert result.counts["appends"] == 5 and result.counts["batches_written"] == 10  # 2 shards of 64 per append
    assert_same_screen(stored(catalog, result.run_id), local_screen)
    shards = ShardStore.beside(catalog)
    assert not shards.run_folder(result.run_id).exists() and len(list((shards.folder / "cache").iterdir())) == 10


def _executing(dask_worker) -> list[str]:
    """The keys of the tasks a worker is running now (called in the worker by `Client.run`)."""
    return [task.key for task in dask_worker.state.executing]


def _lost(client, key: str) -> bool:
    """Whether the scheduler took a task back from its dead worker (released after processing) instead of
    having had its result already."""
    story = [event[2] for event in client.story(key) if event[:2] == ("scheduler", key)]
    return "processing" in story and "released" in story[story.index("processing") :]


def test_a_dask_worker_killed_mid_batch_loses_and_duplicates_nothing(tmp_path, local_screen):
    """A cluster started here (2 worker processes), the flow connected to its scheduler by address, appends of
    one batch; once shards are being written, the worker process that has just started a batch is killed with
    SIGKILL. The scheduler runs that batch again on a worker, the run completes, and the catalog equals the
    local run's. (A worker busy in Python answers slowly, so a kill can land after its batch ended: then the
    next new batch's worker is killed, three kills at most.)"""
    import dask
    from distributed import Client, LocalCluster
    from prefect.server.api.server import SubprocessASGIServer

    catalog = tmp_path / "killed.duckdb"
    run_shards = ShardStore.beside(catalog).folder / "runs"
    kills: list[dict] = []
    finished = threading.Event()

    def kill_workers_mid_batch(client: Client) -> None:
        seen: set[str] = set()
        while not finished.is_set() and len(kills) < 3 and not any(kill["lost"] for kill in kills):
            pids = client.run(os.getpid)  # asked beforehand: the kill follows the sight of a new batch at once
            running = client.run(_executing)
            started = {address: keys for address, keys in running.items() if set(keys) - seen}
            seen.update(key for keys in running.values() for key in keys)
            if started and any(run_shards.glob("*/*.parquet")):  # under way: some batches are shards already
                address, (key,) = next(iter(started.items()))  # a batch that started within the last poll
                os.kill(pids[address], signal.SIGKILL)
                deadline = time.monotonic() + 30
                while address in client.scheduler_info()["workers"] and time.monotonic() < deadline:
                    time.sleep(0.05)  # until the scheduler has seen the worker go
                kills.append({"pid": pids[address], "key": key, "lost": _lost(client, key)})
            time.sleep(0.02)

    with (
        dask.config.set({"distributed.worker.daemon": False}),  # workers may start encoder processes
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        killer = threading.Thread(target=kill_workers_mid_batch, args=(client,), daemon=True)
        killer.start()
        runner = RunnerSpec(kind="dask", address=cluster.scheduler_address)
        try:
            result = screen_into(catalog, runner=runner, append_rows=BATCH)
        finally:
            finished.set()
            killer.join(timeout=60)
        lost = [kill for kill in kills if kill["lost"]]
        assert lost, f"no kill landed in the middle of a batch: {kills}"
        story = [event[2] for event in client.story(lost[0]["key"]) if event[:2] == ("scheduler", lost[0]["key"])]
        servers = client.run(lambda: [port for port, s in SubprocessASGIServer._instances.items() if s.running])
    for kill in kills:
        with pytest.raises(ProcessLookupError):
            os.kill(kill["pid"], 0)  # gone
    assert story.count("processing") == 2 and "memory" in story  # run again after its worker was lost
    assert result.counts["candidates"] == COUNT and result.counts["batches"] == 10 and result.counts["appends"] == 10
    assert Catalog(catalog).run(result.run_id)["status"] == "completed"
    assert_same_screen(stored(catalog, result.run_id), local_screen)
    assert servers and not any(servers.values())  # workers used the test server, started none of their own


@pytest.mark.slow
def test_screen_command_on_a_local_dask_cluster_starts_one_prefect_server(tmp_path):
    """`cloud-screen screen --runner dask` without a Prefect server: the workers use the flow's temporary server."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_LOGGING_LEVEL": "INFO", "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "flows.cli", "screen", "--catalog", str(tmp_path / "c.duckdb"), "--count", "96"]
    command += ["--batch-size", "32", "--runner", "dask", "--no-report", "--top", "3", "--verbose"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert log.count("Starting temporary server") == 1, log[-3000:]
    assert "96 candidates: " in done.stderr and "dask:LocalCluster(2 workers x 1 threads)" in log

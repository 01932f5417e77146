"""Faults: a screen run killed with SIGKILL and resumed, a kill inside a catalog transaction, a full disk, an
unreachable Prefect server, the model running out of memory and giving NaN or inf. Each fault leaves a
readable catalog, every candidate exactly once, and a clear one-line message (docs/reliability.md, Faults)."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
import torch

from catalogs.catalog import Catalog, CatalogError

ROOT = Path(__file__).resolve().parents[1]
PREDICTED = ("formation_energy_per_atom", "band_gap", "log10_k_vrh", "debye_temperature", "cv_300K")


def synthetic_rows(n: int, seed: int = 0, prefix: str = "syn") -> pl.DataFrame:
    """Scored rows as the encoder + model give them (distinct candidates; values need not be physical)."""
    rng = np.random.default_rng(seed)
    elements = ["O", "S", "Li", "Na", "Mg", "Ti", "Fe", "Pb"]
    scopes = []
    for _ in range(n):
        chosen = sorted(rng.choice(elements, size=int(rng.integers(1, 4)), replace=False).tolist())
        scopes.append("0 1 a O O O | 1a | " + " ".join(f"{e} {1 / len(chosen):.2f}" for e in chosen))
    ids = [f"{int(x):016x}" for x in rng.integers(0, 2**63 - 1, n, dtype=np.int64)]
    values = {
        "formation_energy_per_atom": rng.normal(-1, 1, n),
        "band_gap": rng.uniform(0, 4, n),
        "log10_k_vrh": rng.uniform(0.5, 2.5, n),
        "log10_g_vrh": rng.uniform(0.3, 2.2, n),
        "debye_temperature": rng.uniform(80, 900, n),
        "cv_300K": rng.uniform(10, 25, n),
    }
    values |= {f"{name}_std": rng.uniform(0.01, 0.2, n) for name in list(values) if name != "debye_temperature"}
    return pl.DataFrame(
        {
            "id": [f"{prefix}-{i}" for i in range(n)],
            "source": ["synthetic"] * n,
            "candidate_id": ids,
            "canonical_scope": scopes,
            "structure_hash": ids,
            "formula": ["X"] * n,
            "spacegroup": rng.integers(1, 231, n).astype(np.int16),
            "nsites": rng.integers(1, 40, n).astype(np.int32),
            "scope": scopes,
            **{name: pl.Series(name, v, dtype=pl.Float32) for name, v in values.items()},
            "error": pl.Series("error", [None] * n, dtype=pl.String),
        }
    )


def table_counts(path: Path) -> dict[str, int]:
    """Rows per table, read-only: reading every row of every table is the check that the file is sound."""
    with duckdb.connect(str(path), read_only=True) as con:
        tables = [t for (t,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        return {t: len(con.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables}


def run_row(path: Path, run_id: str) -> dict:
    with duckdb.connect(str(path), read_only=True) as con:
        cursor = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
        names = [d[0] for d in cursor.description]
        return dict(zip(names, cursor.fetchone(), strict=True))


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


def harness_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a command-line run on the session's Prefect test server (no server start per run)."""
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200", "TMPDIR": str(tmp_path)}


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a process started with start_new_session and everything in its group (encoder workers, ...)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # orphans of the group, until none is left
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        time.sleep(0.05)


# ------------------------------------------------------------------------------------------------ kill -9


def test_screen_killed_with_sigkill_resumes_to_every_candidate_once(tmp_path, prefect_harness):
    """`cloud-screen screen` is killed (SIGKILL, its whole process group) once batches are stored; the run is
    found `interrupted`, `--resume RUN_ID` finishes it, and the catalog then holds what an uninterrupted run of
    the same candidates holds: each candidate once, the same predictions."""
    catalog = tmp_path / "killed.duckdb"
    env = harness_env(tmp_path)
    args = ["screen", "--catalog", str(catalog), "--count", "500", "--batch-size", "50", "--append-rows", "50"]
    args += ["--no-report"]
    args += ["--top", "5", "--no-progress"]
    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args], stdout=log, stderr=log, env=env, cwd=ROOT, start_new_session=True
    )
    stored_at_kill = 0
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if catalog.exists():
                try:
                    stored_at_kill = Catalog(catalog, lock_timeout=5).query("SELECT count(*) FROM predictions").item()
                except CatalogError:  # a schema still being made, or the writer's lock: look again
                    stored_at_kill = 0
                if stored_at_kill > 0:
                    break
            time.sleep(0.1)
    finally:
        kill_group(process)
        log.close()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert 0 < stored_at_kill < 500

    (run_id,) = Catalog(catalog).query("SELECT run_id FROM runs")["run_id"]
    assert run_row(catalog, run_id)["status"] == "running"  # as the killed process left it
    assert Catalog(catalog).mark_interrupted() == [run_id]
    interrupted = run_row(catalog, run_id)
    assert interrupted["status"] == "interrupted" and f"--resume {run_id}" in interrupted["message"]
    partial = Catalog(catalog).query("SELECT count(*) FROM predictions WHERE run_id = ?", [run_id]).item()
    assert 0 < partial < 500

    print(f"\nkilled with {partial} of 500 candidates stored; resuming run {run_id}")
    resumed = cli("screen", "--catalog", str(catalog), "--resume", run_id, "--no-report", "--no-progress", env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "500 candidates: " in resumed.stderr
    done = run_row(catalog, run_id)
    assert done["status"] == "completed" and "after it was interrupted" in done["message"]

    # the same candidates, uninterrupted, as a second run of the same catalog
    again = cli(*args, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    with duckdb.connect(str(catalog), read_only=True) as con:
        other = con.execute("SELECT run_id FROM runs WHERE run_id <> ?", [run_id]).fetchall()[0][0]
        per_run = dict(
            con.execute(
                "SELECT run_id, count(*) FROM predictions GROUP BY run_id "
                "HAVING count(*) = count(DISTINCT candidate_id)"
            ).fetchall()
        )
        failures = dict(con.execute("SELECT run_id, count(*) FROM failures GROUP BY run_id").fetchall())
        candidates = con.execute("SELECT count(*), count(DISTINCT candidate_id) FROM candidates").fetchall()[0]
        columns = ", ".join(PREDICTED)
        mine = con.execute(
            f"SELECT candidate_id, {columns} FROM predictions WHERE run_id = ? ORDER BY 1", [run_id]
        ).fetchall()
        theirs = con.execute(
            f"SELECT candidate_id, {columns} FROM predictions WHERE run_id = ? ORDER BY 1", [other]
        ).fetchall()
        statuses = dict(con.execute("SELECT run_id, status FROM runs").fetchall())
    assert per_run[run_id] == per_run[other] > 0  # no duplicate in either run, and the same number of rows
    assert failures.get(run_id, 0) == failures.get(other, 0)
    assert candidates[0] == candidates[1] == per_run[run_id]  # candidates shared, none twice
    assert [r[0] for r in mine] == [r[0] for r in theirs]
    np.testing.assert_allclose(np.array([r[1:] for r in mine]), np.array([r[1:] for r in theirs]), rtol=1e-6)
    assert statuses == {run_id: "completed", other: "completed"}
    assert not (tmp_path / "killed.duckdb.runs").exists()  # run locks are gone with the runs
    table_counts(catalog)


def test_ctrl_c_marks_the_run_interrupted_and_resume_completes_it(tmp_path, prefect_harness, monkeypatch):
    """Ctrl-C (KeyboardInterrupt) during the second append (one batch each): the flow's crash hook records
    `interrupted` with the command that resumes it, and the resumed run stores every candidate once, from the
    shards the interrupted run left (no batch is scored again)."""
    import flows.screen as screen_module
    from flows.sources import SourceSpec

    real_ingest = screen_module.ingest_shards
    calls = []

    def ingest_then_interrupt(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_ingest(*args, **kwargs)

    monkeypatch.setattr(screen_module, "ingest_shards", ingest_then_interrupt)
    catalog = tmp_path / "c.duckdb"
    options = {"source": SourceSpec(count=60), "batch_size": 20, "report": False, "append_rows": 20}
    with pytest.raises(KeyboardInterrupt):
        screen_module.screen(catalog=str(catalog), **options)
    run = Catalog(catalog).run()
    assert run["status"] == "interrupted" and f"--resume {run['run_id']}`" in run["message"]
    assert Catalog(catalog).query("SELECT count(*) FROM predictions").item() == 20
    monkeypatch.setattr(screen_module, "ingest_shards", real_ingest)
    result = screen_module.screen(catalog=str(catalog), resume=run["run_id"], **options)
    assert result.counts["predictions_new"] == 40 and Catalog(catalog).run()["status"] == "completed"
    assert result.counts["batches_reused"] >= 2  # the batches scored before Ctrl-C came back from their shards
    assert Catalog(catalog).query("SELECT count(*), count(DISTINCT candidate_id) FROM predictions").row(0) == (60, 60)
    store, model_hash = Catalog(catalog), screen_module.model_fingerprint("default")["hash"]
    with pytest.raises(CatalogError, match="has completed; there is nothing to resume"):
        screen_module.check_resumable(store, run["run_id"], SourceSpec(count=60), model_hash)
    store.finish_run(run["run_id"], "failed")
    with pytest.raises(CatalogError, match=r"screened demo:60:seed=0 with model .*; resume it with the same source"):
        screen_module.check_resumable(store, run["run_id"], SourceSpec(count=61), model_hash)
    with pytest.raises(CatalogError, match="same source and model"):
        screen_module.check_resumable(store, run["run_id"], SourceSpec(count=60), "another model")
    with pytest.raises(CatalogError, match="no run 'nope'"):
        screen_module.check_resumable(store, "nope", SourceSpec(count=60), model_hash)


KILL_IN_TRANSACTION = """
import os, signal, sys
sys.path.insert(0, {root!r})
from catalogs.catalog import Catalog
from tests.test_faults import synthetic_rows

catalog = Catalog({path!r})
rows = synthetic_rows(300)
run = catalog.start_run(flow="screen", run_id="r-killed")
catalog.append(run, rows.slice(0, 100))
real_add_curves = Catalog._add_curves

def add_curves_then_die(con, gid, keys):  # the batch's rows are inserted, the transaction is not committed
    real_add_curves(con, gid, keys)
    os.kill(os.getpid(), signal.SIGKILL)

Catalog._add_curves = staticmethod(add_curves_then_die)
catalog.append(run, rows.slice(100, 100))
"""


def test_kill_inside_a_catalog_transaction_loses_that_batch_only(tmp_path):
    """SIGKILL between a batch's inserts and its commit: the file opens, holds the batches committed before,
    none of the killed one, and the resumed run appends each row exactly once."""
    path = tmp_path / "c.duckdb"
    script = KILL_IN_TRANSACTION.format(root=str(ROOT), path=str(path))
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert table_counts(path)["predictions"] == 100  # readable; the uncommitted batch is not there
    catalog = Catalog(path)
    assert catalog.mark_interrupted() == ["r-killed"]
    assert catalog.run("r-killed")["status"] == "interrupted"
    rows = synthetic_rows(300)
    catalog.start_run(flow="screen", run_id="r-killed")
    assert catalog.run("r-killed")["message"].endswith("after it was interrupted")
    added = [catalog.append("r-killed", rows.slice(start, 100)).predictions_new for start in (0, 100, 200)]
    catalog.finish_run("r-killed")
    assert added == [0, 100, 100]
    stored = catalog.query("SELECT count(*) n, count(DISTINCT candidate_id) d FROM predictions").row(0)
    assert stored == (300, 300) and catalog.query("SELECT count(*) FROM candidates").item() == 300
    assert catalog.run("r-killed")["status"] == "completed"


def test_a_run_another_live_process_runs_is_not_interrupted_or_resumed(tmp_path):
    """A `running` row whose process is alive stays `running`, and resuming it elsewhere is refused."""
    path = tmp_path / "c.duckdb"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from catalogs.catalog import Catalog
        Catalog({str(path)!r}).start_run(flow="screen", run_id="r-live")
        print("started", flush=True)
        time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "started"
        catalog = Catalog(path)
        assert catalog.mark_interrupted() == []
        with pytest.raises(CatalogError, match=rf"run r-live is still running in process {holder.pid} on "):
            catalog.start_run(flow="screen", run_id="r-live")
        assert catalog.run("r-live")["status"] == "running"
    finally:
        holder.kill()
        holder.wait()
    assert catalog.mark_interrupted() == ["r-live"]  # gone now


# ------------------------------------------------------------------------------------------------ disk full


def _fill(catalog: Catalog, run_id: str) -> tuple[int, int, CatalogError]:
    """Append batches of 2,000 until the file system refuses one; (rows stored, refused batch's seed, error)."""
    stored = 0
    for seed in range(1, 1000):
        try:
            catalog.append(run_id, synthetic_rows(2000, seed, prefix=f"b{seed}"))
        except CatalogError as exc:
            return stored, seed, exc
        stored += 2000
    raise AssertionError("the file system never filled up")


@pytest.fixture
def small_filesystem(tmp_path):
    """A 6 MiB tmpfs (needs root; skipped where mounting is not allowed), unmounted afterwards."""
    mount = tmp_path / "small fs"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_while_writing_the_catalog(small_filesystem):
    """A real full disk: the refused batch is one line and rolled back, the catalog stays readable, and once
    there is space the same run stores that batch (once)."""
    path = small_filesystem / "c.duckdb"
    catalog = Catalog(path)
    run = catalog.start_run(flow="screen", run_id="r-full")
    stored, refused, error = _fill(catalog, run)
    message = str(error)
    assert stored > 0 and "\n" not in message
    assert f"cannot write to catalog {path}: the disk is full (no space left on device)" in message
    assert "rolled back" in message
    counts = table_counts(path)  # readable, read-only, with every batch stored before the full one
    assert counts["predictions"] == counts["candidates"] == stored
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_filesystem)], check=True)  # space again
    assert catalog.append(run, synthetic_rows(2000, refused, prefix=f"b{refused}")).predictions_new == 2000
    assert catalog.append(run, synthetic_rows(2000, 1, prefix="b1")).predictions_new == 0
    catalog.finish_run(run)
    stored_now = catalog.query("SELECT count(*), count(DISTINCT candidate_id) FROM predictions").row(0)
    assert stored_now == (stored + 2000, stored + 2000)


def test_disk_full_during_a_screen_run_is_one_line_and_resumes_when_there_is_space(
    small_filesystem, prefect_harness, monkeypatch
):
    """The screen flow on a disk with room for the run's record but not its first batch: one line, a readable
    catalog without a row of that batch, and once there is space, the resumed run completes."""
    import flows.screen as screen_module
    from flows.sources import SourceSpec

    path = small_filesystem / "c.duckdb"
    Catalog(path).migrate()
    free = os.statvfs(small_filesystem).f_bavail * os.statvfs(small_filesystem).f_frsize
    (small_filesystem / "filler").write_bytes(b"\0" * (free - 400 * 1024))  # 400 KiB left
    monkeypatch.setattr(screen_module, "ingest_shards", screen_module.ingest_shards.with_options(retries=0))
    with pytest.raises(CatalogError) as info:
        screen_module.screen(catalog=str(path), source=SourceSpec(count=40), batch_size=20, report=False)
    message = str(info.value)
    assert "\n" not in message and "the disk is full (no space left on device)" in message
    assert table_counts(path)["predictions"] == 0  # readable, and nothing of the refused batch
    run = Catalog(path).run()
    # The flow's failure hook records `failed` when the disk still has room for that one row; here the refused
    # batch's partial log took the rest, so the row stays `running` until a run finds its process gone.
    assert run["status"] in ("failed", "running")
    (small_filesystem / "filler").unlink()  # space again
    if run["status"] == "running":
        assert Catalog(path).mark_interrupted() == [run["run_id"]]
    else:
        assert "the disk is full" in run["message"]
    result = screen_module.screen(
        catalog=str(path), source=SourceSpec(count=40), batch_size=20, report=False, resume=run["run_id"]
    )
    assert result.counts["candidates"] == 40 and Catalog(path).run()["status"] == "completed"
    assert Catalog(path).query("SELECT count(*), count(DISTINCT candidate_id) FROM predictions").row(0) == (40, 40)


def test_write_the_file_system_refuses_is_one_line_and_the_catalog_stays_readable(tmp_path):
    """Without root: a file size limit (RLIMIT_FSIZE) makes the kernel refuse the catalog's writes."""
    path = tmp_path / "c.duckdb"
    Catalog(path).start_run(flow="screen", run_id="r")  # the schema, before the limit
    Catalog(path).finish_run("r")
    limit = path.stat().st_size + 3 * 2**20
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from catalogs.catalog import Catalog
        from tests.test_faults import _fill
        catalog = Catalog({str(path)!r})
        run = catalog.start_run(flow="screen", run_id="r-limited")
        stored, refused, error = _fill(catalog, run)
        print(stored)
        print(error)
    """)

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size
    )
    assert done.returncode == 0, done.stderr[-3000:]
    stored, message = done.stdout.strip().split("\n")
    assert int(stored) > 0
    assert message.startswith(f"cannot write to catalog {path}: ") and "File too large" in message
    counts = table_counts(path)
    assert counts["predictions"] == int(stored)
    catalog = Catalog(path)
    assert catalog.run("r-limited")["status"] == "running"  # its process has ended; resumed without a sweep:
    catalog.start_run(flow="screen", run_id="r-limited")
    assert catalog.run("r-limited")["message"].endswith("after it was interrupted")
    assert catalog.append("r-limited", synthetic_rows(2000, 1, prefix="b1")).predictions_new == 0  # stored before


# ------------------------------------------------------------------------------------------------ Prefect server


DEAD_SERVER = "http://127.0.0.1:9/api"  # the discard port: refused at once


def test_serve_without_a_reachable_server_is_one_line(tmp_path):
    env = {**os.environ, "PREFECT_API_URL": DEAD_SERVER, "PREFECT_HOME": str(tmp_path / "prefect")}
    result = cli("serve", env=env, timeout=120)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert f"no Prefect server answers at {DEAD_SERVER} (ConnectError)" in result.stderr
    assert "prefect server start --host 127.0.0.1" in result.stderr
    env.pop("PREFECT_API_URL")
    unset = cli("serve", env=env, timeout=120)
    assert unset.returncode == 1 and unset.stderr.count("\n") == 1
    assert "PREFECT_API_URL is not set" in unset.stderr


@pytest.mark.slow
def test_screen_with_an_unreachable_server_runs_in_process(tmp_path):
    """PREFECT_API_URL names a server that is down: one warning line, and the run goes on in-process (its
    candidates from the two prototypes asked for, one of them the opt-in one)."""
    env = {**os.environ, "PREFECT_API_URL": DEAD_SERVER, "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200"}
    catalog = tmp_path / "c.duckdb"
    args = ["--count", "40", "--prototypes", "double-double-perovskite,rocksalt", "--no-report", "--top", "3"]
    result = cli("screen", "--catalog", str(catalog), *args, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    warning = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and f"no Prefect server answers at {DEAD_SERVER}" in warning[0]
    assert "in-process" in warning[0] and "40 candidates: " in result.stderr
    assert Catalog(catalog).query("SELECT status FROM runs").item() == "completed"
    prototypes = Catalog(catalog).query("SELECT DISTINCT split_part(source_id, ':', 1) AS p FROM candidates ORDER BY p")
    assert "double-double-perovskite" in prototypes["p"] and set(prototypes["p"]) <= {
        "double-double-perovskite",
        "rocksalt",
    }


# ------------------------------------------------------------------------------------------------ the model


@pytest.fixture(scope="module")
def bundle():
    from cloud_core.bundle import load_bundle

    return load_bundle("default")


@pytest.fixture(scope="module")
def scopes(bundle) -> list[str]:
    from cloud_core.encode import EncodeSettings, encode_structures
    from cloud_core.prototypes import generate_candidates

    ids, crystals = zip(*generate_candidates(max_count=40, seed=5), strict=True)
    variant = bundle.card.get("settings", {}).get("variant", "detailed")
    return encode_structures(list(crystals), list(ids), EncodeSettings(variant=variant))["scope"].to_list()


def test_out_of_memory_splits_the_batch_and_one_structure_becomes_an_error_row(bundle, scopes, monkeypatch, caplog):
    """Batches above 5 strings 'run out of memory' (as CUDA would), and any batch with one string in it, even
    alone. The batch is halved until it fits, the answers are those of an unsplit run, and only that string (and
    its duplicates) are error rows."""
    from cloud_core.inference import predict_strings

    model = bundle.model
    reference = predict_strings(model, scopes, batch_size=64)
    poison = scopes[7]
    real_predict = model.predict
    sizes: list[int] = []

    def predict(batch):
        sizes.append(len(batch.rows))
        if len(batch.rows) > 5 or poison in [scopes[int(r)] for r in batch.rows]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_predict(batch)

    monkeypatch.setattr(model, "predict", predict)
    with caplog.at_level("WARNING", logger="cloud_core.inference"):
        split = predict_strings(model, scopes, batch_size=64)
    assert sizes[:4] == [40, 20, 10, 5] and max(sizes[4:]) <= 5
    errors = split["error"].to_list()
    bad = [i for i, s in enumerate(scopes) if s == poison]
    assert all(errors[i].startswith("out of memory on a batch of one") for i in bad)
    assert all(e is None for i, e in enumerate(errors) if i not in bad)
    good = [i for i in range(len(scopes)) if i not in bad]
    for column in PREDICTED:
        assert split[column].gather(bad).is_null().all()
        np.testing.assert_allclose(
            split[column].gather(good).to_numpy(), reference[column].gather(good).to_numpy(), rtol=1e-5, atol=1e-5
        )
    assert any("out of memory" in r.message and "halving" in r.message for r in caplog.records)


def test_non_finite_outputs_are_error_rows_never_stored_as_predictions(tmp_path, bundle, scopes, monkeypatch):
    """NaN and inf from the model: flagged with a reason, stored as error rows with no values, never ranked."""
    from catalogs.ranking import RankingSpec, rank_run
    from cloud_core.encode import EncodeSettings, encode_structures
    from cloud_core.pipeline import predict_frame
    from cloud_core.prototypes import generate_candidates

    ids, crystals = zip(*generate_candidates(max_count=12, seed=5), strict=True)
    variant = bundle.card.get("settings", {}).get("variant", "detailed")
    encoded = encode_structures(list(crystals), list(ids), EncodeSettings(variant=variant, identify=True))
    model = bundle.model
    real_predict = model.predict
    spoiled = {0: float("nan"), 1: float("inf"), 2: float("-inf")}  # input row -> value of one output

    def predict(batch):
        result = real_predict(batch)
        for position, row in enumerate(batch.rows):
            if int(row) in spoiled:
                column = "band_gap" if int(row) != 2 else "debye_temperature"
                result[column] = result[column].clone()
                result[column][position] = spoiled[int(row)]
        return result

    monkeypatch.setattr(model, "predict", predict)
    rows = predict_frame(bundle, encoded, torch.device("cpu"))
    assert rows["error"].to_list()[:3] == ["model output not finite"] * 3
    assert rows["error"].slice(3).is_null().all()
    catalog = Catalog(tmp_path / "c.duckdb")
    run = catalog.start_run(flow="screen", run_id="r-nan")
    catalog.append(run, rows)
    stored = catalog.query("SELECT candidate_id, error, band_gap, debye_temperature FROM predictions")
    flagged = stored.filter(pl.col("error").is_not_null())
    assert flagged.height == 3 and flagged["band_gap"].is_null().all() and flagged["debye_temperature"].is_null().all()
    assert stored.filter(pl.col("error").is_null())["band_gap"].is_finite().all()
    assert catalog.query("SELECT count(*) FROM latest_predictions").item() == stored.height - 3
    ranked = rank_run(catalog, run, RankingSpec())
    assert not set(ranked["candidate_id"]) & set(flagged["candidate_id"])

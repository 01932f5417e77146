"""The result catalog: one DuckDB file holding runs, candidates, predictions, Debye curves and rankings.

Every write is a short transaction on a connection opened for it and closed after it, so another process can
read (`cloud-screen query`) between a run's batches; a process that finds the file locked waits up to
`lock_timeout` seconds and then stops with one line naming the process that holds it. Appends are idempotent
per (run_id, candidate_id): rows already in the catalog are skipped by an anti-join, so a resumed or repeated
run neither duplicates nor loses a row, and candidates are shared across runs. Each open waits for the lock is
added up in `lock_wait_s` (the screen flow reports it in the run's timings).

A write that fails (disk full, I/O error) is rolled back and raised as a one-line `CatalogError`; what earlier
transactions stored stays readable.

Interrupted runs: the process that runs a run holds an advisory lock (POSIX `lockf`) on a small file
`<catalog>.runs/<hash of run id>.lock` from `start_run` to `finish_run`. The kernel drops it when the process
ends, however it ends (kill -9, power cut of a local machine, crash), and a fork (an encoder worker) does not
inherit it. So a `running` row whose lock nobody holds belongs to a process that is gone: `start_run` (and
`mark_interrupted`) mark such rows `interrupted`, with a message that says how to resume; a run is resumed by
calling `start_run` with its run id (which refuses while another live process still runs it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import polars as pl

from catalogs.schema import (
    ELEMENTS,
    MIGRATIONS,
    PREDICTION_VALUES,
    SCHEMA_VERSION,
    THETA_KEY_SCALE,
    VIEWS,
    theta_key_sql,
    theta_keys,
)

DEFAULT_TEMPERATURES = tuple(float(t) for t in np.linspace(10.0, 1000.0, 100))  # K: 10, 20, ..., 1000

_process_locks: dict[Path, threading.RLock] = {}  # one DuckDB configuration per file per process
# Runs this process is running: (catalog file, run id) -> the open lock file whose lockf lock says so.
_held_runs: dict[tuple[Path, str], int] = {}
_held_runs_lock = threading.Lock()


class CatalogError(RuntimeError):
    """A catalog that cannot be used as asked; the message is one line that says what to do."""


@dataclass(frozen=True)
class AppendCounts:
    candidates_new: int
    predictions_new: int
    failures_new: int
    skipped: int  # rows already in the catalog for this run


def crystal_system(spacegroup: pl.Expr) -> pl.Expr:
    """Crystal system of a space-group number (International Tables ranges)."""
    return (
        pl.when(spacegroup <= 2)
        .then(pl.lit("triclinic"))
        .when(spacegroup <= 15)
        .then(pl.lit("monoclinic"))
        .when(spacegroup <= 74)
        .then(pl.lit("orthorhombic"))
        .when(spacegroup <= 142)
        .then(pl.lit("tetragonal"))
        .when(spacegroup <= 167)
        .then(pl.lit("trigonal"))
        .when(spacegroup <= 194)
        .then(pl.lit("hexagonal"))
        .when(spacegroup <= 230)
        .then(pl.lit("cubic"))
        .otherwise(None)
    )


def grid_id(temperatures: Sequence[float]) -> str:
    """A temperature grid's id: a hash of its float32 values, so equal grids share curves."""
    return "g" + hashlib.sha256(np.asarray(temperatures, dtype=np.float32).tobytes()).hexdigest()[:15]


def _lock_holder(message: str) -> str:
    match = re.search(r"held in (\S+) \(PID (\d+)\)", message)
    if not match:
        return "another process"
    program, pid = match.groups()
    command = ""
    with contextlib.suppress(OSError):  # the holder's command line says which command (or notebook) it is
        command = " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().split())
    return f"process {pid} ({command[:160] or program})"


class Catalog:
    """A DuckDB result catalog file. Creating one writes nothing until the first write."""

    def __init__(self, path: str | Path, lock_timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self._migrated = False
        self._grids: dict[str, str] = {}  # run_id -> grid_id, for appends
        self.lock_wait_s = 0.0  # seconds this object waited for another process's lock on the file
        self.lock_wait_max_s = 0.0  # the longest of those waits
        self.lock_waits = 0  # opens that had to wait

    # ------------------------------------------------------------------ connections

    @contextmanager
    def connect(self, write: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one short piece of work; write connections run it in one transaction."""
        if not write and not self.path.exists():
            raise CatalogError(f"no catalog at {self.path}: run `cloud-screen screen --catalog {self.path}` first")
        if write:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = _process_locks.setdefault(self.path.resolve(), threading.RLock())
        with lock:
            con = self._open(write)
            try:
                if write and not self._migrated:
                    self._migrate(con)
                elif not write:
                    self._check_version(con)
                if write:
                    con.execute("BEGIN TRANSACTION")
                    try:
                        yield con
                    except BaseException:
                        with contextlib.suppress(duckdb.Error):  # a failed write may have ended it already
                            con.execute("ROLLBACK")
                        raise
                    con.execute("COMMIT")
                else:
                    yield con
            except duckdb.Error as exc:
                failure = self._write_failure(exc) if write else None
                if failure is None:
                    raise
                raise failure from None
            finally:
                con.close()

    def _write_failure(self, exc: duckdb.Error) -> CatalogError | None:
        """A one-line error for a write the file system refused (disk full, file size limit, I/O error)."""
        text = " ".join(str(exc).split())
        refused = re.search(r"No space left|Could not write|File too large", text)
        if not (refused or isinstance(exc, duckdb.IOException)):
            return None
        reason = "the disk is full (no space left on device)" if "No space left" in text else text[:240]
        return CatalogError(
            f"cannot write to catalog {self.path}: {reason}; this transaction was rolled back and the catalog "
            "keeps what was stored before it: free space, then run again (a resumed run adds only what is missing)"
        )

    def _open(self, write: bool) -> duckdb.DuckDBPyConnection:
        # No extension may be fetched at run time (and none is needed).
        config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
        if not write:  # reads touch the catalog only: no COPY TO / EXPORT / read_csv of other files, no ATTACH
            config["enable_external_access"] = False
        first_try = time.monotonic()
        deadline = first_try + self.lock_timeout
        waited = False
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=not write, config=config)
                if waited:
                    self.lock_wait_s += (wait := time.monotonic() - first_try)
                    self.lock_wait_max_s = max(self.lock_wait_max_s, wait)
                    self.lock_waits += 1
                return con
            except duckdb.IOException as exc:
                message = str(exc)
                if "lock" not in message.lower():
                    raise CatalogError(f"cannot open catalog {self.path}: {message.splitlines()[0]}") from None
                waited = True
                if time.monotonic() >= deadline:
                    holder = _lock_holder(message)
                    raise CatalogError(
                        f"catalog {self.path} is locked by {holder}; wait for it to finish or stop it, "
                        f"then run this again (waited {self.lock_timeout:g} s)"
                    ) from None
                time.sleep(0.2)
            except duckdb.Error as exc:
                first = str(exc).splitlines()[0]
                raise CatalogError(f"cannot open catalog {self.path}: {first}") from None

    @staticmethod
    def _version(con: duckdb.DuckDBPyConnection) -> int:
        exists = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'"
        ).fetchall()[0][0]
        if not exists:
            return 0
        return con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]

    def _check_version(self, con: duckdb.DuckDBPyConnection) -> None:
        version = self._version(con)
        if version > SCHEMA_VERSION:
            raise CatalogError(self._newer_message(version))
        if version < SCHEMA_VERSION:
            raise CatalogError(
                f"catalog {self.path} has schema version {version}, this cloud-screen reads version "
                f"{SCHEMA_VERSION}: upgrade it with `cloud-screen migrate --catalog {self.path}`"
            )

    def _newer_message(self, version: int) -> str:
        return (
            f"catalog {self.path} has schema version {version}, newer than this cloud-screen knows "
            f"({SCHEMA_VERSION}): upgrade cloud-screen to use it"
        )

    def _migrate(self, con: duckdb.DuckDBPyConnection, target: int = SCHEMA_VERSION) -> None:
        version = self._version(con)
        if version > SCHEMA_VERSION:
            raise CatalogError(self._newer_message(version))
        if version < target:
            con.execute("BEGIN TRANSACTION")
            try:
                if version == 0:
                    con.execute(
                        "CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TIMESTAMPTZ NOT NULL, "
                        "description VARCHAR NOT NULL)"
                    )
                for migration in MIGRATIONS:
                    if version < migration.version <= target:
                        for statement in migration.statements:
                            con.execute(statement)
                        con.execute(
                            "INSERT INTO schema_version VALUES (?, now(), ?)",
                            [migration.version, migration.description],
                        )
                if version < 4 <= target:  # keys once rounded half to even: add the curves the views now look up
                    grids = con.sql(
                        f"SELECT DISTINCT r.grid_id, {theta_key_sql('p.debye_temperature')} FROM predictions p "
                        "JOIN runs r ON r.run_id = p.run_id WHERE p.debye_temperature IS NOT NULL"
                    ).pl()
                    for (gid,), keys in grids.group_by(grids.columns[0]):
                        self._add_curves(con, gid, keys[:, 1].to_numpy())
                if target == SCHEMA_VERSION:
                    for name, body in VIEWS.items():
                        con.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        self._migrated = target == SCHEMA_VERSION

    def migrate(self) -> tuple[int, int]:
        """Upgrade the file to this code's schema; returns (version before, version after)."""
        lock = _process_locks.setdefault(self.path.resolve(), threading.RLock())
        with lock:
            con = self._open(write=True)
            try:
                before = self._version(con)
                self._migrate(con)
                return before, self._version(con)
            finally:
                con.close()

    # ------------------------------------------------------------------ reading

    def query(self, sql: str, params: Sequence[Any] | dict[str, Any] | None = None) -> pl.DataFrame:
        """Run SQL on a read-only connection and return a polars DataFrame."""
        with self.connect(write=False) as con:
            try:
                return con.sql(sql, params=params).pl()
            except duckdb.Error as exc:
                raise CatalogError(f"query failed: {' '.join(str(exc).split())}") from None

    def schema_version(self) -> int:
        with self.connect(write=False) as con:
            return self._version(con)

    # ------------------------------------------------------------------ runs

    def start_run(
        self,
        *,
        flow: str,
        run_id: str | None = None,
        source: str | None = None,
        parameters: dict[str, Any] | None = None,
        model: dict[str, Any] | None = None,
        code_version: str | None = None,
        host: str | None = None,
        device: str | None = None,
        temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    ) -> str:
        """Record a run (or resume one with the same run_id) and its temperature grid; returns the run id.

        This process holds the run's lock until `finish_run` (or its end); resuming a run that another live
        process is running is refused. Runs left `running` by processes that are gone are marked `interrupted`.
        """
        run_id = run_id or f"{flow}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        temps = [float(t) for t in temperatures]
        if not temps or any(t <= 0 or not np.isfinite(t) for t in temps) or sorted(temps) != temps:
            raise CatalogError("temperatures must be positive, finite and ascending")
        gid = grid_id(temps)
        model = model or {}
        claimed = self._claim_run(run_id)
        try:
            self._record_run(run_id, flow, gid, temps, source, parameters, model, code_version, host, device, claimed)
        except BaseException:
            if claimed:
                self._release_run(run_id)
            raise
        self._grids[run_id] = gid
        return run_id

    def _record_run(
        self, run_id, flow, gid, temps, source, parameters, model, code_version, host, device, claimed
    ) -> None:
        with self.connect(write=True) as con:
            con.execute(
                "INSERT INTO temperature_grids SELECT ?, ?::FLOAT[] "
                "WHERE NOT EXISTS (SELECT 1 FROM temperature_grids WHERE grid_id = ?)",
                [gid, temps, gid],
            )
            self._mark_interrupted(con, found_by=run_id)
            existing = con.execute("SELECT grid_id, status FROM runs WHERE run_id = ?", [run_id]).fetchall()
            if existing:
                if existing[0][0] != gid:
                    raise CatalogError(f"run {run_id} was started with another temperature grid; use a new run id")
                before = existing[0][1]
                if before == "running" and claimed:  # its lock was free: the process that ran it is gone
                    before = "interrupted"
                if before != "running":  # a resume, not this process starting its own run again
                    con.execute(
                        "UPDATE runs SET status = 'running', finished_at = NULL, message = ? WHERE run_id = ?",
                        [f"resumed at {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC after it was {before}", run_id],
                    )
            else:
                con.execute(
                    "INSERT INTO runs (run_id, flow, status, started_at, source, parameters, model_id, model_hash, "
                    "model_card, code_version, host, device, grid_id) "
                    "VALUES (?, ?, 'running', now(), ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        run_id,
                        flow,
                        source,
                        json.dumps(parameters or {}, default=str),
                        model.get("id"),
                        model.get("hash"),
                        json.dumps(model.get("card") or {}, default=str),
                        code_version,
                        host,
                        device,
                        gid,
                    ],
                )

    def finish_run(
        self,
        run_id: str,
        status: str = "completed",
        counts: dict[str, Any] | None = None,
        timings: dict[str, Any] | None = None,
        message: str | None = None,
    ) -> None:
        """Record how a run ended (a message replaces the one it has, e.g. 'resumed ...') and drop its lock."""
        try:
            with self.connect(write=True) as con:
                con.execute(
                    "UPDATE runs SET status = ?, finished_at = now(), counts = ?, timings = ?, "
                    "message = coalesce(?, message) WHERE run_id = ?",
                    [status, json.dumps(counts or {}), json.dumps(timings or {}), message, run_id],
                )
        finally:  # when the update failed (disk full), the row stays `running` until a later run marks it
            self._release_run(run_id)

    # ------------------------------------------------------------------ which runs are still running

    def mark_interrupted(self) -> list[str]:
        """Mark runs left `running` by processes that have ended as `interrupted`; returns their ids."""
        with self.connect(write=True) as con:
            return self._mark_interrupted(con, found_by=None)

    def _mark_interrupted(self, con: duckdb.DuckDBPyConnection, found_by: str | None) -> list[str]:
        running = [r for (r,) in con.execute("SELECT run_id FROM runs WHERE status = 'running'").fetchall()]
        stale = [r for r in running if r != found_by and not self._run_alive(r)]
        seen = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC" + (f", when run {found_by} started" if found_by else "")
        for run_id in stale:
            con.execute(
                "UPDATE runs SET status = 'interrupted', message = ? WHERE run_id = ? AND status = 'running'",
                [
                    f"interrupted: its process ended before the run finished (found at {seen}); resume it with "
                    f"`cloud-screen screen --catalog {self.path} --resume {run_id}`",
                    run_id,
                ],
            )
        return stale

    def runs_here(self, run_id: str) -> bool:
        """Whether this process is running the run (started it and has not finished it)."""
        return (self.path.resolve(), run_id) in _held_runs

    def _run_lock_path(self, run_id: str) -> Path:
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:32]  # any run id makes a harmless file name
        return self.path.parent / f"{self.path.name}.runs" / f"{digest}.lock"

    def _claim_run(self, run_id: str) -> bool:
        """Take the run's lock for this process; False when this process holds it already."""
        key = (self.path.resolve(), run_id)
        path = self._run_lock_path(run_id)
        with _held_runs_lock:
            if key in _held_runs:
                return False
            while True:
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                except FileNotFoundError:  # the folder was removed in between: make it again
                    continue
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except (BlockingIOError, PermissionError):
                    holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
                    os.close(fd)
                    raise CatalogError(
                        f"run {run_id} is still running in {holder}; wait for it to finish or stop it, then resume it"
                    ) from None
                except OSError:  # no locks on this file system: others cannot tell either (see _run_alive)
                    break
                try:
                    same = os.fstat(fd).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same = False
                if same:  # not a file another process unlinked after we opened it
                    break
                os.close(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
            _held_runs[key] = fd
            return True

    def _release_run(self, run_id: str) -> None:
        with _held_runs_lock:
            fd = _held_runs.pop((self.path.resolve(), run_id), None)
            if fd is None:
                return
            path = self._run_lock_path(run_id)
            with contextlib.suppress(OSError):
                path.unlink()  # while holding the lock, so no other process holds a lock on this file
            os.close(fd)
            with contextlib.suppress(OSError):
                path.parent.rmdir()  # the last run of this catalog has finished

    def _run_alive(self, run_id: str) -> bool:
        """Whether a live process holds the run's lock (True also when that cannot be told)."""
        if self.runs_here(run_id):
            return True
        path = self._run_lock_path(run_id)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False  # every running run has its file from start_run to finish_run
        except OSError:
            return True
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return True
        except OSError:  # locks not supported here (some network file systems): cannot tell
            os.close(fd)
            return True
        with contextlib.suppress(OSError):
            path.unlink()  # the owner is gone: its file goes, while we hold the lock
        os.close(fd)
        return False

    def run(self, run_id: str | None = None) -> dict[str, Any]:
        """One run's provenance (the latest run when no id is given)."""
        frame = self.query(
            "SELECT * FROM runs WHERE run_id = $id OR $id IS NULL ORDER BY started_at DESC LIMIT 1",
            {"id": run_id},
        )
        if frame.is_empty():
            raise CatalogError(f"no run {run_id!r} in {self.path}" if run_id else f"no runs in {self.path} yet")
        row = frame.row(0, named=True)
        for key in ("parameters", "model_card", "timings", "counts"):
            if isinstance(row.get(key), str):
                row[key] = json.loads(row[key])
        return row

    # ------------------------------------------------------------------ appends

    def append(self, run_id: str, rows: pl.DataFrame | Iterable[pl.DataFrame]) -> AppendCounts:
        """Store rows of a run: encoded + predicted rows (one per input), in one transaction.

        `rows` holds the encoder's identity columns (candidate_id, canonical_scope, structure_hash), `id`,
        `source`, `formula`, `spacegroup`, `nsites`, `scope` (what the model read), the prediction columns,
        `error`, and optionally `structure` + `structure_format`. Rows without a candidate_id (the input could
        not be read or encoded) go to `failures`; the rest to `candidates` (new ones only) and `predictions`.

        `rows` may also be several frames, taken one at a time into the same transaction: memory then holds one
        part, while the transaction stays as large as the whole (DuckDB writes each full row group of it
        straight to the file). Each part's inserts see the parts before it, so a candidate in two parts is
        stored once.
        """
        gid = self._grid_of(run_id)
        counts = [0, 0, 0, 0]
        with self.connect(write=True) as con:
            for part in [rows] if isinstance(rows, pl.DataFrame) else rows:
                added = self._insert(con, run_id, gid, part)
                counts = [a + b for a, b in zip(counts, added, strict=True)]
        return AppendCounts(*counts)

    def _insert(self, con: duckdb.DuckDBPyConnection, run_id: str, gid: str, rows: pl.DataFrame) -> tuple[int, ...]:
        """Insert one frame of a run's rows (see append); (candidates, predictions, failures) added, rows skipped."""
        candidates, predictions, failures = batch_tables(run_id, rows)
        thetas = predictions["debye_temperature"].drop_nulls()
        keys = np.unique(theta_keys(thetas.to_numpy()))
        con.register("batch_candidates", candidates.to_arrow())
        con.register("batch_predictions", predictions.to_arrow())
        con.register("batch_failures", failures.to_arrow())
        new_candidates = con.execute(
            f"INSERT INTO candidates BY NAME SELECT b.* EXCLUDE (mask_low, mask_high), {_MASK} AS element_mask, "
            "now() AS added_at FROM batch_candidates b "
            "WHERE NOT EXISTS (SELECT 1 FROM candidates c WHERE c.candidate_key = b.candidate_key)"
        ).fetchall()[0][0]
        new_predictions = con.execute(
            f"INSERT INTO predictions BY NAME SELECT b.* EXCLUDE (mask_low, mask_high), {_MASK} AS element_mask "
            "FROM batch_predictions b WHERE NOT EXISTS "
            "(SELECT 1 FROM predictions p WHERE p.run_id = ? AND p.candidate_key = b.candidate_key)",
            [run_id],
        ).fetchall()[0][0]
        new_failures = con.execute(
            "INSERT INTO failures BY NAME SELECT b.* FROM batch_failures b WHERE NOT EXISTS "
            "(SELECT 1 FROM failures f WHERE f.run_id = ? AND f.source_id = b.source_id "
            "AND f.source IS NOT DISTINCT FROM b.source)",
            [run_id],
        ).fetchall()[0][0]
        self._add_curves(con, gid, keys)
        for name in ("batch_candidates", "batch_predictions", "batch_failures"):
            con.unregister(name)  # the next part's frames replace these; let this part's memory go now
        skipped = predictions.height - new_predictions + failures.height - new_failures
        return new_candidates, new_predictions, new_failures, skipped

    def _grid_of(self, run_id: str) -> str:
        if run_id not in self._grids:
            found = self.query("SELECT grid_id FROM runs WHERE run_id = ?", [run_id])
            if found.is_empty():
                raise CatalogError(f"no run {run_id!r} in {self.path}: start it with Catalog.start_run first")
            self._grids[run_id] = found.item(0, 0)
        return self._grids[run_id]

    @staticmethod
    def _add_curves(con: duckdb.DuckDBPyConnection, gid: str, keys: np.ndarray) -> None:
        """Compute and store the curves of θ_D keys this grid does not have yet (a few per batch at most)."""
        if keys.size == 0:
            return
        con.register("batch_keys", pl.DataFrame({"theta_key": keys.astype(np.int32)}).to_arrow())
        missing = con.execute(
            "SELECT theta_key FROM batch_keys EXCEPT SELECT theta_key FROM debye_curve_library WHERE grid_id = ?",
            [gid],
        ).fetchall()
        if not missing:
            return
        temperatures = np.asarray(
            con.execute("SELECT temperatures FROM temperature_grids WHERE grid_id = ?", [gid]).fetchall()[0][0],
            dtype=np.float64,
        )
        new_keys = np.array(sorted(k for (k,) in missing), dtype=np.int32)
        curves = debye_curves(new_keys / THETA_KEY_SCALE, temperatures)
        library = pl.DataFrame(
            {
                "grid_id": [gid] * len(new_keys),
                "theta_key": new_keys,
                **{q: pl.Series(q, list(curves[q]), dtype=pl.List(pl.Float32)) for q in ("cv", "u", "s", "f")},
            }
        )
        con.register("batch_library", library.to_arrow())
        con.execute("INSERT INTO debye_curve_library SELECT * FROM batch_library")


# The element mask travels from polars to DuckDB as two UInt64 halves (polars has no 128-bit integer column
# that Arrow carries to a DuckDB HUGEINT); bit i is ELEMENTS[i], as catalogs.schema.element_mask_sql.
_MASK = "(b.mask_high::HUGEINT << 64) | b.mask_low::HUGEINT"


def _mask_half(elements: pl.Expr, bits: range) -> pl.Expr:
    powers = {e: 1 << (i - bits.start) for i, e in enumerate(ELEMENTS) if i in bits}
    bit = pl.element().replace_strict(powers, default=0, return_dtype=pl.UInt64)
    return elements.list.unique().list.eval(bit).list.sum()  # distinct powers of two: the sum is the OR


def batch_tables(run_id: str, rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """One batch's rows for `candidates`, `predictions` and `failures` (see Catalog.append for the input).

    The first two carry `mask_low` and `mask_high`, the element mask's halves, which the insert combines.
    """
    rows = _normalise(rows)
    rows = rows.with_columns(
        _mask_half(pl.col("elements"), range(0, 64)).alias("mask_low"),
        _mask_half(pl.col("elements"), range(64, 128)).alias("mask_high"),
    )
    key = pl.col("candidate_id").str.to_integer(base=16, dtype=pl.UInt64).alias("candidate_key")
    nelements = pl.col("elements").list.len().cast(pl.Int8).alias("nelements")
    good = rows.filter(pl.col("candidate_id").is_not_null() & pl.col("candidate_id").is_first_distinct())
    bad = rows.filter(pl.col("candidate_id").is_null())
    candidates = good.select(
        "candidate_id",
        key,
        pl.col("canonical_scope").alias("scope"),
        "structure_hash",
        "formula",
        "elements",
        nelements,
        "nsites",
        "spacegroup",
        crystal_system(pl.col("spacegroup")).alias("crystal_system"),
        "source",
        pl.col("id").alias("source_id"),
        "structure",
        "structure_format",
        pl.lit(run_id).alias("first_run_id"),
        "mask_low",
        "mask_high",
    )
    predictions = good.select(
        pl.lit(run_id).alias("run_id"),
        "candidate_id",
        pl.col("scope").alias("model_scope"),
        *[pl.col(c).cast(pl.Float32) for c in PREDICTION_VALUES],
        "error",
        key,  # the filter columns copied from the candidate (catalogs.schema.FILTER_COPIES)
        nelements,
        "spacegroup",
        "mask_low",
        "mask_high",
    )
    failures = bad.select(
        pl.lit(run_id).alias("run_id"),
        "source",
        pl.col("id").alias("source_id"),
        pl.lit("encode").alias("stage"),
        pl.col("error").fill_null("not encoded"),
    ).unique(["source", "source_id"], keep="first", maintain_order=True)  # a.cif and a.json: two inputs
    return candidates, predictions, failures


def debye_curves(theta: np.ndarray, temperatures: np.ndarray) -> dict[str, np.ndarray]:
    """Cv, U, S, F per mole of atoms for each θ_D (rows) on the grid (columns), from cloud_core.debye."""
    import torch

    from cloud_core.debye import debye_thermo

    grid = torch.as_tensor(temperatures, dtype=torch.float64)[None, :]
    theta = torch.as_tensor(theta, dtype=torch.float64)
    parts: dict[str, list[np.ndarray]] = {q: [] for q in ("cv", "u", "s", "f")}
    # ~6,400 (θ_D, T) pairs at a time (64 θ_D on a 100-point grid): the quadrature's temporaries are
    # (θ_D, T, nodes), so one call for 15k θ_D x 100 T allocates GBs, while one temperature takes 6,400 at once.
    for chunk in torch.split(theta, max(1, 6400 // grid.shape[1])):
        thermo = debye_thermo(chunk[:, None], grid)
        for q, values in parts.items():
            values.append(thermo[q].numpy().astype(np.float32))
    return {q: np.concatenate(v) if v else np.zeros((0, grid.shape[1]), np.float32) for q, v in parts.items()}


def _normalise(rows: pl.DataFrame) -> pl.DataFrame:
    """Add the optional columns a batch may lack, and each candidate's element list."""
    missing = {
        "structure": pl.String,
        "structure_format": pl.String,
        "source": pl.String,
        **dict.fromkeys(PREDICTION_VALUES, pl.Float32),
    }
    rows = rows.with_columns(pl.lit(None, dtype=t).alias(c) for c, t in missing.items() if c not in rows.columns)
    required = {"id", "candidate_id", "canonical_scope", "structure_hash", "formula", "spacegroup", "nsites", "scope"}
    absent = required - set(rows.columns)
    if absent:
        raise ValueError(f"batch lacks columns {sorted(absent)}: encode with EncodeSettings(identify=True)")
    # Elements from the canonical SCOPE's composition part ("... | Al 0.4 O 0.6"), already in canonical order.
    elements = pl.col("canonical_scope").str.split(" | ").list.last().str.extract_all(r"[A-Z][a-z]?")
    return rows.with_columns(elements.alias("elements"), pl.col("error").cast(pl.String))

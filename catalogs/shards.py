"""Parquet shards: scored batches that workers write and the catalog's one writer ingests.

A shard is one batch of scored rows (what `Catalog.append` takes) in a Parquet file, with a few numbers about
it (row count, failures, timings) in the file's metadata. The folder sits beside the catalog, so every worker
that can reach the catalog's file system (one machine, or a shared file system on a cluster) can write there:

    <catalog>.shards/runs/<run>/<batch index>-<key>.parquet   a run's shards, removed when the run completes
    <catalog>.shards/cache/<key>.parquet                      scored batches by content, for reruns

The key names a batch's content and everything that decides its rows (encoder code, model weights), so a shard
found under it is exactly what scoring the batch again would write. The cache entry and the run's shard are one
file (a hard link): a run reads only its own names, so removing cache entries never takes a shard from a run.

Exactly once: a shard is written to a temporary name and renamed into place, so no reader sees half of one,
and a task that runs twice (a retry, a Dask worker lost and its task run elsewhere) puts the same rows under the
same name. `Catalog.append` is idempotent per (run, candidate), so a shard ingested twice (a retried append, a
resumed run) stores its rows once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from catalogs.catalog import CatalogError

SHARD_FORMAT = "1"  # part of every key: a change to the shards' columns must not reuse older shards
ABANDONED_RUN_DAYS = 30.0  # a run folder untouched this long belongs to a run nobody resumed
STALE_TEMPORARY_S = 86400.0  # a temporary file this old was left by a writer that died
_METADATA_KEY = "cloud_screen"
PART_ROWS = 16_384  # rows per part of an append read from shards (read_shards)


@dataclass(frozen=True)
class ShardInfo:
    """What the writer needs to know of a shard without reading it: where, how many rows, and its stats."""

    path: str
    rows: int
    stats: dict[str, float] = field(default_factory=dict)
    reused: bool = False  # found written already (cache or an earlier attempt of the run), not scored now


class ShardStore:
    """The shard folder of one catalog (see the module docstring for its layout)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @classmethod
    def beside(cls, catalog: str | Path) -> ShardStore:
        """`<catalog>.shards`, as an absolute path: workers run in other folders, or on other machines."""
        path = Path(catalog).resolve()
        return cls(path.parent / f"{path.name}.shards")

    def run_folder(self, run_id: str) -> Path:
        return self.folder / "runs" / hashlib.sha256(run_id.encode()).hexdigest()[:16]  # any run id: a safe name

    def shard_path(self, run_id: str, index: int, key: str) -> Path:
        return self.run_folder(run_id) / f"{index:07d}-{key}.parquet"

    def cache_path(self, key: str) -> Path:
        return self.folder / "cache" / f"{key}.parquet"

    def start_run(self, run_id: str) -> None:
        """Make (or touch) the run's folder, so a sweep by another run sees it in use."""
        folder = self.run_folder(run_id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.utime(folder)
        except OSError as exc:
            raise _write_error(folder, exc) from None

    def reuse(self, path: Path, key: str, cache: bool) -> ShardInfo | None:
        """The shard at `path` if it is there already (an earlier attempt of this run wrote it) or, with `cache`,
        the cached shard of `key` linked there; None when the batch has to be scored."""
        found = read_info(path)
        if found is not None:
            return ShardInfo(found.path, found.rows, found.stats, reused=True)
        if not cache:
            return None
        cached = self.cache_path(key)
        try:
            os.utime(cached)  # in use: a sweep keeps what was used in its last `days`
        except OSError:
            return None
        try:
            if not _link(cached, path):
                return None
        except OSError:  # cannot link or copy it here: score the batch instead
            return None
        found = read_info(path)
        if found is None:  # an unreadable entry (a power cut while it was written): replaced when scored again
            with contextlib.suppress(OSError):
                cached.unlink()
            return None
        return ShardInfo(found.path, found.rows, found.stats, reused=True)

    def publish(self, rows: pl.DataFrame, path: Path, key: str, stats: dict[str, float], cache: bool) -> ShardInfo:
        """Write a scored batch as the run's shard (and, with `cache`, as the cache entry of `key`)."""
        _write_atomically(rows, path, {_METADATA_KEY: json.dumps({"rows": rows.height, "stats": stats})})
        if cache:
            with contextlib.suppress(OSError):  # no cache entry costs a rerun its shortcut, nothing else
                self.cache_path(key).parent.mkdir(parents=True, exist_ok=True)
                _link(path, self.cache_path(key))
        return ShardInfo(str(path), rows.height, stats)

    def remove_run(self, run_id: str) -> None:
        """Drop a completed run's shards (cached entries are other names for the same files and stay)."""
        shutil.rmtree(self.run_folder(run_id), ignore_errors=True)

    def sweep(self, cache_days: float, now: float | None = None) -> int:
        """Remove cache entries unused for `cache_days`, run folders untouched for ABANDONED_RUN_DAYS and
        temporary files of writers that died; returns how many files and folders went."""
        now = time.time() if now is None else now
        removed = 0
        for entry in _entries(self.folder / "cache"):
            limit = STALE_TEMPORARY_S if entry.name.endswith(".tmp") else cache_days * 86400
            if _age(entry, now) > limit:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
                    removed += 1
        for run in _entries(self.folder / "runs"):
            if _age(run, now) > ABANDONED_RUN_DAYS * 86400:
                shutil.rmtree(run, ignore_errors=True)
                removed += 1
            else:
                for entry in _entries(run):
                    if entry.name.endswith(".tmp") and _age(entry, now) > STALE_TEMPORARY_S:
                        entry.unlink(missing_ok=True)
                        removed += 1
        return removed


def read_info(path: str | Path) -> ShardInfo | None:
    """A shard's row count and stats from its footer; None when it is missing or unreadable (score it again)."""
    try:
        meta = json.loads(pl.read_parquet_metadata(path)[_METADATA_KEY])
        return ShardInfo(str(path), int(meta["rows"]), {k: float(v) for k, v in meta["stats"].items()})
    except (OSError, KeyError, ValueError, TypeError, pl.exceptions.PolarsError):
        return None


def read_shards(paths: Sequence[str | Path], part_rows: int = PART_ROWS) -> Iterator[pl.DataFrame]:
    """The rows of several shards, in parts of about `part_rows` rows (whole shards each), read as they are
    consumed: one catalog append (`Catalog.append` takes the parts in one transaction) holds one part in memory,
    not the rows of all its shards."""
    frames: list[pl.DataFrame] = []
    for path in paths:
        try:
            frames.append(pl.read_parquet(path))
        except (OSError, pl.exceptions.PolarsError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
            raise CatalogError(
                f"cannot read shard {path}: {reason}; resume the run to score that batch again"
            ) from None
        if sum(f.height for f in frames) >= part_rows:
            yield pl.concat(frames, how="diagonal_relaxed")
            frames = []
    if frames:
        yield pl.concat(frames, how="diagonal_relaxed")


def _write_atomically(rows: pl.DataFrame, path: Path, metadata: dict[str, str]) -> None:
    # Encoded in memory (one batch), written by Python: a full disk is then an OSError with its errno, where
    # polars writing to the file reports it as a malformed Parquet file.
    buffer = io.BytesIO()
    rows.write_parquet(buffer, metadata=metadata)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as file:
            file.write(buffer.getbuffer())
        os.replace(temporary, path)  # atomic: readers see the old shard or the new one, never half of one
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise _write_error(path, exc) from None


def _write_error(path: Path, exc: OSError) -> CatalogError:
    full = exc.errno == errno.ENOSPC
    reason = "the disk is full (no space left on device)" if full else (exc.strerror or str(exc))[:240]
    return CatalogError(f"cannot write shard {path}: {reason}; free space or fix the folder, then resume the run")


def _link(source: Path, target: Path) -> bool:
    """Give `source` the name `target` too (a hard link; a copy where links are not supported).

    False when `source` is gone. An existing `target` is kept: under one name, every writer writes the same rows.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:
        pass
    except FileNotFoundError:
        return False
    except OSError:  # no hard links on this file system (or across devices): copy, then rename into place
        temporary = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            shutil.copyfile(source, temporary)
            os.replace(temporary, target)
        except FileNotFoundError:
            temporary.unlink(missing_ok=True)
            return False
    return True


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _age(path: Path, now: float) -> float:
    try:
        return now - path.stat().st_mtime
    except OSError:
        return 0.0

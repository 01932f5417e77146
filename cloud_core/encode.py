"""Batch SCOPE encoding: structures, tables or files in, a polars table out, one row per input.

Rows keep the input order. A structure that cannot be read or analysed gets `scope = null` and an `error`
reason; the batch goes on. Large inputs stream through worker processes in chunks with a bounded number of
chunks in flight, so memory stays flat however many structures come in.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import math
import multiprocessing
import multiprocessing.pool
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing.pool import AsyncResult
from typing import Any

import numpy as np
import polars as pl

from cloud_core.forked import ChildDied, ChildTimedOut, call_forked
from cloud_core.scope import Variant, canonical_scope, detailed_scope, scope_string, sorted_elements
from cloud_core.structures import (
    DEFAULT_MAX_SITES,
    Crystal,
    RawInput,
    Record,
    StructureError,
    crystal_from_pymatgen,
    parse_raw,
    validate,
)
from cloud_core.symmetry import DEFAULT_ANGLE_TOLERANCE, DEFAULT_SYMPREC, DEFAULT_TIME_LIMIT, Backend, Symmetry

SCHEMA: dict[str, Any] = {
    "id": pl.String,
    "source": pl.String,
    "scope": pl.String,
    "spacegroup": pl.Int16,
    "formula": pl.String,
    "nsites": pl.Int32,
    "z_conventional": pl.Float32,  # formula units in the conventional standard cell
    "disordered": pl.Boolean,
    "symprec": pl.Float32,  # tolerance that succeeded (see symmetry.tolerance_ladder)
    "backend": pl.String,
    "variant": pl.String,
    "error": pl.String,
}
# With EncodeSettings.identify: what the catalog deduplicates candidates by (see `identity`).
IDENTITY_SCHEMA: dict[str, Any] = {
    "canonical_scope": pl.String,
    "structure_hash": pl.String,
    "candidate_id": pl.String,
}


@dataclass(frozen=True, slots=True)
class EncodeSettings:
    """Everything that decides a SCOPE string, in one place (and picklable for worker processes)."""

    variant: Variant = "canonical"
    backend: Backend | None = None  # None: spglib for official, moyopy otherwise
    symprec: float = DEFAULT_SYMPREC
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE
    max_sites: int = DEFAULT_MAX_SITES
    # Seconds the symmetry search of one cell of more than symmetry.TIME_LIMITED_MIN_SITES sites may take, and
    # (see hang_limit) what one structure may take in an encoder worker; None or 0: no limit.
    time_limit: float | None = DEFAULT_TIME_LIMIT
    identify: bool = False  # add IDENTITY_SCHEMA columns (canonical SCOPE, structure hash, candidate id)

    @property
    def schema(self) -> dict[str, Any]:
        return {**SCHEMA, **IDENTITY_SCHEMA} if self.identify else SCHEMA


VOLUME_BIN = math.log(1.02)  # structure hashes tell apart volumes per atom that differ by more than ~2 %


def identity(crystal: Crystal, symmetry: Symmetry, scope: str, variant: str) -> dict[str, str]:
    """Candidate identity: canonical SCOPE + a structure hash, so the same crystal gets the same id from any
    source, site order, origin or cell choice.

    The canonical SCOPE collides for polymorphs with the same Wyckoff set; the structure hash separates
    them by which element sits on which Wyckoff orbit (the detailed SCOPE) and by the volume per atom in
    ~2 % bins (high-pressure phases, different free coordinates). Two relaxations of one crystal that differ
    by less than that are one candidate, which is what a screen wants: the model cannot tell them apart.
    """
    canonical = scope if variant == "canonical" else canonical_scope(crystal, symmetry)
    detailed = scope if variant == "detailed" else detailed_scope(crystal, symmetry)
    atoms = sum(crystal.element_amounts().values())
    volume_bin = round(math.log(abs(float(np.linalg.det(crystal.lattice))) / atoms) / VOLUME_BIN)
    structure_hash = hashlib.sha256(f"{detailed}|{volume_bin}".encode()).hexdigest()[:16]
    candidate_id = hashlib.sha256(f"{canonical}|{structure_hash}".encode()).hexdigest()[:16]
    return {"canonical_scope": canonical, "structure_hash": structure_hash, "candidate_id": candidate_id}


def encode_record(record: Record, settings: EncodeSettings) -> dict[str, Any]:
    """One row of the output table for one record."""
    row: dict[str, Any] = {
        "id": record.id,
        "source": record.source,
        "scope": None,
        "spacegroup": None,
        "formula": None,
        "nsites": None,
        "z_conventional": None,
        "disordered": None,
        "symprec": None,
        "backend": None,
        "variant": settings.variant,
        "error": record.error,
    }
    if settings.identify:
        row.update(dict.fromkeys(IDENTITY_SCHEMA))
    crystal = record.crystal
    if crystal is None:
        return row
    amounts = crystal.element_amounts()
    formula, atoms_per_unit = reduced_formula(amounts)
    row.update(nsites=crystal.nsites, formula=formula, disordered=not crystal.is_ordered)
    try:
        scope, symmetry = scope_string(
            crystal,
            settings.variant,
            backend=settings.backend,
            symprec=settings.symprec,
            angle_tolerance=settings.angle_tolerance,
            time_limit=settings.time_limit,
        )
        if settings.identify:
            row.update(identity(crystal, symmetry, scope, settings.variant))
    except StructureError as exc:
        row["error"] = str(exc)
        return row
    except Exception as exc:  # a library failing on one structure must not end the batch
        row["error"] = f"{type(exc).__name__} in symmetry analysis: {' '.join(str(exc).split())[:300]}"
        return row
    atoms = sum(amounts.values())
    row.update(
        scope=scope,
        spacegroup=symmetry.number,
        symprec=symmetry.symprec,
        backend=symmetry.backend,
        z_conventional=round(atoms * symmetry.conventional_volume_ratio / atoms_per_unit, 4),
    )
    return row


def reduced_formula(amounts: dict[str, float]) -> tuple[str, float]:
    """Reduced formula in electronegativity order ('Al2O3') and its number of atoms per formula unit."""
    order = sorted_elements(amounts)
    counts = [amounts[el] for el in order]
    if all(abs(c - round(c)) < 1e-6 for c in counts):
        divisor = math.gcd(*(round(c) for c in counts)) or 1
        reduced = [round(c) // divisor for c in counts]
        text = "".join(f"{el}{n if n != 1 else ''}" for el, n in zip(order, reduced, strict=True))
        return text, float(sum(reduced))
    # Partial occupancies: amounts per cell as they are, trimmed.
    text = "".join(f"{el}{c:.4g}" for el, c in zip(order, counts, strict=True))
    return text, float(sum(counts))


def _rows_to_frame(rows: list[dict[str, Any]], settings: EncodeSettings) -> pl.DataFrame:
    schema = settings.schema
    return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)


def _encode_rows(raws: Sequence[RawInput], settings: EncodeSettings) -> list[dict[str, Any]]:
    return [encode_record(parse_raw(raw, settings.max_sites), settings) for raw in raws]


def encode_chunk(raws: Sequence[RawInput], settings: EncodeSettings) -> pl.DataFrame:
    """Parse, validate and encode a chunk of raw inputs (what one worker does at a time)."""
    return _rows_to_frame(_encode_rows(raws, settings), settings)


# --------------------------------------------------------------------------------------------------
# Python API


def encode_structures(
    structures: Iterable[Any], ids: Iterable[str] | None = None, settings: EncodeSettings | None = None
) -> pl.DataFrame:
    """Encode pymatgen Structures, Crystals or CIF strings; ids default to their position."""
    settings = settings or EncodeSettings()
    items = list(structures)
    names = [str(i) for i in ids] if ids is not None else [str(i) for i in range(len(items))]
    if len(names) != len(items):
        raise ValueError(f"{len(names)} ids for {len(items)} structures")
    rows = []
    for name, item in zip(names, items, strict=True):
        rows.append(encode_record(_record_from_object(name, item, settings.max_sites), settings))
    return _rows_to_frame(rows, settings)


def _record_from_object(name: str, item: Any, max_sites: int) -> Record:
    if isinstance(item, str):
        return parse_raw(RawInput(name, "python", "cif", item), max_sites)
    try:
        crystal = item if isinstance(item, Crystal) else crystal_from_pymatgen(item)
        return Record(name, "python", crystal=validate(crystal, max_sites))
    except StructureError as exc:
        return Record(name, "python", error=str(exc))
    except Exception as exc:
        return Record(name, "python", error=f"not a structure ({type(item).__name__}): {exc}")


def encode_table(table: Any, settings: EncodeSettings | None = None, workers: int = 1) -> pl.DataFrame:
    """Encode a polars DataFrame or Arrow table with a `cif` column (ids from material_id/id, else row)."""
    frame = table if isinstance(table, pl.DataFrame) else pl.from_arrow(table)
    if "cif" not in frame.columns:
        raise ValueError(f"table has no 'cif' column (columns: {', '.join(frame.columns)})")
    id_column = next((c for c in ("material_id", "id") if c in frame.columns), None)
    ids = frame[id_column].cast(pl.String).to_list() if id_column else [str(i) for i in range(frame.height)]
    raws = [
        RawInput(i, "table", "cif", c) if c is not None else RawInput(i, "table", "cif", error="empty cif cell")
        for i, c in zip(ids, frame["cif"].to_list(), strict=True)
    ]
    frames = list(encode_stream(raws, settings or EncodeSettings(), workers=workers))
    return pl.concat(frames) if frames else _rows_to_frame([], settings or EncodeSettings())


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _chunks(items: Iterable[RawInput], size: int) -> Iterator[list[RawInput]]:
    chunk: list[RawInput] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@contextlib.contextmanager
def encoder_pool(workers: int) -> Iterator[EncoderPool]:
    """A pool of `workers` encoder processes, started now (for `encode_stream(..., pool=)`).

    Starting the pool before a large library is imported (torch, in `predict`) keeps the workers small and
    lets them encode while the parent imports and loads the model. Leaving the block early (an error, an
    abandoned stream) terminates the workers; a stream that ran to the end has let them exit on their own."""
    with EncoderPool(workers) as pool:
        yield pool


def shared_encoder_pool(workers: int) -> EncoderPool:
    """A pool of `workers` encoder processes kept for the rest of this process's life (started on first use;
    a forked child starts its own), for a process that encodes batch after batch: the screen flow's batch tasks,
    which may share it from several threads (a pool's methods are thread-safe).

    Why not a pool per batch (`encoder_pool`): a fork shares the parent's pages copy-on-write, so while the
    children live the parent copies every page it writes. A flow process holding torch and the model runs
    inference while a fresh pool encodes the next batch: forking per batch cost it ~77,000 page faults a second
    (a 100,000-candidate screen on 2 cores: 36 s of system time, 21 s with this pool; the flow 7 % faster).
    Workers forked once pay that once, and keep their symmetry search cache."""
    with _SHARED_POOLS_LOCK:
        owner, pool = _SHARED_POOLS.get(workers, (None, None))
        if owner != os.getpid():
            pool = EncoderPool(workers)
            _SHARED_POOLS[workers] = (os.getpid(), pool)
        return pool


def _end_shared_pools() -> None:
    """At exit, before the interpreter tears its modules down (a pool left running then fails noisily in
    its __del__): terminate this process's shared pools."""
    for owner, pool in _SHARED_POOLS.values():
        if owner == os.getpid():
            pool.terminate()


class EncoderPool(multiprocessing.pool.Pool):
    """multiprocessing's Pool of encoder processes, which also tells when a chunk's worker died or hangs.

    A Pool replaces a worker that died (a crash in native code, the out-of-memory killer), but the chunk that
    worker was encoding is lost: its result never comes, and a plain `get()` waits for ever; a structure on
    which a library loops for ever holds its chunk the same way. So each worker notes on a board in shared
    memory which chunk (ticket) it is encoding, its pid, and which structure of the chunk it has been on since
    when; a consumer whose result is late asks `died` and `stop_if_stuck` (see `_worker_result`)."""

    def __init__(self, workers: int):
        # fork: workers inherit the imported libraries instead of importing them again (Linux default).
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        self._board = context.RawArray("q", SLOT * BOARD_SLOTS)
        self._tickets = itertools.count(1)  # next() on a count is atomic under the GIL: threads may share a pool
        with _worker_signals_blocked():  # workers start with them blocked; _init_worker sets and unblocks them
            super().__init__(max(1, workers), initializer=_init_worker, initargs=(self._board,), context=context)

    def submit(self, chunk: list[RawInput], settings: EncodeSettings) -> tuple[int, AsyncResult]:
        """Send `chunk` to the workers: its ticket, and its result to come."""
        ticket = next(self._tickets)
        return ticket, self.apply_async(_encode_on_board, (ticket, chunk, settings))

    def died(self, ticket: int) -> bool:
        """Whether the chunk of `ticket` was started by a worker that has since died (its result will not come).

        A wrong yes would only have the chunk encoded twice; and the worker writes its pid before the ticket,
        so a pid read after a matching ticket is the one that started it."""
        slot = _slot(ticket)
        return self._board[slot] == ticket and _process_gone(self._board[slot + 1])

    def stop_if_stuck(self, ticket: int, limit: float) -> int | None:
        """If the worker on the chunk of `ticket` has been on one structure for more than `limit` seconds: kill
        it (the pool replaces it) and return the structure's position in the chunk."""
        slot, board = _slot(ticket), self._board
        if board[slot] != ticket:
            return None
        position = board[slot + 2]  # read before its start time, which the worker writes first
        if position < 0 or time.monotonic_ns() - board[slot + 3] < limit * 1e9:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(board[slot + 1], signal.SIGKILL)
        return position


_SHARED_POOLS: dict[int, tuple[int, EncoderPool]] = {}  # workers -> (the process that started it, the pool)
_SHARED_POOLS_LOCK = threading.Lock()
atexit.register(_end_shared_pools)

# A board slot: ticket, pid, position in the chunk of the structure being encoded (-1: none), and since when
# (time.monotonic_ns, the same clock in every process). The chunks in flight at once are a few per worker and
# stream, far fewer than the slots: a slot is not reused while its chunk may still be running.
SLOT, BOARD_SLOTS = 4, 1 << 16
CHECK_S = 1.0  # how often a consumer waiting on a chunk checks on the worker encoding it
HANG_SLACK_S = 10.0  # see hang_limit
_board: Any = None  # in a worker: its pool's board (set by _init_worker)


def _slot(ticket: int) -> int:
    """Where the board slot of `ticket` starts."""
    return SLOT * (ticket % BOARD_SLOTS)


def hang_limit(settings: EncodeSettings) -> float | None:
    """Seconds one structure may take in an encoder worker before the worker is stopped and the structure is
    an error row: twice the symmetry search's time limit (which holds only large cells) plus HANG_SLACK_S.
    Structures take milliseconds, the largest allowed about 2 s; this is a guard against a library looping
    for ever. None (no limit) when the time limit is off."""
    return 2 * settings.time_limit + HANG_SLACK_S if settings.time_limit else None


def _encode_on_board(ticket: int, chunk: list[RawInput], settings: EncodeSettings) -> pl.DataFrame:
    """In a worker: encode, noting on the board the chunk's ticket, this pid, and each structure as it starts."""
    board, slot = _board, _slot(ticket)
    board[slot + 1], board[slot + 2] = os.getpid(), -1
    board[slot] = ticket
    rows = []
    for position, raw in enumerate(chunk):
        board[slot + 3] = time.monotonic_ns()
        board[slot + 2] = position
        rows.append(encode_record(parse_raw(raw, settings.max_sites), settings))
    board[slot + 2] = -1
    return _rows_to_frame(rows, settings)


def _process_gone(pid: int) -> bool:
    """Whether process `pid` has ended (reaped, or a zombie until the pool reaps it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except FileNotFoundError:
        return True
    except OSError:  # no /proc: a zombie counts as alive until the pool reaps it, a moment later
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def encode_isolated(chunk: Sequence[RawInput], settings: EncodeSettings, stuck: int | None = None) -> pl.DataFrame:
    """Encode `chunk` in forked children, for a chunk whose pool worker died or was stopped on the structure at
    position `stuck` (which becomes an error row without a second try).

    A child that dies, or runs past `hang_limit`, has its part halved and tried again, down to single
    structures: a structure that kills its process again, or hangs again, is an error row, the others are
    encoded. The rows come back as plain Python and the frame is built here: a forked child should not use
    polars, whose thread pool the fork did not copy."""
    chunk = list(chunk)
    if stuck is None:
        return _rows_to_frame(_rows_isolated(chunk, settings), settings)
    rows = _rows_isolated(chunk[:stuck], settings)
    rows.append(_error_row(chunk[stuck], _hang_reason(settings), settings))
    return _rows_to_frame(rows + _rows_isolated(chunk[stuck + 1 :], settings), settings)


def _rows_isolated(chunk: list[RawInput], settings: EncodeSettings) -> list[dict[str, Any]]:
    if not chunk:
        return []
    if not hasattr(os, "fork"):
        raise RuntimeError("an encoder worker died or hung on a chunk (without fork, it can't be encoded again)")
    try:
        return call_forked(_encode_rows, chunk, settings, time_limit=hang_limit(settings))
    except (ChildDied, ChildTimedOut) as failed:
        if len(chunk) > 1:
            half = len(chunk) // 2
            return _rows_isolated(chunk[:half], settings) + _rows_isolated(chunk[half:], settings)
        if isinstance(failed, ChildTimedOut):
            return [_error_row(chunk[0], _hang_reason(settings), settings)]
        reason = f"the encoder process died ({failed.how}) on this structure: in a pool worker, then alone"
        return [_error_row(chunk[0], reason, settings)]


def _hang_reason(settings: EncodeSettings) -> str:
    return (
        f"encoding this structure did not finish within {hang_limit(settings):g} s (twice --time-limit plus "
        f"{HANG_SLACK_S:g} s); it was stopped"
    )


def _error_row(raw: RawInput, reason: str, settings: EncodeSettings) -> dict[str, Any]:
    return encode_record(Record(raw.id, raw.source, error=reason), settings)


def encode_stream(
    raws: Iterable[RawInput],
    settings: EncodeSettings,
    workers: int = 1,
    chunk_size: int = 256,
    on_chunk: Callable[[int], None] | None = None,
    pool: EncoderPool | None = None,
    help_while_waiting: Callable[[], bool] | None = None,
) -> Iterator[pl.DataFrame]:
    """Encode a stream of raw inputs, yielding one frame per chunk in input order.

    With `pool` (see `encoder_pool`), or with workers > 1 (a pool of its own), the chunks go to worker
    processes. Before a frame is handed over, the workers are topped up to 2 x workers unfinished chunks, so
    they go on encoding however long the consumer takes with it; and at most 4 x workers chunks are read
    ahead of the consumer (bounded memory for any input size). Otherwise this process encodes them one by one.

    `help_while_waiting`: when the next frame is not ready and this returns True, this process encodes the
    next chunk itself instead of waiting (at most 4 x workers chunks pending in all), so a consumer that is
    faster than the workers (`predict`'s model) lends its core to encoding rather than idling.
    """
    chunks = _chunks(raws, chunk_size)
    if pool is None and workers <= 1:
        for chunk in chunks:
            frame = encode_chunk(chunk, settings)
            if on_chunk:
                on_chunk(len(chunk))
            yield frame
        return
    own_pool = pool is None
    with contextlib.ExitStack() as stack:
        if own_pool:
            pool = stack.enter_context(encoder_pool(workers))
        pending: deque = deque()  # (chunk, ticket, AsyncResult or a frame encoded here), in input order
        most, in_pool = 4 * max(1, workers), 2 * max(1, workers)
        next_chunk = partial(next, chunks, None)
        chunk = next_chunk()
        any_lost = False
        while pending or chunk is not None:
            # Top the workers up before handing a frame over: the consumer may take a while with it.
            while chunk is not None and len(pending) < most and _unfinished(pending) < in_pool:
                pending.append((chunk, *pool.submit(chunk, settings)))
                chunk = next_chunk()
            _, _, result = pending[0]
            waiting = isinstance(result, AsyncResult) and not result.ready()
            if waiting and chunk is not None and len(pending) < most and help_while_waiting and help_while_waiting():
                pending.append((chunk, 0, encode_chunk(chunk, settings)))
                chunk = next_chunk()
                continue
            done, ticket, result = pending.popleft()
            if isinstance(result, AsyncResult):
                frame, lost = _worker_result(pool, ticket, result, done, settings)
                any_lost |= lost
            else:
                frame = result
            if on_chunk:
                on_chunk(len(done))
            yield frame
        if own_pool and not any_lost:  # done: the workers exit on their own, no signal needed
            pool.close()  # (with a chunk lost, join would wait for its result: leaving the block terminates)
            pool.join()


def _worker_result(
    pool: EncoderPool, ticket: int, result: AsyncResult, chunk: list[RawInput], settings: EncodeSettings
) -> tuple[pl.DataFrame, bool]:
    """(the frame a worker encoded, False); or, when the worker died or hung on a structure past `hang_limit`
    (it is then stopped), (the chunk encoded again in forked children, True)."""
    limit = hang_limit(settings)
    while not result.ready():
        result.wait(CHECK_S)
        if result.ready():
            break
        if pool.died(ticket):
            return encode_isolated(chunk, settings), True
        if limit and (stuck := pool.stop_if_stuck(ticket, limit)) is not None:
            return encode_isolated(chunk, settings, stuck), True
    return result.get(), False


def _unfinished(pending: deque) -> int:
    """Chunks of `pending` that the workers have not finished yet."""
    return sum(1 for _, _, result in pending if isinstance(result, AsyncResult) and not result.ready())


_WORKER_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def _worker_signals_blocked() -> Iterator[None]:
    """Block SIGTERM and SIGINT in this thread while the pool forks its workers, which inherit the mask.

    So no signal reaches a worker before `_init_worker` has replaced the handlers it inherited. (The pool's own
    threads, started here, keep the mask; the process's signals go to its other threads, as before.)"""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _WORKER_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _init_worker(board: Any) -> None:
    """Encoder worker start-up: keep the pool's board; SIGTERM back to its default (end at once), SIGINT ignored.

    A forked worker inherits the parent's Python signal handlers. A host process that turns SIGTERM into an
    exception (a workflow engine's graceful-shutdown handler) would make every worker print a traceback, or
    catch the signal at a bad moment, when the pool terminates it; and Ctrl-C would interrupt every worker
    as well as the parent. Here the parent alone handles Ctrl-C and ends the pool."""
    global _board
    _board = board
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_SIGNALS)

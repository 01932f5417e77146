"""The `screen` flow: candidates -> SCOPE -> CLOUD predictions -> DuckDB catalog -> ranking, report, artifacts.

Work moves in batches of thousands of candidates, never one task per structure. `score_batch` (encode in a
process pool, then infer with a model loaded once per worker process) runs where the `runner` parameter says:
threads of this process, or the workers of a Dask cluster (flows/runners.py). It writes its rows as a Parquet
shard beside the catalog and returns only the shard's path and counts (catalogs/shards.py). A shard is named by
the batch's content, the encoder's fingerprint and the model's weights hash, and kept as a cache for
`shard_cache_days`, so a rerun of the same candidates, or a resumed run, skips straight to the catalog.

A bounded number of batches is in flight (2 locally, so the next batch encodes on the CPU while this one is
predicted; 2 per Dask worker thread), which bounds memory for any source. Only the flow writes to the catalog:
it collects shards and appends them in large transactions (APPEND_ROWS), each short enough that `cloud-screen
query` can read between them. Appends are idempotent per (run, candidate), so a batch scored twice (a retry, a
Dask worker lost mid-batch), a shard ingested twice, or a resumed flow run (same run id) neither duplicates nor
loses rows.
"""

from __future__ import annotations

import ctypes
import hashlib
import multiprocessing
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import polars as pl
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field, model_validator

from catalogs.catalog import Catalog, CatalogError
from catalogs.ranking import RankingSpec, rank_run
from catalogs.shards import SHARD_FORMAT, ShardInfo, ShardStore, read_shards
from cloud_core.structures import RawInput
from flows.parameters import document_parameters
from flows.provenance import code_version, machine
from flows.runners import RunnerSpec, check_scheduler, open_runner
from flows.sources import SourceSpec, iter_batches, shortfall

# Rows per catalog append: one DuckDB row group. A transaction of at least one row group is written straight to
# the database file instead of through the write-ahead log (and again at the checkpoint): appends reach ~200 k
# rows/s with two row groups, 110 k rows/s with 100 k rows, far less with one task batch of 2,048 (bench/README.md,
# catalog appends). The shards are read into the transaction ~16,000 rows at a time (catalogs.shards.read_shards),
# but DuckDB holds the row group it is filling until it is full, so one row group, not two: over 10 million rows
# the writer's peak stays at 1.1 GB (bench/README.md, `bench/bench_writer.py`).
APPEND_ROWS = 122_880
SHARD_CACHE_DAYS = 30.0  # what Prefect's task cache kept scored batches for before shards replaced it

TABLE_ARTIFACT_COLUMNS = (
    "rank",
    "formula",
    "spacegroup",
    "score",
    "pareto",
    "formation_energy_per_atom",
    "band_gap",
    "debye_temperature",
    "cv_300K",
    "candidate_id",
)


class TemperatureGrid(BaseModel):
    """The temperatures of the stored Debye curves (Cv, U, S, F per atom): an even grid from start to stop."""

    model_config = ConfigDict(extra="forbid")

    start: float = Field(10.0, gt=0, le=3000, description="First temperature, K.")
    stop: float = Field(1000.0, gt=0, le=3000, description="Last temperature, K.")
    points: int = Field(100, ge=2, le=1000, description="Number of temperatures.")

    @model_validator(mode="after")
    def _ordered(self) -> TemperatureGrid:
        if self.stop <= self.start:
            raise ValueError(f"stop ({self.stop}) must be above start ({self.start})")
        return self

    def values(self) -> list[float]:
        return [float(t) for t in np.linspace(self.start, self.stop, self.points)]


class CandidateBatch(BaseModel):
    """One unit of work: raw candidates and a key that names their content (for the task cache)."""

    index: int
    raws: list[dict[str, Any]]
    key: str

    @classmethod
    def of(cls, index: int, raws: list[RawInput]) -> CandidateBatch:
        digest = hashlib.sha256()
        for raw in raws:
            digest.update(f"{raw.id}\x1f{raw.source}\x1f{raw.fmt}\x1f{raw.error}\x1f{raw.text}\x1e".encode())
        rows = [{"id": r.id, "source": r.source, "fmt": r.fmt, "text": r.text, "error": r.error} for r in raws]
        return cls(index=index, raws=rows, key=digest.hexdigest()[:24])

    def raw_inputs(self) -> list[RawInput]:
        return [RawInput(**r) for r in self.raws]


# ------------------------------------------------------------------------------------------------ tasks

_bundles: dict[tuple[str, str], Any] = {}
_bundles_lock = threading.Lock()


def load_model(model: str, device: str):
    """The model bundle, loaded once per worker process and device."""
    from cloud_core.bundle import load_bundle
    from cloud_core.device import pick_device

    torch_device = pick_device(device)
    with _bundles_lock:
        if (model, str(torch_device)) not in _bundles:
            _bundles[(model, str(torch_device))] = load_bundle(model, torch_device)
        return _bundles[(model, str(torch_device))], torch_device


def model_fingerprint(model: str) -> dict[str, Any]:
    """Model id, weights hash and card without loading the weights (for caching and provenance)."""
    import json

    from cloud_core.bundle import resolve

    card = json.loads((resolve(model) / "card.json").read_text())
    return {"id": card.get("name", model), "hash": card["weights_sha256"], "card": card}


def shard_key(batch_key: str, model: str) -> str:
    """What decides a batch's scored rows: its content, the encoder's code and tables, the model's weights."""
    from cloud_core.datasets import encoder_fingerprint

    model_hash = model_fingerprint(model)["hash"]
    return f"{batch_key}-{encoder_fingerprint()}-{model_hash[:16]}-v{SHARD_FORMAT}"


@task(
    name="score-batch",
    task_run_name="score-batch-{batch.index}",
    cache_policy=NO_CACHE,  # the shard is the cache: on the shared file system, for every worker (see module doc)
    retries=2,
    retry_delay_seconds=2,
)
def score_batch(
    batch: CandidateBatch,
    run_id: str,
    shards: str,
    model: str,
    device: str,
    inference_batch: int | None,
    encode_workers: int,
    cache: bool,
) -> ShardInfo:
    """Score a batch into a Parquet shard of the run, or find it scored already; returns the shard's summary."""
    store = ShardStore(shards)
    key = shard_key(batch.key, model)
    path = store.shard_path(run_id, batch.index, key)
    found = store.reuse(path, key, cache)
    if found is not None:
        return found
    rows, stats = _score(batch, model, device, inference_batch, encode_workers)
    return store.publish(rows, path, key, stats, cache)


def _score(
    batch: CandidateBatch, model: str, device: str, inference_batch: int | None, encode_workers: int
) -> tuple[pl.DataFrame, dict[str, float]]:
    """Encode a batch (process pool) and predict it (one model per worker process): one row per candidate."""
    from cloud_core.encode import EncodeSettings, encode_stream, shared_encoder_pool
    from cloud_core.pipeline import predict_frame

    bundle, torch_device = load_model(model, device)
    variant = bundle.card.get("settings", {}).get("variant", "detailed")
    raws = batch.raw_inputs()
    settings = EncodeSettings(variant=variant, identify=True)
    started = time.perf_counter()
    workers = _encoder_processes(encode_workers)
    pool = shared_encoder_pool(workers) if workers > 1 else None  # forked once per process, not per batch
    encoded = pl.concat(list(encode_stream(raws, settings, workers=workers, chunk_size=256, pool=pool)))
    encoded_at = time.perf_counter()
    predicted = predict_frame(bundle, encoded, torch_device, inference_batch)
    rows = predicted.with_columns(
        pl.Series("structure", [r.text for r in raws], dtype=pl.String),
        pl.Series("structure_format", [r.fmt if r.text is not None else None for r in raws], dtype=pl.String),
    )
    failed = int((rows["candidate_id"].is_null() | rows["error"].is_not_null()).sum())
    stats = {"failed": failed, "encode_s": encoded_at - started, "infer_s": time.perf_counter() - encoded_at}
    return rows, stats


def _encoder_processes(requested: int) -> int:
    """Encoder processes for a batch on the machine that scores it (0: all its cores).

    A daemon process may not start processes: a Dask worker under a nanny is one unless its cluster says
    otherwise (flows/runners.py does for its LocalCluster; docs/cluster.md for workers started by hand).
    """
    from cloud_core.encode import default_workers

    workers = requested or default_workers()
    if workers > 1 and multiprocessing.current_process().daemon:
        get_run_logger().warning(
            "this worker is a daemon process, which cannot start encoder processes: encoding in-process "
            "(start Dask workers with DASK_DISTRIBUTED__WORKER__DAEMON=False to encode with %d)",
            workers,
        )
        return 1
    return workers


@task(name="ingest-shards", task_run_name="ingest-shards-{index}", retries=3, retry_delay_seconds=2)
def ingest_shards(
    catalog: str, run_id: str, paths: list[str], index: int, lock_timeout: float = 30.0
) -> dict[str, float]:
    """Append the rows of several shards in one transaction (idempotent per run and candidate); counts, lock wait."""
    store = Catalog(catalog, lock_timeout=lock_timeout)
    counts = store.append(run_id, read_shards(paths))
    return {
        "candidates_new": counts.candidates_new,
        "predictions_new": counts.predictions_new,
        "failures_new": counts.failures_new,
        "lock_wait_s": store.lock_wait_s,
        "lock_wait_max_s": store.lock_wait_max_s,
    }


class _CatalogWriter:
    """A run's one catalog writer: collects the shards the workers wrote, appends them `append_rows` at a time.

    Only shard summaries wait here (a path and a few numbers each), so memory holds one append's rows at most.
    """

    def __init__(self, catalog: str, run_id: str, append_rows: int, lock_timeout: float) -> None:
        self.catalog, self.run_id, self.append_rows, self.lock_timeout = catalog, run_id, append_rows, lock_timeout
        self.waiting: list[ShardInfo] = []
        self.waiting_rows = 0
        self.counts = {"candidates_new": 0, "predictions_new": 0, "batches_written": 0, "appends": 0}
        self.timings = {"write_s": 0.0, "lock_wait_s": 0.0, "lock_wait_max_s": 0.0}

    def add(self, shard: ShardInfo) -> None:
        self.waiting.append(shard)
        self.waiting_rows += shard.rows
        if self.waiting_rows >= self.append_rows:
            self.flush()

    def flush(self) -> None:
        """Append every waiting shard now (the end of the run, or enough rows)."""
        if not self.waiting:
            return
        started = time.perf_counter()
        paths = [s.path for s in self.waiting]
        written = ingest_shards(self.catalog, self.run_id, paths, self.counts["appends"], self.lock_timeout)
        self.timings["write_s"] += time.perf_counter() - started
        self.timings["lock_wait_s"] += written["lock_wait_s"]
        self.timings["lock_wait_max_s"] = max(self.timings["lock_wait_max_s"], written["lock_wait_max_s"])
        self.counts["candidates_new"] += written["candidates_new"]
        self.counts["predictions_new"] += written["predictions_new"]
        self.counts["batches_written"] += len(paths)
        self.counts["appends"] += 1
        self.waiting, self.waiting_rows = [], 0
        release_free_memory()


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the operating system (glibc's malloc_trim; elsewhere nothing).

    An append, the Debye curves of new θ_D keys and every batch's inference allocate and free hundreds of MB in
    blocks of a few MB; glibc then raises its mmap threshold and serves such blocks from the heap, which it
    seldom shrinks, so the flow's resident memory crept up append after append (bench/README.md, the writer at
    10 M rows). Trimming after each append keeps it level, for a few milliseconds per 122,880 rows."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


# ------------------------------------------------------------------------------------------------ progress

ProgressListener = Callable[[int, int | None], None]
_listeners: list[ProgressListener] = []
_listeners_lock = threading.Lock()


@contextmanager
def screen_progress(listener: ProgressListener) -> Iterator[None]:
    """Call `listener(done, total)` as screen flow runs in this process get batches scored (total None: unknown).

    For a terminal progress bar around an in-process run (`cloud-screen screen`); the flow's progress artifact
    is updated at the same moments, from the same counts. A batch counts once its shard is written and handed
    to the catalog writer, which appends shards in large transactions; the last call (done == total) comes
    after the last append.
    """
    with _listeners_lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _listeners_lock:
            _listeners.remove(listener)


class _Progress:
    """A flow run's progress: candidates scored so far of the expected total, to the artifact and the listeners."""

    def __init__(self, catalog: str, expected: int | None) -> None:
        self.expected = expected
        self.artifact = create_progress_artifact(0.0, key="screen-progress", description=f"Screening into {catalog}")
        self._notify(0, expected)

    def update(self, done: int) -> None:
        if self.expected:
            update_progress_artifact(self.artifact, min(100.0, 100.0 * done / self.expected))
        self._notify(done, self.expected)

    def finish(self, done: int) -> None:
        update_progress_artifact(self.artifact, 100.0)
        self._notify(done, done)  # the total is known now (a demo source may generate fewer than asked)

    @staticmethod
    def _notify(done: int, total: int | None) -> None:
        with _listeners_lock:
            listeners = list(_listeners)
        for listener in listeners:
            listener(done, total)


# ------------------------------------------------------------------------------------------------ flow


class ScreenResult(BaseModel):
    run_id: str
    catalog: str
    counts: dict[str, int]
    timings: dict[str, float]
    report: str | None
    top: list[dict[str, Any]]


def _end_run(status: str) -> Callable[..., None]:
    """A flow-state hook: a run this process was running ends as `status` (failed, interrupted) with the reason."""

    def hook(flow, run, state) -> None:
        parameters = run.parameters or {}
        store = Catalog(parameters.get("catalog", "catalog.duckdb"), lock_timeout=parameters.get("catalog_wait", 600))
        run_id = parameters.get("resume") or str(run.id)
        if not store.runs_here(run_id):  # it never started, already finished, or another process runs it
            return
        reason = " ".join(str(state.message or state.name).split()).removeprefix("Flow run encountered an exception: ")
        resume = f"; resume it with `cloud-screen screen --catalog {store.path} --resume {run_id}`"
        try:
            store.finish_run(run_id, status, message=f"{status}: {reason[:800]}{resume}")
        except Exception as exc:  # a full disk: the row stays `running` and a later run marks it interrupted
            get_run_logger().warning("could not record run %s as %s: %s", run_id, status, exc)

    return hook


@flow(  # no task_runner here: batches go to the runner the `runner` parameter picks (flows/runners.py)
    name="screen",
    log_prints=True,
    on_failure=[_end_run("failed")],
    on_crashed=[_end_run("interrupted")],
    on_cancellation=[_end_run("interrupted")],
)
@document_parameters
def screen(
    catalog: Annotated[str, Field(description="The DuckDB catalog file (created if missing).")] = "catalog.duckdb",
    source: Annotated[SourceSpec, Field(description="Where the candidates come from.")] = SourceSpec(),  # noqa: B008
    ranking: Annotated[RankingSpec, Field(description="Filters, objectives, Pareto front, top-k.")] = RankingSpec(),  # noqa: B008
    top_k: Annotated[int | None, Field(ge=1, description="Overrides the ranking's top_k when set.")] = None,
    model: Annotated[str, Field(description="Model bundle: a shipped name or a folder.")] = "default",
    device: Annotated[Literal["auto", "cpu", "cuda"], Field(description="auto uses CUDA when present.")] = "auto",
    batch_size: Annotated[int, Field(ge=16, le=1_000_000, description="Candidates per task.")] = 2048,
    inference_batch: Annotated[
        int | None,
        Field(ge=1, le=65536, description="SCOPE strings per model call at most; unset: 2,048 on CPU, 16,384 on CUDA."),
    ] = None,
    encode_workers: Annotated[
        int, Field(ge=0, le=256, description="Encoder processes per batch; 0 = all cores of the machine scoring it.")
    ] = 0,
    temperatures: Annotated[TemperatureGrid, Field(description="Debye curve grid.")] = TemperatureGrid(),  # noqa: B008
    report: Annotated[bool, Field(description="Write an HTML report next to the catalog.")] = True,
    resume: Annotated[
        str | None,
        Field(description="Run id of an interrupted or failed run to finish (same source and model)."),
    ] = None,
    catalog_wait: Annotated[
        float, Field(ge=0, le=86400, description="Seconds to wait for the catalog while other runs write to it.")
    ] = 600.0,
    runner: Annotated[
        RunnerSpec, Field(description="Where batches are scored: threads of this process, or a Dask cluster.")
    ] = RunnerSpec(),  # noqa: B008
    append_rows: Annotated[
        int,
        Field(
            ge=1,
            le=10_000_000,
            description="Rows per catalog append (large appends are fastest; small ones show results sooner).",
        ),
    ] = APPEND_ROWS,
    shard_cache_days: Annotated[
        float,
        Field(
            ge=0,
            le=3650,
            description="Days a scored batch is kept beside the catalog after its last use, so "
            "a rerun of the same candidates skips scoring (0: keep none).",
        ),
    ] = SHARD_CACHE_DAYS,
) -> ScreenResult:
    """Screen candidates with the CLOUD model into a DuckDB catalog and rank them."""
    logger = get_run_logger()
    started = time.perf_counter()
    if top_k is not None:
        ranking = RankingSpec.parse({**ranking.model_dump(), "top_k": top_k})
    fingerprint = model_fingerprint(model)
    store = Catalog(catalog, lock_timeout=catalog_wait)
    if resume:
        check_resumable(store, resume, source, fingerprint["hash"])
    if runner.address:
        check_scheduler(runner.address)  # one line now, before the run is recorded
    run_id = store.start_run(
        flow="screen",
        run_id=resume or (str(flow_run.id) if flow_run.id else None),
        source=source.label(),
        parameters={
            "source": source.model_dump(),
            "ranking": ranking.model_dump(),
            "model": model,
            "device": device,
            "batch_size": batch_size,
            "temperatures": temperatures.model_dump(),
            "runner": runner.model_dump(),
        },
        model={"id": fingerprint["id"], "hash": fingerprint["hash"], "card": _card_summary(fingerprint["card"])},
        code_version=code_version(),
        host=machine()["host"],
        device=machine(device)["device"],
        temperatures=temperatures.values(),
    )
    logger.info("run %s -> %s (batches on %s)", run_id, catalog, runner.label())
    shards = ShardStore.beside(catalog)
    shards.start_run(run_id)
    expected = source.count if source.kind == "demo" else None
    progress = _Progress(catalog, expected)
    writer = _CatalogWriter(catalog, run_id, append_rows, catalog_wait)
    counts = {"candidates": 0, "predicted": 0, "failed": 0, "batches": 0, "batches_reused": 0}
    timings = {"encode_s": 0.0, "infer_s": 0.0}

    def take(shard: ShardInfo) -> None:
        """A batch's shard is ready: count it and hand it to the writer."""
        counts["batches"] += 1
        counts["batches_reused"] += shard.reused
        counts["candidates"] += shard.rows
        counts["failed"] += int(shard.stats.get("failed", 0))
        counts["predicted"] += shard.rows - int(shard.stats.get("failed", 0))
        timings["encode_s"] += shard.stats.get("encode_s", 0.0)  # a reused shard carries its first timings
        timings["infer_s"] += shard.stats.get("infer_s", 0.0)
        writer.add(shard)
        progress.update(counts["candidates"])
        logger.info("%d candidates scored, %d stored", counts["candidates"], writer.counts["predictions_new"])

    options = {"run_id": run_id, "shards": str(shards.folder), "model": model, "device": device}
    options |= {"inference_batch": inference_batch, "encode_workers": encode_workers, "cache": shard_cache_days > 0}
    with open_runner(runner) as (task_runner, in_flight):
        pending: deque = deque()
        for index, raws in enumerate(iter_batches(source, batch_size)):
            pending.append(task_runner.submit(score_batch, {"batch": CandidateBatch.of(index, raws), **options}))
            if len(pending) >= in_flight:  # wait for the oldest: bounded memory, whatever the source's size
                take(pending.popleft().result())
        while pending:
            take(pending.popleft().result())
    if note := shortfall(source, counts["candidates"]):
        logger.warning(note)
    writer.flush()
    counts |= writer.counts
    timings |= writer.timings
    progress.finish(counts["candidates"])

    t = time.perf_counter()
    ranked = rank_run(store, run_id, ranking)
    timings["rank_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    timings["lock_wait_s"] += store.lock_wait_s  # start and ranking; the batches' waits are in already
    timings["lock_wait_max_s"] = max(timings["lock_wait_max_s"], store.lock_wait_max_s)
    store.finish_run(run_id, "completed", counts=counts, timings=timings)
    shards.remove_run(run_id)  # stored now; the cache keeps its own name for each shard
    shards.sweep(shard_cache_days)

    report_path = None
    if report:
        from catalogs.export import write_run_report

        report_path = str(write_run_report(store, report_path_for(catalog, run_id), run_id))
    top = _artifact_rows(ranked, ranking.top_k)
    create_table_artifact(top, key="screen-top", description=f"Top {len(top)} candidates of run {run_id}")
    create_markdown_artifact(
        _summary_markdown(run_id, catalog, source, counts, timings, report_path, ranked, ranking),
        key="screen-summary",
        description="Screen summary",
    )
    return ScreenResult(run_id=run_id, catalog=catalog, counts=counts, timings=timings, report=report_path, top=top)


def check_resumable(store: Catalog, run_id: str, source: SourceSpec, model_hash: str) -> None:
    """Refuse to resume a run that is not in the catalog, has completed, or screened other candidates or a model."""
    import json

    run = store.run(run_id) if store.path.exists() else None
    if run is None or run["run_id"] != run_id:
        raise CatalogError(f"no run {run_id!r} in {store.path} to resume")
    if run["status"] == "completed":
        raise CatalogError(f"run {run_id} has completed; there is nothing to resume")
    stored = (run.get("parameters") or {}).get("source")
    if stored != json.loads(json.dumps(source.model_dump(), default=str)) or run["model_hash"] != model_hash:
        raise CatalogError(
            f"run {run_id} screened {run['source']} with model {run['model_id']}; resume it with the same source "
            "and model (`cloud-screen screen --resume RUN_ID` takes them from the catalog)"
        )


def report_path_for(catalog: str, run_id: str) -> Path:
    from catalogs.export import safe_file_name

    path = Path(catalog)
    return path.parent / f"{path.stem}_reports" / f"{safe_file_name(run_id)}.html"  # no run id leaves the folder


def _card_summary(card: dict[str, Any]) -> dict[str, Any]:
    keep = ("name", "created", "code_version", "training_command", "data", "metrics", "vocabulary_hash", "settings")
    return {k: card[k] for k in keep if k in card}


def _artifact_rows(ranked: pl.DataFrame, top_k: int) -> list[dict[str, Any]]:
    columns = [c for c in TABLE_ARTIFACT_COLUMNS if c in ranked.columns]
    rows = ranked.filter(pl.col("rank") <= top_k).select(columns)
    return [
        {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in rows.iter_rows(named=True)
    ]


def _summary_markdown(
    run_id: str,
    catalog: str,
    source: SourceSpec,
    counts: dict[str, int],
    timings: dict[str, float],
    report_path: str | None,
    ranked: pl.DataFrame,
    ranking: RankingSpec,
) -> str:
    lines = [
        f"# Screen {run_id}",
        "",
        f"- source: `{source.label()}`",
        f"- catalog: `{catalog}`",
        f"- candidates: {counts['candidates']} ({counts['predicted']} predicted, {counts['failed']} failed); "
        f"{counts['candidates_new']} new to the catalog"
        + (f" ({note})" if (note := shortfall(source, counts["candidates"])) else ""),
        f"- ranking `{ranking.name}`: {int((ranked['rank'] <= ranking.top_k).sum())} in the top-k, "
        f"{int(ranked['pareto'].sum())} on the Pareto front",
        "- timings: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in timings.items()),
        f"- report: `{report_path}`" if report_path else "- report: not written",
        "",
        f"Query it: `cloud-screen query --catalog {catalog} \"SELECT * FROM ranked WHERE run_id = '{run_id}' "
        'ORDER BY rank LIMIT 20"`',
    ]
    return "\n".join(lines)

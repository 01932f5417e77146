"""`cloud-screen query`, `rank`, `export`, `report` and `migrate`: the catalog side of the command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.console import fail, progress_bar

CatalogOption = Annotated[Path, typer.Option("--catalog", "-c", help="The DuckDB catalog file.")]
RunOption = Annotated[str | None, typer.Option("--run", help="Run id (default: the latest run).")]


def query(
    sql: Annotated[str, typer.Argument(help="SQL to run read-only (tables and views: see README).")],
    catalog: CatalogOption,
    format: Annotated[str, typer.Option("--format", "-f", help="table, csv, json or parquet.")] = "table",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here, not to stdout (parquet needs it).")
    ] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait while a writer holds the catalog.")] = 10.0,
) -> None:
    """Query the catalog with SQL on a read-only connection."""
    from catalogs.catalog import Catalog, CatalogError

    if format not in ("table", "csv", "json", "parquet"):
        fail(f"--format must be table, csv, json or parquet, not {format!r}")
    if format == "parquet" and out is None:
        fail("--format parquet needs --out FILE")
    try:
        frame = Catalog(catalog, lock_timeout=wait).query(sql)
    except CatalogError as exc:
        fail(str(exc))
    if format in ("csv", "table"):
        frame = frame.with_columns(_lists_as_text(frame))
    if format == "parquet":
        frame.write_parquet(out)
    elif format == "csv":
        _emit(frame.write_csv(), out)
    elif format == "json":
        _emit(frame.write_json(), out)
    else:
        _emit(None, out, frame)


def _lists_as_text(frame):
    """Lists as text for CSV and tables (JSON and Parquet keep them, CSV cannot)."""
    import polars as pl

    return [pl.col(c).cast(pl.List(pl.String)).list.join(", ") for c, t in frame.schema.items() if t == pl.List]


def _emit(text: str | None, out: Path | None, frame=None) -> None:
    if frame is not None:
        text = _table_text(frame)
    if out is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        out.write_text(text)


def _table_text(frame) -> str:
    import polars as pl

    with pl.Config(tbl_rows=100, tbl_cols=30, fmt_str_lengths=60, tbl_width_chars=200, tbl_hide_dataframe_shape=True):
        return f"{frame}\n({frame.height} rows)\n"


def rank(
    catalog: CatalogOption,
    spec: Annotated[Path | None, typer.Option("--spec", help="Ranking spec: .yaml, .toml or .json.")] = None,
    run: RunOption = None,
    top: Annotated[int | None, typer.Option("--top", help="Override the spec's top_k.")] = None,
    show: Annotated[int, typer.Option(help="Rows printed.")] = 20,
) -> None:
    """Rank a run's candidates with a spec; store the ranking in the catalog and print it."""
    from catalogs.catalog import Catalog, CatalogError
    from catalogs.ranking import RankingSpec, SpecError, rank_run

    try:
        ranking_spec = RankingSpec.from_file(spec) if spec else RankingSpec()
        if top is not None:
            ranking_spec = RankingSpec.parse({**ranking_spec.model_dump(), "top_k": top})
        cat = Catalog(catalog)
        run_id = cat.run(run)["run_id"]
        ranked = rank_run(cat, run_id, ranking_spec)
    except (CatalogError, SpecError) as exc:
        fail(str(exc))
    print_ranked(ranked, title=f"run {run_id}, ranking {ranking_spec.name!r} ({ranking_spec.spec_id})", rows=show)


def print_ranked(ranked, title: str, rows: int = 20) -> None:
    """The ranked list as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title}: {ranked.height} kept (top-k plus Pareto front)")
    columns = [c for c in ("rank", "formula", "spacegroup", "score", "pareto") if c in ranked.columns]
    objectives = [c for c in ranked.columns if c.startswith("objective_")]
    shown = ("formation_energy_per_atom", "band_gap", "log10_k_vrh", "debye_temperature", "cv_300K")
    columns += objectives or [c for c in shown if c in ranked.columns]
    columns += ["candidate_id"]
    for column in columns:
        table.add_column(column.removeprefix("objective_"), justify="right" if column != "formula" else "left")
    for row in ranked.head(rows).iter_rows(named=True):
        table.add_row(*(_cell(row[c]) for c in columns))
    Console(width=200).print(table)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bool):
        return "yes" if value else ""
    return str(value)


def export(
    catalog: CatalogOption,
    out: Annotated[Path, typer.Option("--out", "-o", help=".csv, .parquet, or a folder (CIF files).")],
    run: RunOption = None,
    top: Annotated[int | None, typer.Option("--top", help="Only the best K of the stored ranking.")] = None,
) -> None:
    """Export a run's ranked candidates with provenance: a table, or symmetrised CIF files in a folder."""
    from catalogs.catalog import Catalog, CatalogError
    from catalogs.export import export_cifs, export_table, ranked_with_provenance

    try:
        ranked = ranked_with_provenance(Catalog(catalog), run, top)
        if out.suffix in (".csv", ".parquet"):
            export_table(ranked, out)
            typer.echo(f"{ranked.height} ranked candidates -> {out}", err=True)
        else:
            index = export_cifs(ranked, out)
            written = index["file"].is_not_null().sum()
            typer.echo(f"{written} CIF files ({index.height - written} without a structure) -> {out}/", err=True)
    except CatalogError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")


def report(
    catalog: CatalogOption,
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path("report.html"),
    run: RunOption = None,
    top: Annotated[int, typer.Option(help="Rows in the ranked table; the 10 best get curves.")] = 50,
) -> None:
    """Write a self-contained HTML report of a run: ranked table, Debye curves, Pareto scatter, provenance."""
    from catalogs.catalog import Catalog, CatalogError
    from catalogs.export import write_run_report

    try:
        path = write_run_report(Catalog(catalog), out, run, top)
    except CatalogError as exc:
        fail(str(exc))
    typer.echo(f"report -> {path}", err=True)


def migrate(catalog: CatalogOption) -> None:
    """Upgrade a catalog written by an older cloud-screen to this version's schema."""
    from catalogs.catalog import Catalog, CatalogError

    if not catalog.exists():
        fail(f"no catalog at {catalog}")
    try:
        before, after = Catalog(catalog).migrate()
    except CatalogError as exc:
        fail(str(exc))
    typer.echo(f"{catalog}: schema version {before} -> {after}" if before != after else f"{catalog}: up to date")


def screen(
    catalog: CatalogOption = Path("catalog.duckdb"),
    source: Annotated[
        str,
        typer.Option(help="demo (generated candidates), a path (file, table, folder; comma-separated) or mp:QUERY."),
    ] = "demo",
    rank: Annotated[Path | None, typer.Option("--rank", help="Ranking spec: .yaml, .toml or .json.")] = None,
    top: Annotated[int | None, typer.Option("--top", help="How many ranked candidates to keep and print.")] = None,
    count: Annotated[int | None, typer.Option(help="demo: number of candidates (default 1200).")] = None,
    model: Annotated[str, typer.Option(help="Model bundle: a shipped name (default) or a folder.")] = "default",
    device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Candidates per task.")] = 2048,
    report: Annotated[bool, typer.Option(help="Write the HTML report next to the catalog.")] = True,
    verbose: Annotated[bool, typer.Option(help="Show Prefect's logs.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr (when it is a terminal).")] = True,
    seed: Annotated[int | None, typer.Option(help="demo: seed for the order of substitutions (default 0).")] = None,
    prototypes: Annotated[
        str | None,
        typer.Option(
            help="demo: comma-separated prototype names, or all (default: every prototype but the opt-in "
            "double-double-perovskite, whose 8 million candidates would fill any run)."
        ),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Finish an interrupted or failed run of this catalog: its run id. Its source, model, device, batch "
            "size, grid and ranking are read from the catalog (--rank and --top still apply).",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the catalog while other runs write to it.")] = 600.0,
    runner: Annotated[
        str, typer.Option(help="local (threads of this process) or dask (a Dask cluster: --dask-address, else local).")
    ] = "local",
    dask_address: Annotated[
        str | None,
        typer.Option(help="Scheduler of a running Dask cluster, e.g. tcp://10.0.0.5:8786 (implies --runner dask)."),
    ] = None,
    dask_workers: Annotated[int, typer.Option(help="Worker processes of the local Dask cluster.")] = 2,
    encode_workers: Annotated[
        int, typer.Option(help="Encoder processes per batch; 0: all cores of the machine scoring it.")
    ] = 0,
    append_rows: Annotated[
        int | None, typer.Option(help="Rows per catalog append (default 122,880: one DuckDB row group).")
    ] = None,
) -> None:
    """Screen candidates into the catalog and print the ranked top (a Prefect flow run; no server needed)."""
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Without a server, Prefect starts a temporary one and gives it 20 s; its first start migrates a SQLite
    # database, which on a busy machine (2 cores, another screen running) took longer and failed the run.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # a local Dask cluster's start and stop

    from pydantic import ValidationError

    from catalogs.catalog import Catalog, CatalogError
    from catalogs.ranking import RankingSpec, SpecError
    from cloud_core.prototypes import select_prototypes
    from flows.materials_project import MPSourceError
    from flows.runners import RunnerError, RunnerSpec, check_scheduler
    from flows.sources import SourceSpec, parse_source, shortfall

    if device not in ("auto", "cpu", "cuda"):
        fail(f"--device must be auto, cpu or cuda, not {device!r}")
    if runner not in ("local", "dask"):
        fail(f"--runner must be local or dask, not {runner!r}")
    if append_rows is not None and append_rows < 1:
        fail("--append-rows must be at least 1")
    if encode_workers < 0:
        fail("--encode-workers must be 0 (all cores) or more")
    try:
        runner_spec = RunnerSpec(kind="dask" if dask_address else runner, address=dask_address, n_workers=dask_workers)
    except ValidationError as exc:
        problem = exc.errors()[0]
        option = "--dask-address" if "address" in problem["loc"] else "--dask-workers"
        fail(f"{option}: {problem['msg'].removeprefix('Value error, ')}")
    temperatures = {}
    try:  # everything that can be checked before the flow starts is, so the error is one line
        spec = parse_source(source, count)
        if spec.kind == "demo" and (seed is not None or prototypes):
            names = [name.strip() for name in (prototypes or "").split(",") if name.strip()]
            select_prototypes(names)  # an unknown name: one line that lists the known ones
            spec = SourceSpec(**{**spec.model_dump(), "seed": spec.seed if seed is None else seed, "prototypes": names})
        stored_ranking = None
        if resume:  # the run's own parameters, as the flow stored them
            from flows.screen import TemperatureGrid

            stored = Catalog(catalog, lock_timeout=wait).run(resume)["parameters"] or {}
            spec = SourceSpec(**stored["source"])
            model, device = stored.get("model", model), stored.get("device", device)
            batch_size = stored.get("batch_size", batch_size)
            if stored.get("temperatures"):
                temperatures = {"temperatures": TemperatureGrid(**stored["temperatures"])}
            stored_ranking = stored.get("ranking")
        if spec.kind == "files":
            from cloud_core.structures import expand_inputs

            expand_inputs(spec.paths)  # a missing path (or a malformed CLOUD_SCREEN_MAX_FILE_MB) is one line, now
        if spec.kind == "mp":
            from flows.materials_project import parse_mp_query, resolve_api_key

            parse_mp_query(spec.mp_query)
            resolve_api_key()
        ranking = (
            RankingSpec.from_file(rank)
            if rank
            else (RankingSpec.parse(stored_ranking) if stored_ranking else RankingSpec())
        )
        if runner_spec.address:
            check_scheduler(runner_spec.address)
        Catalog(catalog, lock_timeout=wait).migrate()
        from flows.screen import model_fingerprint

        model_fingerprint(model)
    except (CatalogError, SpecError, MPSourceError, RunnerError) as exc:
        fail(str(exc))
    except ValidationError as exc:
        fail(f"--source {source!r}: {exc.errors()[0]['msg']}")
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    except Exception as exc:  # an unreadable model bundle
        fail(f"{type(exc).__name__}: {exc}")

    from flows.screen import screen as screen_flow
    from flows.screen import screen_progress

    local_server = _unreachable_prefect_server()

    def show(done: int, total: int | None) -> None:  # the flow calls it as it stores each batch
        bar.update(done, total, "ranking, report" if total is not None and done >= total else "screening")

    try:
        with progress_bar(progress, "starting") as bar, screen_progress(show):
            result = screen_flow(
                catalog=str(catalog),
                source=spec,
                ranking=ranking,
                top_k=top,
                model=model,
                device=device,
                batch_size=batch_size,
                report=report,
                resume=resume,
                catalog_wait=wait,
                runner=runner_spec,
                encode_workers=encode_workers,
                **temperatures,
                **({"append_rows": append_rows} if append_rows is not None else {}),
            )
    except (CatalogError, SpecError, MPSourceError, RunnerError) as exc:
        fail(str(exc))
    finally:
        local_server.close()
    cat = Catalog(catalog)
    ranked = cat.query("SELECT * FROM ranked WHERE run_id = ? ORDER BY rank", [result.run_id])
    ranked = ranked.filter(ranked["rank"] <= (top or ranking.top_k))
    print_ranked(ranked, title=f"run {result.run_id} ({result.counts['candidates']} candidates)", rows=top or 20)
    c, t = result.counts, result.timings
    if note := shortfall(spec, c["candidates"]):
        typer.echo(f"note: {note}", err=True)
    typer.echo(
        f"{c['candidates']} candidates: {c['predicted']} predicted, {c['failed']} failed, "
        f"{c['candidates_new']} new to the catalog; {t['total_s']:.1f} s -> {catalog}"
        + (f"; report {result.report}" if result.report else ""),
        err=True,
    )


def _unreachable_prefect_server():
    """When PREFECT_API_URL names a server that does not answer: one line, then run in-process without it.

    Returns a context to close after the run (it restores the setting); a no-op when the server answers or
    none is configured (Prefect then starts its own temporary local server, as always).
    """
    import contextlib

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deployments import server_problem

    url = PREFECT_API_URL.value()
    stack = contextlib.ExitStack()
    if url and (problem := server_problem(url)):
        typer.echo(
            f"cloud-screen: warning: no Prefect server answers at {url} ({problem}); running this flow in-process "
            "with a temporary local server instead (start that server, or unset PREFECT_API_URL, to silence this)",
            err=True,
        )
        stack.enter_context(temporary_settings(restore_defaults={PREFECT_API_URL}))
    return stack

"""The `cloud-screen` command line.

Commands import their heavy dependencies inside their bodies, so `cloud-screen encode` starts in a fraction
of a second and never loads torch or Prefect. A command that cannot run at all (missing input, unwritable
output) exits 1 with one line on stderr; bad structures are rows with an `error`, and the command exits 0.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from flows.console import exit_without_teardown_if_allowed, fail, nothing_left_to_tear_down, progress_bar

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="cloud-screen: high-throughput screening of crystals with the CLOUD model.",
)


@app.callback()
def main() -> None:
    """High-throughput screening of crystals with the CLOUD model."""


@app.command()
def encode(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Structure files (CIF, POSCAR, extxyz, pymatgen JSON), "
            "tables with a 'cif' column (.parquet/.csv/.jsonl), or directories."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output table: .parquet, .csv or .jsonl.")],
    variant: Annotated[
        str,
        typer.Option(
            help="official (reference strings), canonical (site-order free) or detailed (element per Wyckoff orbit)."
        ),
    ] = "canonical",
    workers: Annotated[int, typer.Option(help="Worker processes; 0 means all cores.")] = 0,
    symprec: Annotated[float, typer.Option(help="Symmetry tolerance in Å.")] = 0.01,
    angle_tolerance: Annotated[float, typer.Option(help="Angle tolerance in degrees.")] = 5.0,
    backend: Annotated[
        str, typer.Option(help="auto (spglib for official, moyopy otherwise), spglib or moyopy.")
    ] = "auto",
    max_sites: Annotated[int, typer.Option(help="Larger structures are error rows, not searched.")] = 2000,
    time_limit: Annotated[
        float,
        typer.Option(
            help="Seconds the symmetry search of one cell of more than 500 sites may take; a worker on one "
            "structure for twice this plus 10 s is stopped, the structure an error row (0: no limit)."
        ),
    ] = 60.0,
    progress: Annotated[bool, typer.Option(help="Progress bar on stderr.")] = True,
) -> None:
    """Encode crystal structures as SCOPE strings: one row per structure, with an error reason for bad ones."""
    from cloud_core.encode import EncodeSettings, default_workers, encode_stream
    from cloud_core.scope import VARIANTS
    from cloud_core.structures import expand_inputs, iter_raw_inputs
    from cloud_core.tables import TableWriter, table_format

    if variant not in VARIANTS:
        fail(f"unknown --variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if backend not in ("auto", "spglib", "moyopy"):
        fail(f"unknown --backend {backend!r}; choose auto, spglib or moyopy")
    if symprec <= 0:
        fail("--symprec must be positive")
    if time_limit < 0:
        fail("--time-limit must be 0 (no limit) or a number of seconds")
    try:
        table_format(out)
        paths = expand_inputs(inputs)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    settings = EncodeSettings(
        variant=variant,
        backend=None if backend == "auto" else backend,  # type: ignore[arg-type]
        symprec=symprec,
        angle_tolerance=angle_tolerance,
        max_sites=max_sites,
        time_limit=time_limit or None,
    )
    n_workers = workers if workers > 0 else default_workers()
    started = time.perf_counter()
    errors = 0
    try:
        with TableWriter(out) as writer, progress_bar(progress, "encoding") as bar:
            for frame in encode_stream(iter_raw_inputs(paths), settings, workers=n_workers, on_chunk=bar.advance):
                errors += frame["error"].is_not_null().sum()
                writer.write(frame)
            if writer.rows == 0:
                from cloud_core.encode import encode_chunk

                writer.write(encode_chunk([], settings))
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    elapsed = time.perf_counter() - started
    typer.echo(
        f"encoded {writer.rows - errors} of {writer.rows} structures ({errors} errors) in {elapsed:.2f} s -> {out}",
        err=True,
    )
    nothing_left_to_tear_down()


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output table: .parquet, .csv or .jsonl.")] = Path(
        "demo_scope.parquet"
    ),
    count: Annotated[int, typer.Option(help="Number of hypothetical candidates to generate.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed for the order of substitutions.")] = 0,
    variant: Annotated[str, typer.Option(help="SCOPE variant.")] = "canonical",
) -> None:
    """Encode the embedded default: hypothetical candidates from prototypes x substitutions (no network)."""
    import polars as pl
    from rich.console import Console
    from rich.table import Table

    from cloud_core.encode import EncodeSettings, encode_structures
    from cloud_core.prototypes import generate_candidates
    from cloud_core.scope import VARIANTS
    from cloud_core.tables import TableWriter, table_format

    if variant not in VARIANTS:
        fail(f"unknown --variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    try:
        table_format(out)
    except ValueError as exc:
        fail(str(exc))
    started = time.perf_counter()
    ids, crystals = zip(*generate_candidates(max_count=count, seed=seed), strict=True) if count > 0 else ((), ())
    frame = encode_structures(crystals, ids, EncodeSettings(variant=variant))  # type: ignore[arg-type]
    frame = frame.with_columns(pl.lit("demo").alias("source"))
    with TableWriter(out) as writer:
        writer.write(frame)
    elapsed = time.perf_counter() - started
    ok = frame.filter(pl.col("error").is_null())
    table = Table(
        title=f"{ok.height} of {frame.height} candidates encoded, {ok['scope'].n_unique()} distinct "
        f"SCOPE strings, {elapsed:.1f} s -> {out}"
    )
    for column in ("id", "formula", "spacegroup", "scope"):
        table.add_column(column)
    for row in ok.unique("scope", keep="first", maintain_order=True).head(10).iter_rows(named=True):
        table.add_row(row["id"], row["formula"], str(row["spacegroup"]), row["scope"])
    Console().print(table)


def _register_commands() -> None:
    from flows import catalog_commands, deployments, model_commands

    for command in (
        model_commands.predict,
        model_commands.train,
        model_commands.evaluate,
        catalog_commands.screen,
        catalog_commands.query,
        catalog_commands.rank,
        catalog_commands.export,
        catalog_commands.report,
        catalog_commands.migrate,
        deployments.serve,
    ):
        app.command()(command)


_register_commands()


def run() -> None:
    """The console script: the app, then, after a command that says nothing is left to tear down, an immediate
    exit (see flows.console.nothing_left_to_tear_down). In-process callers (tests) use `app` and never exit."""
    try:
        app()
    except SystemExit as done:
        exit_without_teardown_if_allowed(done.code)
        raise


if __name__ == "__main__":
    run()

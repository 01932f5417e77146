"""Result catalog speed: appends, idempotent re-appends, file size and a filtered top-100 + Pareto front.

Side by side in one process, on the same synthetic prediction rows (realistic value ranges, 16-hex candidate
ids, canonical SCOPE strings over ~40 elements so element filters select something):

- ours: `catalogs.catalog.Catalog.append` (one transaction per batch, anti-join idempotency, no key index,
  Debye curves once per θ_D key in `debye_curve_library`) and `catalogs.ranking.rank_run` (store=True, as the
  `cloud-screen rank` command does), a fresh `Catalog` (new connection) per query;
- naive reference layout: the same tables with PRIMARY KEYs, `INSERT ... ON CONFLICT DO NOTHING`, and the
  100-point Debye curves stored per (run, candidate) as four FLOAT[100] arrays; the ranking as one first writes
  it (one SQL query over VARCHAR ids, every passing row fetched, top-k and front in Python; Cv at 300 K read
  from the stored array); skip its appends with --skip-naive (at 10 M it is ~16 GB);
- polars reference for the query: the same rows exported once from the catalog to Parquet, then per query a
  lazy scan + the same filters, scaling, score, top-100 and the same numpy Pareto front.

    python bench/bench_catalog.py [--rows 1000000] [--batch 100000] [--repeats 5] [--skip-naive] [--keep]
    python bench/bench_catalog.py --dir DIR --queries-only     # the queries again, on what a --keep run left

Writes under /tmp/cs-bench (deleted at the end unless --keep) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catalogs.catalog import DEFAULT_TEMPERATURES, Catalog, batch_tables, debye_curves
from catalogs.ranking import RankingSpec, pareto_front, rank_run, thermo_lookup
from catalogs.schema import FILTER_COPIES, PREDICTION_VALUES, THETA_KEY_SCALE, theta_keys

ELEMENTS = (  # noqa: SIM905
    "O N S Se F Cl Br I H Li Na K Rb Cs Mg Ca Sr Ba Al Ga In Si Ge Sn "
    "Pb Cd Zn Ti Zr Hf V Nb Ta Cr Mo W Mn Fe Co Ni Cu Ag Bi Sb Te B P Y La"
).split()
PREFIXES = ("0 7 a O D", "0 3 a D D D b O O O m O O O 0", "1 2 a D D O c O O D 0", "0 1 a O O O", "2 5 b D O")
WYCKOFF = ("8a 16d 32e", "4a 4b", "1a 1b 3c", "2c 2d 4e", "8a 16c", "4e 4e 8f")
T_CV = 300.0  # on the default grid (10, 20, ..., 1000 K), so the naive layout reads it from its stored arrays
CV_T_INDEX = int(np.argmin(np.abs(np.asarray(DEFAULT_TEMPERATURES) - T_CV)))  # 0-based grid index of T_CV

SPECS = {
    "3 filters": {
        "name": "bench-3-filters",
        "filters": {
            "ranges": {"formation_energy_per_atom": {"max": 0.0}, "band_gap": {"min": 1.0, "max": 4.0}},
            "exclude_elements": ["Pb", "Cd"],
        },
        "objectives": [
            {"property": "formation_energy_per_atom", "direction": "minimize"},
            {"property": "log10_k_vrh", "direction": "maximize"},
        ],
        "top_k": 100,
    },
    "3 filters incl. Cv(300 K)": {
        "name": "bench-cv300",
        "filters": {
            "ranges": {"formation_energy_per_atom": {"max": 0.0}, "band_gap": {"min": 1.0, "max": 4.0}},
            "thermo": [{"quantity": "cv", "temperature": T_CV, "min": 22.0}],
        },
        "objectives": [
            {"property": "formation_energy_per_atom", "direction": "minimize"},
            {"property": "debye_temperature", "direction": "maximize"},
        ],
        "top_k": 100,
    },
}


# ---------------------------------------------------------------------------------------------- synthetic rows


def _compositions(rng: np.random.Generator, n: int = 20_000) -> pl.DataFrame:
    """A pool of canonical SCOPE strings and formulas, 1-4 elements each (alphabetical, as canonical SCOPE)."""
    scopes, formulas = [], []
    for _ in range(n):
        k = int(rng.choice([1, 2, 3, 4], p=[0.05, 0.3, 0.45, 0.2]))
        elements = sorted(rng.choice(ELEMENTS, size=k, replace=False).tolist())
        counts = rng.integers(1, 7, size=k)
        fractions = counts / counts.sum()
        composition = " ".join(f"{e} {f:.2f}" for e, f in zip(elements, fractions, strict=True))
        prefix, wyckoff = PREFIXES[rng.integers(len(PREFIXES))], WYCKOFF[rng.integers(len(WYCKOFF))]
        scopes.append(f"{prefix} | {wyckoff} | {composition}")
        formulas.append("".join(f"{e}{c if c > 1 else ''}" for e, c in zip(elements, counts, strict=True)))
    return pl.DataFrame({"canonical_scope": scopes, "formula": formulas})


def _hex_ids(index: np.ndarray) -> pl.Series:
    """16-hex candidate ids: splitmix64 of the global row index (a bijection, so ids never repeat)."""
    z = index.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    text = z.astype(">u8").tobytes().hex()
    return pl.Series("candidate_id", np.frombuffer(text.encode(), dtype="S16").astype("U16"))


def synthetic_batch(pool: pl.DataFrame, seed: int, number: int, size: int) -> pl.DataFrame:
    """Batch `number` of `size` rows; the same (seed, number) always gives the same rows (for re-appends)."""
    rng = np.random.default_rng([seed, number])
    start = number * size
    pick = pool[rng.integers(0, pool.height, size)]
    f32 = np.float32
    gap = np.where(rng.random(size) < 0.35, 0.0, rng.gamma(1.6, 1.4, size).clip(0, 8))
    theta = np.exp(rng.normal(np.log(380), 0.55, size)).clip(50, 1500)
    k = rng.uniform(0.5, 2.6, size)
    cols = {
        "formation_energy_per_atom": rng.uniform(-4, 1, size),
        "formation_energy_per_atom_std": rng.gamma(2, 0.03, size),
        "band_gap": gap,
        "band_gap_std": rng.gamma(2, 0.1, size),
        "log10_k_vrh": k,
        "log10_k_vrh_std": rng.gamma(2, 0.02, size),
        "log10_g_vrh": k - rng.uniform(0.1, 0.5, size),
        "log10_g_vrh_std": rng.gamma(2, 0.02, size),
        "debye_temperature": theta,
        "cv_300K": 3 * 8.314 * (1 - (theta / 300) ** 2 / 20).clip(0.2, 1),
        "cv_300K_std": rng.gamma(2, 0.2, size),
    }
    failed = rng.random(size) < 0.002  # a few rows the model could not predict
    frame = pl.DataFrame(
        {
            "id": pl.Series(np.arange(start, start + size)).cast(pl.String).str.replace(r"^", "syn-"),
            "source": pl.repeat("synthetic", size, eager=True),
            "candidate_id": _hex_ids(np.arange(start, start + size)),
            "canonical_scope": pick["canonical_scope"],
            "structure_hash": _hex_ids(np.arange(start, start + size) + 2**40).alias("structure_hash"),
            "formula": pick["formula"],
            "spacegroup": rng.integers(1, 231, size).astype(np.int16),
            "nsites": rng.integers(1, 200, size).astype(np.int32),
            "scope": pick["canonical_scope"],
            **{c: np.where(failed, np.nan, v).astype(f32) for c, v in cols.items()},
        }
    )
    error = pl.when(pl.Series(failed)).then(pl.lit("prediction failed: non-finite output")).otherwise(None)
    frame = frame.with_columns(error.cast(pl.String).alias("error"))
    return frame.with_columns(pl.col(c).fill_nan(None) for c in cols)


# ---------------------------------------------------------------------------------------------- naive layout

_FLOATS = ", ".join(f'"{c}" FLOAT' for c in PREDICTION_VALUES)
NAIVE_DDL = (
    "CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, started_at TIMESTAMPTZ)",
    "CREATE TABLE candidates (candidate_id VARCHAR PRIMARY KEY, scope VARCHAR, structure_hash VARCHAR, "
    "formula VARCHAR, elements VARCHAR[], nelements TINYINT, nsites INTEGER, spacegroup SMALLINT, "
    "crystal_system VARCHAR, source VARCHAR, source_id VARCHAR, first_run_id VARCHAR, added_at TIMESTAMPTZ)",
    f"CREATE TABLE predictions (run_id VARCHAR, candidate_id VARCHAR, model_scope VARCHAR, {_FLOATS}, "
    "error VARCHAR, PRIMARY KEY (run_id, candidate_id))",
    "CREATE TABLE debye_curves (run_id VARCHAR, candidate_id VARCHAR, cv FLOAT[100], u FLOAT[100], "
    "s FLOAT[100], f FLOAT[100], PRIMARY KEY (run_id, candidate_id))",
)


class NaiveCatalog:
    """What one writes first: primary keys + ON CONFLICT DO NOTHING, 4 x FLOAT[100] curves per candidate."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path, self.run_id = path, run_id
        with duckdb.connect(str(path)) as con:
            for statement in NAIVE_DDL:
                con.execute(statement)
            con.execute("INSERT INTO runs VALUES (?, now())", [run_id])
        # Curves per 0.1 K of θ_D (50-1500 K), computed once; each batch gathers its rows' curves from them.
        started = time.perf_counter()
        keys = np.arange(50 * THETA_KEY_SCALE, 1500 * THETA_KEY_SCALE + 1)
        self.curves = debye_curves(keys / THETA_KEY_SCALE, np.asarray(DEFAULT_TEMPERATURES))
        self.key0 = int(keys[0])
        self.setup_s = time.perf_counter() - started

    def append(self, rows: pl.DataFrame) -> int:
        candidates, predictions, _failures = batch_tables(self.run_id, rows)  # the same rows as Catalog.append
        masks = ("mask_low", "mask_high")  # the naive layout has no integer keys, masks or filter copies
        candidates = candidates.drop("candidate_key", "structure", "structure_format", *masks)
        predictions = predictions.drop("candidate_key", "nelements", "spacegroup", *masks)
        with_theta = predictions.filter(pl.col("debye_temperature").is_not_null())
        index = theta_keys(with_theta["debye_temperature"].to_numpy()) - self.key0
        curves = pa.table(
            {
                "run_id": pa.array([self.run_id] * with_theta.height),
                "candidate_id": with_theta["candidate_id"].to_arrow(),
                **{
                    q: pa.FixedSizeListArray.from_arrays(pa.array(self.curves[q][index].reshape(-1)), 100)
                    for q in ("cv", "u", "s", "f")
                },
            }
        )
        with duckdb.connect(str(self.path)) as con:
            con.execute("BEGIN TRANSACTION")
            con.register("b_candidates", candidates.to_arrow())
            con.register("b_predictions", predictions.to_arrow())
            con.register("b_curves", curves)
            con.execute("INSERT INTO candidates SELECT *, now() FROM b_candidates ON CONFLICT DO NOTHING")
            added = con.execute("INSERT INTO predictions SELECT * FROM b_predictions ON CONFLICT DO NOTHING").fetchall()
            con.execute("INSERT INTO debye_curves SELECT * FROM b_curves ON CONFLICT DO NOTHING")
            con.execute("COMMIT")
        return added[0][0]


def naive_rank(path: Path, run_id: str, spec: RankingSpec) -> pl.DataFrame:
    """The spec as one first writes it, on the naive layout: one SQL query joining on the VARCHAR ids, elements
    filtered with list_has_any, Cv(T) read from the stored per-candidate arrays, scores by window min/max, every
    passing row fetched, then top-k and the numpy Pareto front in Python.
    """
    f = spec.filters
    params: dict[str, object] = {"run": run_id}
    where = ["p.run_id = $run", "p.error IS NULL"]
    for name, bounds in f.ranges.items():
        if bounds.min is not None:
            where.append(f'p."{name}" >= {bounds.min!r}')
        if bounds.max is not None:
            where.append(f'p."{name}" <= {bounds.max!r}')
    if f.exclude_elements:
        params["exclude"] = f.exclude_elements
        where.append("NOT list_has_any(c.elements, $exclude::VARCHAR[])")
    for flt in f.thermo:
        assert flt.temperature == T_CV and flt.quantity == "cv"
        where.append(f"d.cv[{CV_T_INDEX + 1}] >= {flt.min!r}")
    objectives, goodness = [], []
    for i, o in enumerate(spec.objectives):
        objectives.append(f'p."{o.property}" AS objective_{i}')
        scaled = (
            f"(objective_{i} - min(objective_{i}) OVER ()) / "
            f"nullif(max(objective_{i}) OVER () - min(objective_{i}) OVER (), 0)"
        )
        good = scaled if o.direction == "maximize" else f"1 - {scaled}"
        goodness.append(f"{o.weight!r} * coalesce({good}, 1.0)")
    query = f"""
WITH kept AS (
  SELECT p.* EXCLUDE (run_id, model_scope, error), c.formula, c.elements, {", ".join(objectives)}
  FROM predictions p JOIN candidates c ON c.candidate_id = p.candidate_id
  {"JOIN debye_curves d ON d.run_id = p.run_id AND d.candidate_id = p.candidate_id" if f.thermo else ""}
  WHERE {" AND ".join(where)}
)
SELECT *, row_number() OVER (ORDER BY score DESC, candidate_id) AS rank
FROM (SELECT *, ({" + ".join(goodness)}) / {sum(o.weight for o in spec.objectives)!r} AS score FROM kept)"""
    with duckdb.connect(str(path), read_only=True) as con:
        kept = con.sql(query, params=params).pl()
    return _top_and_front(kept, spec)


def _top_and_front(kept: pl.DataFrame, spec: RankingSpec) -> pl.DataFrame:
    objectives = kept.select(f"objective_{i}" for i in range(len(spec.objectives))).to_numpy().astype(np.float64)
    maximize = np.array([o.direction == "maximize" for o in spec.objectives])
    kept = kept.with_columns(pl.Series("pareto", pareto_front(objectives, maximize)))
    return kept.filter((pl.col("rank") <= spec.top_k) | pl.col("pareto")).sort("rank")


# ---------------------------------------------------------------------------------------------- polars reference


def polars_rank(parquet: Path, spec: RankingSpec) -> pl.DataFrame:
    """The spec in polars over a Parquet export of the run's predictions joined with their candidates."""
    f = spec.filters
    lazy = pl.scan_parquet(parquet).filter(pl.col("error").is_null())
    for name, bounds in f.ranges.items():
        if bounds.min is not None:
            lazy = lazy.filter(pl.col(name) >= bounds.min)
        if bounds.max is not None:
            lazy = lazy.filter(pl.col(name) <= bounds.max)
    if f.exclude_elements:
        lazy = lazy.filter(~pl.col("elements").list.set_intersection(f.exclude_elements).list.len().cast(pl.Boolean))
    # the catalog's θ_D key (catalogs.schema.theta_keys): in double, half away from zero (θ_D > 0)
    key = (
        (pl.col("debye_temperature").cast(pl.Float64) * THETA_KEY_SCALE + 0.5).floor().cast(pl.Int32).alias("theta_key")
    )
    if f.thermo:
        flt = f.thermo[0]
        keys = np.arange(50 * THETA_KEY_SCALE, 1500 * THETA_KEY_SCALE + 1)
        table = thermo_lookup(flt.quantity, flt.temperature, keys).lazy()
        lazy = lazy.with_columns(key).join(table, on="theta_key", how="left")
        if flt.min is not None:
            lazy = lazy.filter(pl.col("value") >= flt.min)
        if flt.max is not None:
            lazy = lazy.filter(pl.col("value") <= flt.max)
    goodness = []
    for i, o in enumerate(spec.objectives):
        lazy = lazy.with_columns(pl.col(o.property).alias(f"objective_{i}"))
        x = pl.col(f"objective_{i}")
        scaled = (x - x.min()) / (x.max() - x.min())
        goodness.append(o.weight * (scaled if o.direction == "maximize" else 1 - scaled).fill_null(1.0))
    total = sum(o.weight for o in spec.objectives)
    lazy = lazy.with_columns((pl.sum_horizontal(goodness) / total).alias("score"))
    kept = lazy.sort(["score", "candidate_id"], descending=[True, False]).with_row_index("rank", offset=1).collect()
    return _top_and_front(kept, spec)


# ---------------------------------------------------------------------------------------------- driver


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def load() -> str:
    return "load average " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def append_all(append, pool: pl.DataFrame, seed: int, batches: int, size: int, label: str) -> tuple[list[float], int]:
    times, added = [], 0
    for number in range(batches):
        batch = synthetic_batch(pool, seed, number, size)
        started = time.perf_counter()
        added += append(batch)
        times.append(time.perf_counter() - started)
        if number in (0, batches - 1) or (number + 1) % max(1, batches // 5) == 0:
            print(f"  {label} batch {number + 1}/{batches}: {times[-1]:.2f} s ({load()})", file=sys.stderr, flush=True)
    return times, added


def ratio(ref: float, ours: float) -> str:
    return f"{ref / ours:.2f}x"


def timed_median(fn, repeats: int) -> tuple[float, list[float], object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times, result


def agree(a: pl.DataFrame, b: pl.DataFrame, top_k: int) -> str:
    top_a = set(a.filter(pl.col("rank") <= top_k)["candidate_id"])
    top_b = set(b.filter(pl.col("rank") <= top_k)["candidate_id"])
    front_a = set(a.filter(pl.col("pareto"))["candidate_id"])
    front_b = set(b.filter(pl.col("pareto"))["candidate_id"])
    return f"top-{top_k} {len(top_a & top_b)}/{top_k} same, front {len(front_a & front_b)}/{len(front_a)} same"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5, help="query runs per path (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-naive", action="store_true", help="skip the naive layout (appends and query)")
    parser.add_argument("--skip-reappend", action="store_true", help="skip the idempotent re-append pass")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/cs-bench"))
    parser.add_argument("--keep", action="store_true", help="keep the files under --dir")
    parser.add_argument(
        "--queries-only", action="store_true", help="time the queries on the catalog and Parquet a --keep run left"
    )
    args = parser.parse_args()
    args.keep |= args.queries_only
    batches = -(-args.rows // args.batch)
    rows = batches * args.batch
    if args.dir.exists() and not args.queries_only:
        shutil.rmtree(args.dir)
    args.dir.mkdir(parents=True, exist_ok=True)
    print(
        f"{rows:,} rows in {batches} batches of {args.batch:,}; {load()}; duckdb {duckdb.__version__}", file=sys.stderr
    )
    pool = _compositions(np.random.default_rng(args.seed))
    results: list[tuple[str, str, str, str]] = []  # (measure, ours, reference, ratio)

    try:
        cat = Catalog(args.dir / "ours.duckdb")
        run_id = "bench-run"
        naive = None
        if not args.queries_only:
            # ------------------------------------------------------------ appends
            run_id = cat.start_run(flow="bench", run_id=run_id, source="synthetic")
            ours_t, ours_added = append_all(
                lambda b: cat.append(run_id, b).predictions_new, pool, args.seed, batches, args.batch, "ours"
            )
            ours_size = file_size(cat.path)
            if not args.skip_reappend:
                ours_re, ours_re_added = append_all(
                    lambda b: cat.append(run_id, b).predictions_new, pool, args.seed, batches, args.batch, "ours again"
                )
            if not args.skip_naive:
                naive = NaiveCatalog(args.dir / "naive.duckdb", run_id)
                naive_t, _naive_added = append_all(naive.append, pool, args.seed, batches, args.batch, "naive")
                naive_t[0] += naive.setup_s  # its one-off curve computation, as ours pays in its first batch
                naive_size = file_size(naive.path)
                if not args.skip_reappend:
                    naive_re, naive_re_added = append_all(
                        naive.append, pool, args.seed, batches, args.batch, "naive again"
                    )
            n_pred = cat.query("SELECT count(*) AS n FROM predictions").item()
            n_curves = cat.query("SELECT count(*) AS n FROM debye_curve_library").item()

            def rate(times: list[float]) -> str:
                total = sum(times)
                return (
                    f"{rows / total:,.0f} rows/s ({total:.1f} s; first batch {times[0]:.2f} s, last {times[-1]:.2f} s)"
                )

            results.append(
                (
                    f"append {rows:,} rows, {batches} x {args.batch:,}, one transaction each",
                    rate(ours_t),
                    rate(naive_t) if naive else "skipped",
                    ratio(sum(naive_t), sum(ours_t)) if naive else "",
                )
            )
            if not args.skip_reappend:
                results.append(
                    (
                        "re-append the same batches (must add 0)",
                        f"{sum(ours_re):.1f} s, added {ours_re_added}",
                        f"{sum(naive_re):.1f} s, added {naive_re_added}" if naive else "skipped",
                        ratio(sum(naive_re), sum(ours_re)) if naive else "",
                    )
                )
            results.append(
                (
                    "file size",
                    f"{ours_size / 2**20:,.0f} MiB ({n_pred:,} predictions, {n_curves:,} library curves)",
                    f"{naive_size / 2**20:,.0f} MiB" if naive else "skipped",
                    f"{naive_size / ours_size:.2f}x" if naive else "",
                )
            )
            assert ours_added == n_pred == rows, (ours_added, n_pred, rows)

        # ------------------------------------------------------------ queries
        parquet = args.dir / "export.parquet"
        started = time.perf_counter()
        if not parquet.exists():
            cat.query(
                f"SELECT p.* EXCLUDE (run_id, model_scope, {', '.join(FILTER_COPIES)}), c.formula, c.spacegroup, "
                "c.crystal_system, c.nelements, c.elements, c.scope "
                "FROM predictions p JOIN candidates c USING (candidate_id) WHERE p.run_id = ?",
                [run_id],
            ).write_parquet(parquet)
        print(f"  parquet export for the polars reference: {time.perf_counter() - started:.1f} s", file=sys.stderr)
        for label, raw in SPECS.items():
            spec = RankingSpec.parse(raw)
            ours_med, ours_all, ours_out = timed_median(
                lambda spec=spec: rank_run(Catalog(cat.path), run_id, spec, store=True), args.repeats
            )
            pol_med, _pol_all, pol_out = timed_median(lambda spec=spec: polars_rank(parquet, spec), args.repeats)
            note = f"kept {ours_out.height} rows; vs polars: {agree(ours_out, pol_out, spec.top_k)}"
            cells = [f"{ours_med:.3f} s (runs {', '.join(f'{t:.2f}' for t in ours_all)})"]
            cells.append(f"polars {pol_med:.3f} s ({ratio(pol_med, ours_med)})")
            if naive:
                nai_med, _, nai_out = timed_median(lambda spec=spec: naive_rank(naive.path, run_id, spec), args.repeats)
                cells.append(f"naive layout {nai_med:.3f} s ({ratio(nai_med, ours_med)})")
                note += f"; vs naive: {agree(ours_out, nai_out, spec.top_k)}"
            results.append(
                (
                    f"top-100 + Pareto front, {label}, median of {args.repeats}, fresh connection each",
                    cells[0],
                    "; ".join(cells[1:]),
                    note,
                )
            )
            print(f"  {label}: {cells} {note} ({load()})", file=sys.stderr, flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)

    print(f"\n{rows:,} rows, {load()} at the end\n")
    print("| measure | ours | reference | ratio / check |")
    print("|---|---|---|---|")
    for row in results:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()

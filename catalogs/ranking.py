"""Ranking specs: typed filters and objectives, compiled to parameterised SQL over one run's predictions.

A spec names columns only through closed vocabularies (the validators below refuse anything else), and every
user value travels as a bound parameter, so no spec can change what the SQL does: a hostile string is just a
value that matches nothing. Thermodynamic quantities at a chosen temperature (Cv, U, S, F at T) come from a
lookup table computed here per distinct θ_D of the run (see catalogs.schema on the θ_D key), joined in SQL.

Score: each objective is scaled to [0, 1] over the candidates that pass the filters (1 = best), optionally on
a confidence bound (value ∓ z σ, the pessimistic side for the direction), and the weighted mean of those is
the score. The Pareto front is over the objectives' values (2-4 of them), computed in numpy.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from catalogs.schema import (
    ELEMENTS,
    FILTER_COPIES,
    PREDICTION_VALUES,
    PROPERTY_COLUMNS,
    THETA_KEY_SCALE,
    element_mask,
    theta_key_sql,
)

RANKABLE = tuple(c for c in PREDICTION_VALUES if not c.endswith("_std"))  # properties filters and objectives use
STD_OF = {c: f"{c}_std" for c in RANKABLE if f"{c}_std" in PREDICTION_VALUES}
THERMO = ("cv", "u", "s", "f")
THERMO_UNITS = {"cv": "J/(K mol atoms)", "u": "J/mol atoms", "s": "J/(K mol atoms)", "f": "J/mol atoms"}
CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")
_LAST_SPACEGROUP = (2, 15, 74, 142, 167, 194, 230)  # of each crystal system, as catalogs.catalog.crystal_system
SPACEGROUPS_OF = {
    system: list(range(first + 1, last + 1))
    for system, first, last in zip(CRYSTAL_SYSTEMS, (0, *_LAST_SPACEGROUP), _LAST_SPACEGROUP, strict=False)
}
Temperature = Annotated[float, Field(ge=1.0, le=3000.0, description="Temperature in K (1-3000).")]


class SpecError(ValueError):
    """A ranking spec that cannot be used; the message names the offending field."""


def thermo_label(quantity: str, temperature: float) -> str:
    """Column name of a Debye quantity at a temperature, e.g. cv_300K_debye (apart from the predicted cv_300K)."""
    return f"{quantity}_{temperature:g}K_debye"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Strict):
    """An inclusive range; either end may be open."""

    min: float | None = Field(None, description="Smallest value kept (inclusive); empty for no lower bound.")
    max: float | None = Field(None, description="Largest value kept (inclusive); empty for no upper bound.")

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self


class ThermoFilter(Range):
    """A range on a Debye quantity at one temperature, per mole of atoms."""

    quantity: Literal["cv", "u", "s", "f"] = Field(description="cv or s in J/(K mol), u or f in J/mol.")
    temperature: Temperature


class Filters(_Strict):
    ranges: dict[str, Range] = Field(
        default_factory=dict,
        description=f"Ranges on predicted properties: {', '.join(RANKABLE)}.",
    )
    thermo: list[ThermoFilter] = Field(default_factory=list, description="Ranges on Cv, U, S or F at a temperature.")
    require_elements: list[str] = Field(default_factory=list, description="Every one of these elements present.")
    exclude_elements: list[str] = Field(default_factory=list, description="None of these elements present.")
    spacegroups: list[Annotated[int, Field(ge=1, le=230)]] = Field(
        default_factory=list, description="Only these space-group numbers (empty: any)."
    )
    crystal_systems: list[Literal[CRYSTAL_SYSTEMS]] = Field(  # type: ignore[valid-type]
        default_factory=list, description="Only these crystal systems (empty: any)."
    )
    nelements: Range = Field(default_factory=Range, description="Number of distinct elements.")
    max_uncertainty: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description=f"Largest predicted standard deviation allowed per property: {', '.join(STD_OF)}.",
    )

    @field_validator("ranges")
    @classmethod
    def _known_properties(cls, value: dict[str, Range]) -> dict[str, Range]:
        for name in value:
            if name not in RANKABLE:
                raise ValueError(f"unknown property {name!r}; choose from {', '.join(RANKABLE)}")
        return value

    @field_validator("max_uncertainty")
    @classmethod
    def _has_std(cls, value: dict[str, float]) -> dict[str, float]:
        for name in value:
            if name not in STD_OF:
                raise ValueError(f"no uncertainty for {name!r}; choose from {', '.join(STD_OF)}")
        return value

    @field_validator("require_elements", "exclude_elements")
    @classmethod
    def _known_elements(cls, value: list[str]) -> list[str]:
        for symbol in value:
            if symbol not in ELEMENTS:
                raise ValueError(f"unknown element {symbol!r}")
        return value


class Objective(_Strict):
    """One thing to optimise: a predicted property, or a Debye quantity at a temperature."""

    property: str = Field(
        description=f"A predicted property ({', '.join(RANKABLE)}), or cv, u, s, f with a temperature."
    )
    temperature: Temperature | None = Field(None, description="Required for cv, u, s, f; not allowed otherwise.")
    direction: Literal["minimize", "maximize"] = Field(description="Whether smaller or larger is better.")
    weight: float = Field(1.0, gt=0, description="Relative weight in the score.")
    bound: Literal["mean", "confidence"] = Field(
        "mean", description="confidence: rank on the pessimistic bound value ∓ z·σ instead of the mean."
    )
    z: float = Field(1.0, ge=0, le=5, description="Standard deviations for the confidence bound.")

    @model_validator(mode="after")
    def _consistent(self) -> Objective:
        if self.property in THERMO:
            if self.temperature is None:
                raise ValueError(f"{self.property} needs a temperature")
            if self.bound == "confidence":
                raise ValueError(f"no uncertainty is predicted for {self.property} at a temperature; use bound: mean")
        elif self.property in RANKABLE:
            if self.temperature is not None:
                raise ValueError(f"{self.property} takes no temperature")
            if self.bound == "confidence" and self.property not in STD_OF:
                raise ValueError(f"no uncertainty is predicted for {self.property}; use bound: mean")
        else:
            raise ValueError(f"unknown property {self.property!r}; choose from {', '.join((*RANKABLE, *THERMO))}")
        return self

    @builtins.property  # the field `property` shadows the builtin in this class body
    def label(self) -> str:
        """The objective's column name: the property, or e.g. cv_300K_debye (Cv from θ_D, not the cv_300K head)."""
        return thermo_label(self.property, self.temperature) if self.temperature is not None else self.property


def _default_objectives() -> list[Objective]:
    return [
        Objective(property="formation_energy_per_atom", direction="minimize"),
        Objective(property="debye_temperature", direction="maximize"),
    ]


class RankingSpec(_Strict):
    """Which candidates to keep and how to order them."""

    name: str = Field("default", max_length=200, description="A name for this ranking (stored with the results).")
    filters: Filters = Field(default_factory=Filters, description="Candidates failing any filter are dropped.")
    objectives: list[Objective] = Field(
        default_factory=_default_objectives, min_length=1, max_length=8, description="What the score rewards."
    )
    pareto: bool = Field(True, description="Mark the Pareto front over the objectives (2 to 4 objectives).")
    top_k: int = Field(100, ge=1, le=1_000_000, description="How many candidates the ranked list keeps.")

    @model_validator(mode="after")
    def _pareto_size(self) -> RankingSpec:
        if self.pareto and not 2 <= len(self.objectives) <= 4:
            raise ValueError(f"a Pareto front needs 2 to 4 objectives, this spec has {len(self.objectives)}")
        labels = [o.label for o in self.objectives]
        if len(set(labels)) != len(labels):
            raise ValueError(f"objectives repeat a property: {labels}")
        return self

    @property
    def spec_id(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @classmethod
    def parse(cls, data: Any, origin: str = "ranking spec") -> RankingSpec:
        """Validate a mapping; errors become one SpecError naming each offending field."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"]) or "(top level)"
                problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
            raise SpecError(f"{origin}: " + "; ".join(problems)) from None

    @classmethod
    def from_file(cls, path: str | Path) -> RankingSpec:
        """Load a spec from YAML (.yaml/.yml), TOML (.toml) or JSON (.json)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(f"cannot read ranking spec {path}: {exc.strerror or exc}") from None
        suffix = path.suffix.lower()
        try:
            if suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            elif suffix == ".toml":
                data = tomllib.loads(text)
            elif suffix == ".json":
                data = json.loads(text)
            else:
                raise SpecError(f"ranking spec {path}: use a .yaml, .toml or .json file")
        except SpecError:
            raise
        except Exception as exc:
            raise SpecError(
                f"ranking spec {path} is not valid {suffix[1:].upper()}: {' '.join(str(exc).split())}"
            ) from None
        return cls.parse(data if data is not None else {}, origin=f"ranking spec {path}")


# ---------------------------------------------------------------------------------------------- compiling


class _Sql:
    """Collects SQL fragments and their parameters; values only ever enter through `param`."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}

    def param(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"${name}"


def _range_sql(sql: _Sql, column: str, bounds: Range) -> list[str]:
    out = []
    if bounds.min is not None:
        out.append(f"{column} >= {sql.param(bounds.min)}")
    if bounds.max is not None:
        out.append(f"{column} <= {sql.param(bounds.max)}")
    return out


def _thermo_columns(spec: RankingSpec) -> dict[tuple[str, float], str]:
    """Each (quantity, temperature) the spec uses -> the SQL column name it gets (our names, not the user's)."""
    wanted = [(f.quantity, f.temperature) for f in spec.filters.thermo]
    wanted += [(o.property, o.temperature) for o in spec.objectives if o.property in THERMO]
    return {key: f"thermo_{i}" for i, key in enumerate(dict.fromkeys(wanted))}  # type: ignore[misc]


def compile_spec(spec: RankingSpec, run_param: str = "$run") -> tuple[str, dict[str, Any]]:
    """The SQL that keeps one run's candidates passing the filters, with its parameters.

    The query expects `$run` and, for each thermo column, a registered table `thermo_i(theta_key, value)`. It
    returns one row per kept candidate: candidate_key, prediction_row (the row id in `predictions`), the thermo
    columns and objective_0..n-1 (DOUBLE, finite).
    It reads `predictions` alone, whose rows carry the candidate columns filters need (catalogs.schema).
    """
    sql = _Sql()
    f = spec.filters
    thermo = _thermo_columns(spec)
    where = ["p.run_id = " + run_param, "p.error IS NULL"]
    for name, bounds in f.ranges.items():
        where += _range_sql(sql, f'p."{name}"', bounds)
    for name, limit in f.max_uncertainty.items():
        where.append(f'p."{STD_OF[name]}" <= {sql.param(limit)}')
    for flt in f.thermo:
        where += _range_sql(sql, f"{thermo[(flt.quantity, flt.temperature)]}.value", flt)
    if f.require_elements:
        mask = sql.param(str(element_mask(f.require_elements)))
        where.append(f"p.element_mask & {mask}::HUGEINT = {mask}::HUGEINT")
    if f.exclude_elements:
        where.append(f"p.element_mask & {sql.param(str(element_mask(f.exclude_elements)))}::HUGEINT = 0")
    if f.spacegroups:
        where.append(f"list_contains({sql.param(f.spacegroups)}::SMALLINT[], p.spacegroup)")
    if f.crystal_systems:
        numbers = [n for system in f.crystal_systems for n in SPACEGROUPS_OF[system]]
        where.append(f"list_contains({sql.param(numbers)}::SMALLINT[], p.spacegroup)")
    where += _range_sql(sql, "p.nelements", f.nelements)

    joins = "".join(
        f" LEFT JOIN {name} ON {name}.theta_key = {theta_key_sql('p.debye_temperature')}" for name in thermo.values()
    )
    objectives = []
    for o in spec.objectives:
        if o.property in THERMO:
            value = f"{thermo[(o.property, o.temperature)]}.value"
        elif o.bound == "confidence":
            sign = "-" if o.direction == "maximize" else "+"  # the pessimistic side
            value = f'p."{o.property}" {sign} {sql.param(o.z)} * p."{STD_OF[o.property]}"'
        else:
            value = f'p."{o.property}"'
        objectives.append(f"CAST({value} AS DOUBLE)")
        where.append(f"isfinite(CAST({value} AS DOUBLE))")  # also drops nulls: no value, no rank
    columns = ["p.candidate_key", "p.rowid AS prediction_row"]
    columns += [f"{name}.value AS {name}" for name in thermo.values()]
    columns += [f"{value} AS objective_{i}" for i, value in enumerate(objectives)]
    query = f"SELECT {', '.join(columns)} FROM predictions p{joins} WHERE {' AND '.join(where)}"
    return query, sql.params


def score_sql(spec: RankingSpec) -> tuple[str, str, dict[str, Any]]:
    """How kept rows are scored: the weighted mean of their objectives scaled to [0, 1] over the kept rows.

    Returns the SQL of a one-row `bounds` table over `kept` (each objective's min and max, and the weights, as
    bound parameters), the score expression over `kept` and `bounds`, and the parameters. An objective that
    does not vary scores 1.
    """
    sql = _Sql()
    columns, terms = [], []
    for i, o in enumerate(spec.objectives):
        columns += [
            f"min(objective_{i}) AS low_{i}",
            f"max(objective_{i}) AS high_{i}",
            f"{sql.param(o.weight)} AS w_{i}",
        ]
        scaled = f"(objective_{i} - low_{i}) / nullif(high_{i} - low_{i}, 0)"
        good = scaled if o.direction == "maximize" else f"1 - {scaled}"
        terms.append(f"w_{i} * coalesce({good}, 1.0)")
    columns.append(f"{sql.param(sum(o.weight for o in spec.objectives))} AS total_weight")
    return f"SELECT {', '.join(columns)} FROM kept", f"({' + '.join(terms)}) / total_weight", sql.params


def thermo_lookup(quantity: str, temperature: float, theta_keys: np.ndarray) -> pl.DataFrame:
    """Cv, U, S or F at one temperature for each θ_D key (what the SQL joins on)."""
    from catalogs.catalog import debye_curves

    values = debye_curves(theta_keys / THETA_KEY_SCALE, np.array([temperature]))[quantity][:, 0]
    return pl.DataFrame({"theta_key": theta_keys.astype(np.int32), "value": values.astype(np.float64)})


def _dominated(candidates: np.ndarray, by: np.ndarray) -> np.ndarray:
    """For each row of `candidates`, whether some row of `by` is >= in every column and > in one."""
    if by.shape[0] == 0:
        return np.zeros(candidates.shape[0], dtype=bool)
    geq = (by[None, :, :] >= candidates[:, None, :]).all(-1)
    gt = (by[None, :, :] > candidates[:, None, :]).any(-1)
    return (geq & gt).any(1)


def pareto_front(values: np.ndarray, maximize: np.ndarray, block: int = 256) -> np.ndarray:
    """Boolean mask of the non-dominated rows of `values` (n, k); `maximize[j]` says which way column j is better.

    Rows are visited in blocks, best first by their scaled sum: a dominator always has a larger sum, so it is
    met before the rows it dominates, and each block is compared only with the front so far and itself.
    """
    n = values.shape[0]
    mask = np.zeros(n, dtype=bool)
    if n == 0:
        return mask
    better = np.where(maximize, values, -values)  # larger is better in every column
    scale = better.std(0)
    order = np.argsort(-(better / np.where(scale > 0, scale, 1.0)).sum(1), kind="stable")
    # The best few thousand rows' front already dominates most of the rest: prune with its points one at a
    # time (each pass shrinks what the next one scans), then run the exact block sweep over what is left.
    head = order[: 8 * block]
    tail = order[8 * block :]
    for point in better[head[_sweep(better[head], block)]]:
        rows = better[tail]
        tail = tail[~((point >= rows).all(1) & (point > rows).any(1))]
    remaining = np.concatenate([head, tail])
    mask[remaining[_sweep(better[remaining], block)]] = True
    return mask


def _sweep(better: np.ndarray, block: int) -> np.ndarray:
    """Front mask of rows already sorted best-first (see pareto_front)."""
    keep_all = np.zeros(better.shape[0], dtype=bool)
    front = np.empty((0, better.shape[1]))
    for start in range(0, better.shape[0], block):
        chunk = better[start : start + block]
        keep = ~_dominated(chunk, front) & ~_dominated(chunk, chunk)
        keep_all[start : start + block] = keep
        front = np.concatenate([front, chunk[keep]])
    return keep_all


PIVOT_ROWS = 2048  # best-scored rows whose front prunes the rest before the exact Pareto sweep
MAX_PIVOTS = 64
BEST_FIRST = "score DESC, candidate_key"  # the rank order: score, ties by key (= by the hex candidate id)
MAX_COUNTED_RANKS = 32  # front members beyond the top k ranked by counting; more are ranked by a window sort


def rank_run(catalog: Any, run_id: str, spec: RankingSpec, store: bool = True) -> pl.DataFrame:
    """Filter, score and rank one run's candidates; store the ranking and return it, best first.

    Returned rows: the top-k by score plus every Pareto-front member (with its own rank among all kept rows),
    each with rank, score, pareto, the candidate's columns, predictions, the Debye quantities the spec uses
    (`{quantity}_{T}K_debye`) and the objective values (`objective_{label}`).

    The work stays in DuckDB, and only the winners' rows come back to Python: the kept rows' keys and
    objectives go to a temporary table, the top-k is an ORDER BY ... LIMIT, and the front is found by pruning
    every row some pivot (the front of the best-scored rows) dominates, in SQL, then an exact sweep in numpy
    over what is left. Pruning by any row is safe: whatever a pivot dominates is off the front, and a row a
    pruned row dominates is dominated by that row's pivot too, so the front of the survivors is the front.
    """
    query, params = compile_spec(spec)
    params["run"] = run_id
    thermo = _thermo_columns(spec)
    n_objectives = len(spec.objectives)
    objective_columns = ", ".join(f"objective_{i}" for i in range(n_objectives))
    with catalog.connect(write=False) as con:
        _register_thermo(con, run_id, thermo)
        con.execute(f"CREATE TEMP TABLE kept AS {query}", params)
        bounds, score, score_params = score_sql(spec)
        con.execute(f"CREATE TEMP TABLE bounds AS {bounds}", score_params)
        con.execute(f"CREATE TEMP VIEW scored AS SELECT kept.*, {score} AS score FROM kept, bounds")
        top = _column(con.execute(f"SELECT candidate_key FROM scored ORDER BY {BEST_FIRST} LIMIT {int(spec.top_k)}"))
        winners = pl.DataFrame({"candidate_key": top, "rank": np.arange(1, len(top) + 1)}, schema=_WINNERS)
        if spec.pareto:
            front = _front_keys(con, spec, objective_columns)
            winners = winners.with_columns(pl.col("candidate_key").is_in(front.tolist()).alias("pareto"))
            beyond = np.setdiff1d(front, top)
            if beyond.size:
                winners = pl.concat([winners, _ranks_of(con, beyond).with_columns(pl.lit(True).alias("pareto"))])
        else:
            winners = winners.with_columns(pl.lit(False).alias("pareto"))
        con.register("winners", winners.to_arrow())
        # The winners' rows are read by row id (a direct read; a filter on any other column scans every row of
        # the columns fetched), and their candidates' row ids come from a scan of the key column alone.
        con.execute(
            "CREATE TEMP TABLE chosen AS SELECT * FROM winners JOIN scored USING (candidate_key) JOIN "
            "(SELECT rowid AS candidate_row, candidate_key FROM candidates "
            " WHERE candidate_key IN (SELECT candidate_key FROM winners)) USING (candidate_key)"
        )
        renames = {f"objective_{i}": f"objective_{o.label}" for i, o in enumerate(spec.objectives)}
        renames |= {name: thermo_label(quantity, temperature) for (quantity, temperature), name in thermo.items()}
        rename = ", ".join(f"{old} AS {new}" for old, new in renames.items())
        ranked = con.sql(
            f"""SELECT k.rank, p.candidate_id, c.formula, c.spacegroup, k.score, k.pareto,
       p.* EXCLUDE (run_id, candidate_id, model_scope, error, {", ".join(FILTER_COPIES)}), c.crystal_system,
       c.nelements, c.elements, c.scope,
       k.* EXCLUDE (rank, pareto, candidate_key, prediction_row, candidate_row, score) RENAME ({rename})
FROM chosen k
JOIN (SELECT rowid AS prediction_row, * FROM predictions WHERE rowid IN (SELECT prediction_row FROM chosen)) p
  USING (prediction_row)
JOIN (SELECT rowid AS candidate_row, * FROM candidates WHERE rowid IN (SELECT candidate_row FROM chosen)) c
  USING (candidate_row)
ORDER BY k.rank"""
        ).pl()  # the temporary tables go with the connection
    if store:
        store_ranking(catalog, run_id, spec, ranked)
    return ranked


_WINNERS = {"candidate_key": pl.UInt64, "rank": pl.Int64}


def _register_thermo(con: Any, run_id: str, thermo: dict[tuple[str, float], str]) -> None:
    """The `thermo_i(theta_key, value)` tables compile_spec joins: read from the run's stored curve library when
    the temperature is on its grid, computed for the run's θ_D keys otherwise."""
    if not thermo:
        return
    grid = con.execute(
        "SELECT r.grid_id, g.temperatures FROM runs r JOIN temperature_grids g ON g.grid_id = r.grid_id "
        "WHERE r.run_id = ?",
        [run_id],
    ).fetchall()
    grid_id, temperatures = grid[0] if grid else (None, [])
    on_grid = {float(np.float32(t)): i for i, t in enumerate(temperatures)}
    theta_keys = None
    for (quantity, temperature), name in thermo.items():
        index = on_grid.get(float(np.float32(temperature)))
        if index is not None:  # quantity is one of cv/u/s/f (closed vocabulary), index an int
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT theta_key, CAST({quantity}[{index + 1}] AS DOUBLE) "
                "AS value FROM debye_curve_library WHERE grid_id = ?",
                [grid_id],
            )
            continue
        if theta_keys is None:
            theta_keys = _column(
                con.execute(
                    f"SELECT DISTINCT {theta_key_sql('debye_temperature')} "
                    "FROM predictions WHERE run_id = ? AND debye_temperature IS NOT NULL",
                    [run_id],
                )
            ).astype(np.int64)
        con.register(name, thermo_lookup(quantity, temperature, theta_keys).to_arrow())


def _column(result: Any) -> np.ndarray:
    """The one column of a DuckDB result as a numpy array."""
    return next(iter(result.fetchnumpy().values()))


def _front_keys(con: Any, spec: RankingSpec, objective_columns: str) -> np.ndarray:
    """Keys of the Pareto-front members among the kept rows (see rank_run)."""
    maximize = np.array([o.direction == "maximize" for o in spec.objectives])
    head = con.execute(f"SELECT {objective_columns} FROM scored ORDER BY {BEST_FIRST} LIMIT {PIVOT_ROWS}")
    head_values = np.column_stack(list(head.fetchnumpy().values())).astype(np.float64)
    pivots = head_values[pareto_front(head_values, maximize)] if len(head_values) else head_values
    if len(pivots) > MAX_PIVOTS:  # spread along the front (they come best-scored first)
        pivots = pivots[np.linspace(0, len(pivots) - 1, MAX_PIVOTS).round().astype(int)]
    sql = _Sql()
    dominated = []
    for pivot in pivots:
        weak, strict = [], []
        for i, (value, up) in enumerate(zip(pivot.tolist(), maximize, strict=True)):
            bound = sql.param(value)
            weak.append(f"objective_{i} {'<=' if up else '>='} {bound}")
            strict.append(f"objective_{i} {'<' if up else '>'} {bound}")
        dominated.append(f"({' AND '.join(weak)} AND ({' OR '.join(strict)}))")
    where = f"WHERE NOT ({' OR '.join(dominated)})" if dominated else ""
    rest = con.execute(f"SELECT candidate_key, {objective_columns} FROM scored {where}", sql.params).fetchnumpy()
    keys = rest.pop("candidate_key")
    if keys.size == 0:
        return keys.astype(np.uint64)
    values = np.column_stack(list(rest.values())).astype(np.float64)
    return keys[pareto_front(values, maximize)].astype(np.uint64)


def _ranks_of(con: Any, keys: np.ndarray) -> pl.DataFrame:
    """The rank (1 = best score, ties by candidate key) of kept rows beyond the top k, e.g. front members.

    A few rows: one scan counts the rows ahead of each (one filtered count per row). More: a window sorts the
    rows scored at least as high as the lowest of them (only those can come first).
    """
    con.register("wanted", pl.DataFrame({"candidate_key": keys}, schema={"candidate_key": pl.UInt64}).to_arrow())
    if len(keys) <= MAX_COUNTED_RANKS:
        members = con.execute("SELECT candidate_key, score FROM scored JOIN wanted USING (candidate_key)").fetchall()
        sql = _Sql()
        counts = [
            f"1 + count(*) FILTER (WHERE score > {(s := sql.param(score))} OR "
            f"(score = {s} AND candidate_key < {sql.param(key)}))"
            for key, score in members
        ]
        ranks = con.execute(f"SELECT {', '.join(counts)} FROM scored", sql.params).fetchall()[0]
        return pl.DataFrame({"candidate_key": [k for k, _ in members], "rank": list(ranks)}, schema=_WINNERS)
    return (
        con.sql(
            f"""SELECT candidate_key, rank FROM (
  SELECT candidate_key, row_number() OVER (ORDER BY {BEST_FIRST}) AS rank FROM scored
  WHERE score >= (SELECT min(s.score) FROM scored s JOIN wanted w ON w.candidate_key = s.candidate_key)
) WHERE candidate_key IN (SELECT candidate_key FROM wanted)"""
        )
        .pl()
        .cast(_WINNERS)
    )


def store_ranking(catalog: Any, run_id: str, spec: RankingSpec, ranked: pl.DataFrame) -> None:
    """Replace this (run, spec)'s stored ranking with `ranked`, in one transaction."""
    spec_id = spec.spec_id
    rows = ranked.select(
        pl.lit(run_id).alias("run_id"),
        pl.lit(spec_id).alias("spec_id"),
        "candidate_id",
        pl.col("rank").cast(pl.Int32),
        pl.col("score").cast(pl.Float64),
        pl.col("pareto").cast(pl.Boolean),
        pl.lit(datetime.now(UTC)).alias("ranked_at"),
    )
    with catalog.connect(write=True) as con:
        con.execute(
            "INSERT INTO ranking_specs SELECT ?, ?, ?, now() "
            "WHERE NOT EXISTS (SELECT 1 FROM ranking_specs WHERE spec_id = ?)",
            [spec_id, spec.name, spec.model_dump_json(), spec_id],
        )
        con.execute("DELETE FROM rankings WHERE run_id = ? AND spec_id = ?", [run_id, spec_id])
        con.register("batch_rankings", rows.to_arrow())
        con.execute("INSERT INTO rankings SELECT * FROM batch_rankings")


__all__ = [
    "PROPERTY_COLUMNS",
    "THERMO_UNITS",
    "Filters",
    "Objective",
    "Range",
    "RankingSpec",
    "SpecError",
    "ThermoFilter",
    "compile_spec",
    "pareto_front",
    "rank_run",
]

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

from catalogs.schema import PREDICTION_VALUES, PROPERTY_COLUMNS, THETA_KEY_SCALE

RANKABLE = tuple(c for c in PREDICTION_VALUES if not c.endswith("_std"))  # properties filters and objectives use
STD_OF = {c: f"{c}_std" for c in RANKABLE if f"{c}_std" in PREDICTION_VALUES}
THERMO = ("cv", "u", "s", "f")
THERMO_UNITS = {"cv": "J/(K mol atoms)", "u": "J/mol atoms", "s": "J/(K mol atoms)", "f": "J/mol atoms"}
CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic")
Temperature = Annotated[float, Field(ge=1.0, le=3000.0, description="Temperature in K (1-3000).")]


class SpecError(ValueError):
    """A ranking spec that cannot be used; the message names the offending field."""


_ALL_SYMBOLS = [
    "H",
    "He",
    "Li",
    "Be",
    "B",
    "C",
    "N",
    "O",
    "F",
    "Ne",
    "Na",
    "Mg",
    "Al",
    "Si",
    "P",
    "S",
    "Cl",
    "Ar",
    "K",
    "Ca",
    "Sc",
    "Ti",
    "V",
    "Cr",
    "Mn",
    "Fe",
    "Co",
    "Ni",
    "Cu",
    "Zn",
    "Ga",
    "Ge",
    "As",
    "Se",
    "Br",
    "Kr",
    "Rb",
    "Sr",
    "Y",
    "Zr",
    "Nb",
    "Mo",
    "Tc",
    "Ru",
    "Rh",
    "Pd",
    "Ag",
    "Cd",
    "In",
    "Sn",
    "Sb",
    "Te",
    "I",
    "Xe",
    "Cs",
    "Ba",
    "La",
    "Ce",
    "Pr",
    "Nd",
    "Pm",
    "Sm",
    "Eu",
    "Gd",
    "Tb",
    "Dy",
    "Ho",
    "Er",
    "Tm",
    "Yb",
    "Lu",
    "Hf",
    "Ta",
    "W",
    "Re",
    "Os",
    "Ir",
    "Pt",
    "Au",
    "Hg",
    "Tl",
    "Pb",
    "Bi",
    "Po",
    "At",
    "Rn",
    "Fr",
    "Ra",
    "Ac",
    "Th",
    "Pa",
    "U",
    "Np",
    "Pu",
    "Am",
    "Cm",
    "Bk",
    "Cf",
    "Es",
    "Fm",
    "Md",
    "No",
    "Lr",
]


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
            if symbol not in _ALL_SYMBOLS:
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
        return f"{self.property}_{self.temperature:g}K" if self.temperature is not None else self.property


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
    """The SQL that filters one run's predictions and scores them, with its parameters.

    The query expects `$run` and, for each thermo column, a registered table `thermo_i(theta_key, value)`.
    It returns candidate_id, every prediction and candidate column, the thermo and objective columns, score.
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
        where.append(f"list_has_all(c.elements, {sql.param(f.require_elements)}::VARCHAR[])")
    if f.exclude_elements:
        where.append(f"NOT list_has_any(c.elements, {sql.param(f.exclude_elements)}::VARCHAR[])")
    if f.spacegroups:
        where.append(f"list_contains({sql.param(f.spacegroups)}::SMALLINT[], c.spacegroup)")
    if f.crystal_systems:
        where.append(f"list_contains({sql.param(f.crystal_systems)}::VARCHAR[], c.crystal_system)")
    where += _range_sql(sql, "c.nelements", f.nelements)

    joins = "".join(
        f" LEFT JOIN {name} ON {name}.theta_key = CAST(round(p.debye_temperature * {THETA_KEY_SCALE}) AS INTEGER)"
        for name in thermo.values()
    )
    objective_sql, goodness = [], []
    for i, o in enumerate(spec.objectives):
        if o.property in THERMO:
            value = f"{thermo[(o.property, o.temperature)]}.value"
        elif o.bound == "confidence":
            sign = "-" if o.direction == "maximize" else "+"  # the pessimistic side
            value = f'(p."{o.property}" {sign} {sql.param(o.z)} * p."{STD_OF[o.property]}")'
        else:
            value = f'p."{o.property}"'
        objective_sql.append(f"{value} AS objective_{i}")
        scaled = (
            f"(objective_{i} - min(objective_{i}) OVER ()) / "
            f"nullif(max(objective_{i}) OVER () - min(objective_{i}) OVER (), 0)"
        )
        good = scaled if o.direction == "maximize" else f"1 - {scaled}"
        goodness.append(f"{sql.param(o.weight)} * coalesce({good}, 1.0)")
    total_weight = sum(o.weight for o in spec.objectives)
    thermo_select = "".join(f", {name}.value AS {name}" for name in thermo.values())
    query = f"""
WITH kept AS (
  SELECT p.* EXCLUDE (run_id, model_scope, error), c.formula, c.spacegroup, c.crystal_system, c.nelements,
         c.elements, c.scope{thermo_select}, {", ".join(objective_sql)}
  FROM predictions p JOIN candidates c ON c.candidate_id = p.candidate_id{joins}
  WHERE {" AND ".join(where)}
)
SELECT *, ({" + ".join(goodness)}) / {sql.param(total_weight)} AS score
FROM kept
WHERE {" AND ".join(f"objective_{i} IS NOT NULL" for i in range(len(spec.objectives)))}
"""
    return query, sql.params


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


def rank_run(catalog: Any, run_id: str, spec: RankingSpec, store: bool = True) -> pl.DataFrame:
    """Filter, score and rank one run's candidates; store the ranking and return it, best first.

    Returned rows: the top-k by score plus every Pareto-front member (with its own rank), each with rank,
    score, pareto, the candidate's columns, predictions and objective values.
    """
    query, params = compile_spec(spec)
    params = {**params, "run": run_id}
    thermo = _thermo_columns(spec)
    with catalog.connect(write=False) as con:
        keys = np.array(
            [
                k
                for (k,) in con.execute(
                    f"SELECT DISTINCT CAST(round(debye_temperature * {THETA_KEY_SCALE}) AS INTEGER) FROM predictions "
                    "WHERE run_id = ? AND debye_temperature IS NOT NULL",
                    [run_id],
                ).fetchall()
            ],
            dtype=np.int64,
        )
        for (quantity, temperature), name in thermo.items():
            con.register(name, thermo_lookup(quantity, temperature, keys).to_arrow())
        ranked_sql = f"SELECT *, row_number() OVER (ORDER BY score DESC, candidate_id) AS rank FROM ({query})"
        if spec.pareto:
            kept = con.sql(ranked_sql, params=params).pl()
        else:
            kept = con.sql(f"{ranked_sql} ORDER BY rank LIMIT {int(spec.top_k)}", params=params).pl()
    if spec.pareto and kept.height:
        objectives = kept.select(f"objective_{i}" for i in range(len(spec.objectives))).to_numpy()
        maximize = np.array([o.direction == "maximize" for o in spec.objectives])
        pareto = pareto_front(objectives.astype(np.float64), maximize)
        kept = kept.with_columns(pl.Series("pareto", pareto))
        kept = kept.filter((pl.col("rank") <= spec.top_k) | pl.col("pareto"))
    else:
        kept = kept.with_columns(pl.lit(False).alias("pareto"))
    renames = {f"objective_{i}": f"objective_{o.label}" for i, o in enumerate(spec.objectives)}
    renames |= {name: f"{quantity}_{temperature:g}K" for (quantity, temperature), name in thermo.items()}
    kept = kept.sort("rank").rename(renames)
    front = ["rank", "candidate_id", "formula", "spacegroup", "score", "pareto"]
    kept = kept.select(*front, pl.exclude(*front))
    if store:
        store_ranking(catalog, run_id, spec, kept)
    return kept


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

"""The catalog's schema: tables, views and the forward migrations that build them.

A catalog records its version in `schema_version`. A new file runs every migration from 0; an older file runs
the ones it lacks, in order, in one transaction; a file newer than this code is refused (never half-read).

Layout decisions (the numbers behind them are in bench/README.md):
- No primary-key indexes on the big tables. DuckDB's ART index makes appends ~3x slower and the file ~3x
  larger; idempotency comes from the writer's anti-join against the rows of the same run instead
  (catalog.Writer), which zone maps keep cheap because a run's rows are contiguous.
- Debye curves are a function of θ_D alone, so they are stored once per distinct θ_D (rounded to 0.1 K) and
  temperature grid in `debye_curve_library`, and `debye_curves` is a view that gives every (run, candidate)
  its curve. At 10 million candidates × 100 temperatures that is ~30,000 stored curves (~50 MB) instead of
  4 × 10^9 floats (16 GB), appends write nothing per candidate beyond θ_D, and Cv or U at any temperature
  filters by a join on an integer key. The rounding moves Cv by < 0.15 % for θ_D > 100 K (3 × 0.05 K / θ_D
  in the T³ regime, less elsewhere): far inside the model's uncertainty.
- Floats are FLOAT (32 bit): the model computes in float32, so DOUBLE would store noise.
- Rankings scan one table of integers (migration 4): `candidate_key` is the 16-hex candidate_id read as a
  UBIGINT (a bijection, so it orders like the id), `element_mask` has bit i set when ELEMENTS[i] is present, so
  an element filter is one AND on a HUGEINT instead of a list search, and the candidate columns filters read
  (FILTER_COPIES) are copied into `predictions`, so a ranking never joins 10 M rows to 10 M rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROPERTY_COLUMNS = ("formation_energy_per_atom", "band_gap", "log10_k_vrh", "log10_g_vrh")
PREDICTION_VALUES = (
    *[c for p in PROPERTY_COLUMNS for c in (p, f"{p}_std")],
    "debye_temperature",
    "cv_300K",
    "cv_300K_std",
)
THETA_KEY_SCALE = 10  # θ_D key = round(θ_D × 10): curves stored per 0.1 K


# The θ_D key, computed the same way in SQL and numpy: θ_D (FLOAT) widened to DOUBLE, times 10 (exact in
# DOUBLE), rounded half away from zero (DuckDB's round). In float32, or with numpy's or polars' half-to-even
# rounding, ~1 value in 2,000 lands on the neighbouring key (e.g. 400.05 -> 4000.5 -> 4000 or 4001).
def theta_key_sql(column: str) -> str:
    """SQL for the θ_D key of a θ_D column."""
    return f"CAST(round(CAST({column} AS DOUBLE) * {THETA_KEY_SCALE}) AS INTEGER)"


def theta_keys(theta: np.ndarray) -> np.ndarray:
    """The θ_D keys of an array of θ_D values (the numpy twin of theta_key_sql)."""
    scaled = np.asarray(theta).astype(np.float64) * THETA_KEY_SCALE
    return (np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)).astype(np.int64)


# Bit i of element_mask is ELEMENTS[i] (atomic number i + 1); 118 bits fit a HUGEINT.
_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr Rb Sr Y Zr "
    "Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir "
    "Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl "
    "Mc Lv Ts Og"
)
ELEMENTS = tuple(_SYMBOLS.split())


# Candidate columns that ranking filters read, copied into each prediction row, so that a ranking scans
# `predictions` alone: joining 10 M predictions to 10 M candidates cost ~10x the filtered scan itself.
FILTER_COPIES = {
    "candidate_key": "UBIGINT",
    "element_mask": "HUGEINT",
    "nelements": "TINYINT",
    "spacegroup": "SMALLINT",
}


def candidate_key_sql(column: str) -> str:
    """SQL for the UBIGINT key of a 16-hex candidate id column."""
    return f"('0x' || {column})::UBIGINT"


def element_mask_sql(column: str) -> str:
    """SQL for the element bit mask of a VARCHAR[] element column (unknown symbols set no bit)."""
    symbols = "[" + ", ".join(f"'{e}'" for e in ELEMENTS) + "]"  # a constant of this module, not user input
    return (
        f"coalesce(list_sum(list_transform(list_distinct({column}), lambda e: "
        f"1::HUGEINT << (list_position({symbols}, e) - 1)::HUGEINT)), 0::HUGEINT)"
    )


def element_mask(symbols: list[str]) -> int:
    """The bit mask of a list of element symbols (the Python twin of element_mask_sql)."""
    return sum(1 << ELEMENTS.index(e) for e in set(symbols))


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


_PREDICTION_FLOATS = ",\n    ".join(f'"{c}" FLOAT' for c in PREDICTION_VALUES)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "runs, candidates, predictions",
        (
            """CREATE TABLE runs (
    run_id VARCHAR NOT NULL,
    flow VARCHAR NOT NULL,
    status VARCHAR NOT NULL,           -- running | completed | failed | interrupted
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    source VARCHAR,
    parameters JSON,
    model_id VARCHAR,
    model_hash VARCHAR,                -- SHA-256 of the bundle's weights
    model_card JSON,                   -- training data, encoder fingerprint, metrics
    code_version VARCHAR,
    host VARCHAR,
    device VARCHAR,
    timings JSON,
    counts JSON,
    message VARCHAR
)""",
            """CREATE TABLE candidates (
    candidate_id VARCHAR NOT NULL,     -- hash of canonical SCOPE + structure hash (cloud_core.encode.identity)
    scope VARCHAR NOT NULL,            -- canonical SCOPE
    structure_hash VARCHAR NOT NULL,
    formula VARCHAR,
    elements VARCHAR[],
    nelements TINYINT,
    nsites INTEGER,
    spacegroup SMALLINT,
    crystal_system VARCHAR,
    source VARCHAR,
    source_id VARCHAR,
    structure VARCHAR,                 -- the input structure as text, when known
    structure_format VARCHAR,          -- cif | json (pymatgen Structure) | poscar | extxyz
    first_run_id VARCHAR,
    added_at TIMESTAMPTZ
)""",
            f"""CREATE TABLE predictions (
    run_id VARCHAR NOT NULL,
    candidate_id VARCHAR NOT NULL,
    model_scope VARCHAR,               -- the SCOPE string the model read (its variant is in the model card)
    {_PREDICTION_FLOATS},
    error VARCHAR                      -- null when predicted
)""",
        ),
    ),
    Migration(
        2,
        "Debye curves: temperature grids and the per-θ_D curve library",
        (
            "ALTER TABLE runs ADD COLUMN grid_id VARCHAR",
            """CREATE TABLE temperature_grids (
    grid_id VARCHAR NOT NULL,
    temperatures FLOAT[] NOT NULL       -- K, ascending
)""",
            """CREATE TABLE debye_curve_library (
    grid_id VARCHAR NOT NULL,
    theta_key INTEGER NOT NULL,        -- round(θ_D × 10)
    cv FLOAT[] NOT NULL,               -- J/(K mol of atoms), one value per grid temperature
    u FLOAT[] NOT NULL,                -- J/(mol of atoms), zero-point energy included
    s FLOAT[] NOT NULL,                -- J/(K mol of atoms)
    f FLOAT[] NOT NULL                 -- J/(mol of atoms)
)""",
        ),
    ),
    Migration(
        3,
        "rankings, ranking specs and per-input failures",
        (
            """CREATE TABLE ranking_specs (
    spec_id VARCHAR NOT NULL,          -- hash of the spec's canonical JSON
    name VARCHAR,
    spec JSON NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
)""",
            """CREATE TABLE rankings (
    run_id VARCHAR NOT NULL,
    spec_id VARCHAR NOT NULL,
    candidate_id VARCHAR NOT NULL,
    rank INTEGER,                      -- 1 = best score; null for Pareto-front members beyond the top k
    score DOUBLE,
    pareto BOOLEAN NOT NULL,
    ranked_at TIMESTAMPTZ NOT NULL
)""",
            """CREATE TABLE failures (
    run_id VARCHAR NOT NULL,
    source VARCHAR,
    source_id VARCHAR NOT NULL,
    stage VARCHAR NOT NULL,            -- read | encode
    error VARCHAR NOT NULL
)""",
        ),
    ),
    Migration(
        4,
        "integer candidate keys; element bit masks; filter columns copied into predictions",
        (
            "ALTER TABLE candidates ADD COLUMN candidate_key UBIGINT",
            "ALTER TABLE candidates ADD COLUMN element_mask HUGEINT",
            *[f"ALTER TABLE predictions ADD COLUMN {name} {kind}" for name, kind in FILTER_COPIES.items()],
            f"UPDATE candidates SET candidate_key = {candidate_key_sql('candidate_id')}, "
            f"element_mask = {element_mask_sql('elements')}",
            "UPDATE predictions SET "
            + ", ".join(f"{name} = c.{name}" for name in FILTER_COPIES)
            + " FROM candidates c WHERE c.candidate_id = predictions.candidate_id",
        ),
    ),
)

SCHEMA_VERSION = MIGRATIONS[-1].version

# Views are recreated after every migration, so they always match the tables.
VIEWS: dict[str, str] = {
    "debye_curves": f"""
SELECT p.run_id, p.candidate_id, p.debye_temperature, g.temperatures AS temperature, l.cv, l.u, l.s, l.f
FROM predictions p
JOIN runs r ON r.run_id = p.run_id
JOIN temperature_grids g ON g.grid_id = r.grid_id
JOIN debye_curve_library l
  ON l.grid_id = r.grid_id AND l.theta_key = {theta_key_sql("p.debye_temperature")}""",
    "debye_curve_points": """
SELECT run_id, candidate_id, unnest(temperature) AS temperature, unnest(cv) AS cv, unnest(u) AS u,
       unnest(s) AS s, unnest(f) AS f
FROM debye_curves""",
    "latest_predictions": f"""
SELECT p.* EXCLUDE ({", ".join(FILTER_COPIES)}), c.formula, c.spacegroup, c.crystal_system, c.elements,
       r.started_at AS run_started_at, r.model_id, r.model_hash
FROM predictions p JOIN runs r ON r.run_id = p.run_id JOIN candidates c ON c.candidate_key = p.candidate_key
WHERE p.error IS NULL
QUALIFY row_number() OVER (PARTITION BY p.candidate_id ORDER BY r.started_at DESC, p.run_id DESC) = 1""",
    "ranked": f"""
SELECT k.run_id, k.spec_id, s.name AS spec_name, k.rank, k.score, k.pareto, c.formula, c.spacegroup,
       c.crystal_system, c.scope, c.source, c.source_id,
       p.* EXCLUDE (run_id, candidate_id, model_scope, error, {", ".join(FILTER_COPIES)}),
       k.candidate_id
FROM rankings k
JOIN candidates c ON c.candidate_id = k.candidate_id
JOIN predictions p ON p.run_id = k.run_id AND p.candidate_id = k.candidate_id
LEFT JOIN ranking_specs s ON s.spec_id = k.spec_id""",
}

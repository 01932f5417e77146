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
"""

from __future__ import annotations

from dataclasses import dataclass

PROPERTY_COLUMNS = ("formation_energy_per_atom", "band_gap", "log10_k_vrh", "log10_g_vrh")
PREDICTION_VALUES = (
    *[c for p in PROPERTY_COLUMNS for c in (p, f"{p}_std")],
    "debye_temperature",
    "cv_300K",
    "cv_300K_std",
)
THETA_KEY_SCALE = 10  # θ_D key = round(θ_D × 10): curves stored per 0.1 K


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
    status VARCHAR NOT NULL,           -- running | completed | failed
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
  ON l.grid_id = r.grid_id AND l.theta_key = CAST(round(p.debye_temperature * {THETA_KEY_SCALE}) AS INTEGER)""",
    "debye_curve_points": """
SELECT run_id, candidate_id, unnest(temperature) AS temperature, unnest(cv) AS cv, unnest(u) AS u,
       unnest(s) AS s, unnest(f) AS f
FROM debye_curves""",
    "latest_predictions": """
SELECT p.*, c.formula, c.spacegroup, c.crystal_system, c.elements, r.started_at AS run_started_at, r.model_id,
       r.model_hash
FROM predictions p JOIN runs r ON r.run_id = p.run_id JOIN candidates c ON c.candidate_id = p.candidate_id
WHERE p.error IS NULL
QUALIFY row_number() OVER (PARTITION BY p.candidate_id ORDER BY r.started_at DESC, p.run_id DESC) = 1""",
    "ranked": """
SELECT k.run_id, k.spec_id, s.name AS spec_name, k.rank, k.score, k.pareto, c.formula, c.spacegroup,
       c.crystal_system, c.scope, c.source, c.source_id, p.* EXCLUDE (run_id, candidate_id, model_scope, error),
       k.candidate_id
FROM rankings k
JOIN candidates c ON c.candidate_id = k.candidate_id
JOIN predictions p ON p.run_id = k.run_id AND p.candidate_id = k.candidate_id
LEFT JOIN ranking_specs s ON s.spec_id = k.spec_id""",
}

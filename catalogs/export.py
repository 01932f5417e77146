"""Exports of a run's ranked candidates: a CSV or Parquet table, or a folder of CIF files, with provenance."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from catalogs.catalog import Catalog, CatalogError

CIF_SYMPREC = 0.01  # Å: the encoder's tolerance, so the CIF's space group is the one the SCOPE string names
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_name(text: object, max_length: int = 100) -> str:
    """`text` as one harmless file-name component: letters, digits, '.', '_' and '-' only (every other run of
    characters, path separators included, becomes '_'), no leading dot, at most max_length characters. Names
    made from catalog values (formulas, ids) can then never leave the folder they are written to."""
    name = _UNSAFE_IN_NAME.sub("_", str(text)).lstrip(".")[:max_length]
    return name or "_"


def path_inside(folder: Path, name: str) -> Path:
    """folder / name, refused (ValueError) if it would resolve outside `folder`."""
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise ValueError(f"refusing to write {name!r} outside {folder}")
    return path


def ranked_with_provenance(catalog: Catalog, run_id: str | None = None, top: int | None = None) -> pl.DataFrame:
    """A run's latest stored ranking, best first, with the provenance columns every export carries."""
    run = catalog.run(run_id)
    spec = catalog.query(
        "SELECT spec_id FROM rankings WHERE run_id = ? ORDER BY ranked_at DESC LIMIT 1", [run["run_id"]]
    )
    if spec.is_empty():
        raise CatalogError(f"run {run['run_id']} has no ranking yet: run `cloud-screen rank` first")
    ranked = catalog.query(
        "SELECT k.*, c.structure, c.structure_format FROM ranked k JOIN candidates c USING (candidate_id) "
        "WHERE k.run_id = ? AND k.spec_id = ? ORDER BY k.rank LIMIT ?",
        [run["run_id"], spec.item(0, 0), top if top is not None else 2**31 - 1],
    )
    return ranked.with_columns(
        pl.lit(run["model_id"]).alias("model_id"),
        pl.lit(run["model_hash"]).alias("model_hash"),
        pl.lit(run["code_version"]).alias("code_version"),
        pl.lit(run["host"]).alias("host"),
        pl.lit(datetime.now(UTC).isoformat(timespec="seconds")).alias("exported_at"),
    )


def export_table(ranked: pl.DataFrame, out: Path) -> Path:
    """Write the ranked rows (without structure text) as .csv or .parquet."""
    table = ranked.drop("structure", "structure_format").with_columns(
        pl.col(pl.List(pl.String)).list.join(" ")  # CSV cannot hold lists
    )
    if out.suffix == ".csv":
        table.write_csv(out)
    elif out.suffix == ".parquet":
        table.write_parquet(out)
    else:
        raise CatalogError(f"cannot export to {out.name}: use .csv, .parquet or a folder for CIF files")
    return out


def symmetrized_cif(structure_text: str, structure_format: str) -> str:
    """The stored structure as a CIF with its symmetry operations (pymatgen CifWriter at the encoder's symprec)."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    from cloud_core.structures import crystal_from_text

    crystal = crystal_from_text(structure_text, structure_format)
    species = [{element: occupancy for element, occupancy in site} for site in crystal.site_species]
    structure = Structure(Lattice(crystal.lattice), species, crystal.frac_coords)
    return str(CifWriter(structure, symprec=CIF_SYMPREC))


def export_cifs(ranked: pl.DataFrame, folder: Path) -> pl.DataFrame:
    """One `<rank>_<formula>_<candidate_id>.cif` per ranked candidate whose structure is known, plus an
    `index.csv` saying which file is which and why a candidate has none. File names are made safe (see
    safe_file_name), so no catalog value can place a file outside `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for row in ranked.iter_rows(named=True):
        name, problem = None, None
        if row["structure"] is None:
            problem = "structure not known (source gave a SCOPE string only)"
        else:
            try:
                text = symmetrized_cif(row["structure"], row["structure_format"])
                rank = f"{row['rank']:04d}" if row["rank"] is not None else "pareto"  # front members past top k
                name = f"{rank}_{safe_file_name(row['formula'])}_{safe_file_name(row['candidate_id'])}.cif"
                score = f"{row['score']:.4f}" if row["score"] is not None else "none"
                header = (
                    f"cloud-screen run {row['run_id']}, rank {row['rank']}, score {score}, "
                    f"model {row['model_id']} ({row['model_hash']}), code {row['code_version']}"
                )
                path_inside(folder, name).write_text("# " + " ".join(header.split()) + "\n" + text)
            except Exception as exc:  # one bad structure must not stop the export
                problem = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        index.append({"rank": row["rank"], "candidate_id": row["candidate_id"], "file": name, "error": problem})
    schema = {"rank": pl.Int32, "candidate_id": pl.String, "file": pl.String, "error": pl.String}
    frame = pl.DataFrame(index, schema=schema)
    frame.write_csv(folder / "index.csv")
    return frame


def write_run_report(
    catalog: Catalog, out: Path, run_id: str | None = None, top: int = 50, curves_of: int = 10
) -> Path:
    """The HTML report of a run's latest ranking (catalogs.report), with the Debye curves of its best few."""
    import json

    from catalogs.report import write_report

    run = catalog.run(run_id)
    ranked = ranked_with_provenance(catalog, run["run_id"]).drop("structure", "structure_format")
    spec = catalog.query(
        "SELECT s.spec FROM rankings k JOIN ranking_specs s USING (spec_id) WHERE k.run_id = ? "
        "ORDER BY k.ranked_at DESC LIMIT 1",
        [run["run_id"]],
    )
    objectives: list[str] = []
    if not spec.is_empty():
        from catalogs.ranking import RankingSpec

        parsed = RankingSpec.model_validate(json.loads(spec.item(0, 0)))
        objectives = [o.property if o.temperature is None else o.label for o in parsed.objectives]
        objectives = [o for o in objectives if o in ranked.columns]
    best = ranked.sort("rank").head(curves_of)["candidate_id"].to_list()
    curves = catalog.query(
        "SELECT candidate_id, temperature, cv, u, s, f FROM debye_curve_points "
        "WHERE run_id = ? AND list_contains(?::VARCHAR[], candidate_id) ORDER BY candidate_id, temperature",
        [run["run_id"], best],
    )
    return write_report(out, run, ranked, curves, objectives, title=f"cloud-screen run {run['run_id']}", top=top)

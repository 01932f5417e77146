"""Agreement of the moyopy backend with spglib on every mp37k structure (space group and Wyckoff letters).

Reports, over all structures: same space-group number; same Wyckoff letter per site; same letters up to a
normalizer permutation (i.e. the same canonical SCOPE); and lists the disagreements. Twice: for bare moyopy,
and for the guarded moyopy backend that `encode` runs (borderline structures re-analysed with spglib), with
how many structures the guard sent to spglib and how many of bare moyopy's disagreements it caught.

    python bench/agreement.py [--limit N] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from pathlib import Path

import polars as pl

from cloud_core.scope import canonical_scope
from cloud_core.structures import StructureError, crystal_from_cif
from cloud_core.symmetry import find_symmetry

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mp37k.parquet"


def compare(item: tuple[str, str]) -> dict:
    material_id, cif = item
    try:
        crystal = crystal_from_cif(cif)
        a = find_symmetry(crystal, "spglib")
        b = find_symmetry(crystal, "moyopy", guard=False)
        g = find_symmetry(crystal, "moyopy")
    except StructureError as exc:
        return {"id": material_id, "error": str(exc)}
    same_group = a.number == b.number
    canonical = canonical_scope(crystal, a)
    return {
        "id": material_id,
        "error": None,
        "sg_spglib": a.number,
        "sg_moyopy": b.number,
        "same_group": same_group,
        "same_letters": same_group and a.wyckoffs == b.wyckoffs,
        "same_canonical": same_group and canonical == canonical_scope(crystal, b),
        "sg_guarded": g.number,
        "guard_backend": g.backend,
        "guarded_same_canonical": a.number == g.number and canonical == canonical_scope(crystal, g),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    frame = pl.read_parquet(DATA).select("material_id", "cif")
    if args.limit:
        frame = frame.head(args.limit)
    with multiprocessing.Pool(args.workers) as pool:
        rows = pool.map(compare, frame.iter_rows(), chunksize=64)
    table = pl.DataFrame(rows, infer_schema_length=None)
    ok = table.filter(pl.col("error").is_null())
    summary = {
        "structures": table.height,
        "errors": table.height - ok.height,
        "same_group": int(ok["same_group"].sum()),
        "same_letters": int(ok["same_letters"].sum()),
        "same_canonical": int(ok["same_canonical"].sum()),
        "guard_flagged": int((ok["guard_backend"] == "spglib").sum()),
        "guard_caught": int((~ok["same_canonical"] & (ok["guard_backend"] == "spglib")).sum()),
        "guarded_same_canonical": int(ok["guarded_same_canonical"].sum()),
    }
    print(json.dumps(summary))
    with pl.Config(tbl_rows=200):
        print("bare moyopy vs spglib, canonical SCOPE differs:")
        columns = ("id", "sg_spglib", "sg_moyopy", "same_group", "guard_backend")
        print(ok.filter(~pl.col("same_canonical")).select(columns))
        print("guarded moyopy backend vs spglib, canonical SCOPE differs:")
        print(ok.filter(~pl.col("guarded_same_canonical")).select("id", "sg_spglib", "sg_guarded", "guard_backend"))


if __name__ == "__main__":
    main()

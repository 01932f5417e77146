"""The encoder's C kernels (cloud_core/_kernels.c) against their numpy versions on every mp37k structure.

For each structure and tolerance: moyopy's dataset, then the borderline guard's two tests both ways (the
missed-rotation answer, the symmetrising displacement and whether it passes 0.4 x symprec), and the
overlapping-atoms check both ways (its error message, or none). Reports how many answers differ (should be
none), how often each test fires, and the time per structure of each implementation.

    python bench/kernels_vs_numpy.py [--symprec 0.01,0.1] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import moyopy
import polars as pl

from cloud_core import structures, symmetry
from cloud_core.structures import StructureError, crystal_from_cif

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mp37k.parquet"


def timed(fn, *args):
    started = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - started


def overlap_outcome(crystal) -> str | None:
    try:
        structures._check_no_overlaps(crystal)
    except StructureError as exc:
        return str(exc)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symprec", default="0.01,0.1")
    parser.add_argument("--limit", type=int, default=0, help="first N structures only (0: all)")
    args = parser.parse_args()
    kernels = structures.kernels
    if kernels is None:
        raise SystemExit("cloud_core._kernels is not built: pip install -e . with a C compiler")
    frame = pl.read_parquet(DATA, columns=["material_id", "cif"])
    if args.limit:
        frame = frame.head(args.limit)
    crystals = [crystal_from_cif(cif) for cif in frame["cif"]]
    results = {"structures": len(crystals)}
    seconds = {"overlap_c": 0.0, "overlap_numpy": 0.0}
    differ = 0
    for crystal in crystals:
        with_c, spent = timed(overlap_outcome, crystal)
        seconds["overlap_c"] += spent
        structures.kernels = None
        without, spent = timed(overlap_outcome, crystal)
        seconds["overlap_numpy"] += spent
        structures.kernels = kernels
        differ += with_c != without
    results["overlap"] = {"differ": differ, **{k: round(v / len(crystals) * 1e6, 1) for k, v in seconds.items()}}
    for symprec in (float(x) for x in args.symprec.split(",")):
        counts = {"missed": 0, "missed_differ": 0, "displaced": 0, "displaced_differ": 0, "max_difference_A": 0.0}
        spent = dict.fromkeys(("missed_c", "missed_numpy", "displacement_c", "displacement_numpy"), 0.0)
        threshold = symmetry.BORDERLINE_DISPLACEMENT * symprec
        for crystal in crystals:
            lattice, frac, numbers = crystal.lattice, crystal.frac_coords, crystal.kind_numbers()
            cell = moyopy.Cell(lattice.tolist(), frac.tolist(), numbers.tolist())
            dataset = moyopy.MoyoDataset(cell, symprec=symprec)
            in_c, t = timed(symmetry._missed_rotation, dataset, lattice, frac, numbers, symprec)
            spent["missed_c"] += t
            rotations = dataset.operations.rotations
            reference, t = timed(symmetry._missed_rotation_numpy, rotations, lattice, frac, numbers, symprec)
            spent["missed_numpy"] += t
            counts["missed"] += reference
            counts["missed_differ"] += in_c != reference
            in_c, t = timed(symmetry._symmetrizing_displacement, dataset, frac)
            spent["displacement_c"] += t
            symmetry.kernels = None
            reference, t = timed(symmetry._symmetrizing_displacement, dataset, frac)
            spent["displacement_numpy"] += t
            symmetry.kernels = kernels
            counts["displaced"] += reference > threshold
            counts["displaced_differ"] += (in_c > threshold) != (reference > threshold)
            counts["max_difference_A"] = max(counts["max_difference_A"], abs(in_c - reference))
        per_structure_us = {k: round(v / len(crystals) * 1e6, 1) for k, v in spent.items()}
        results[f"guard at symprec {symprec:g}"] = {**counts, "us_per_structure": per_structure_us}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

"""Official SCOPE variant against the reference CLOUD strings, with every difference explained.

The reference strings (`cloud_reference/cloud_cv_*.csv`) carry no material id. About 1,250 of them are materials
of `phonon_thermo1k.parquet` (same phonon database); a material pairs with a reference string when its
composition part and atom count are unique on both sides and equal. Each pair whose strings differ gets a
category:

- `letters swapped between sites`: the same set of Wyckoff symbols, but two equivalent letters (e.g. 2c and 2d)
  trade places between the elements (another origin choice related by the Euclidean normalizer);
- `equivalent Wyckoff letters`: the letters differ by a permutation of the space group's Euclidean normalizer
  (e.g. 2c/2d): the same crystal, described from another origin or setting, so the canonical strings agree;
- `space group`: another space group (the reference and this run disagree at the tolerance's edge);
- `other`: none of the above.

    python bench/official_vs_reference.py [--workers 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REFERENCE_FILES = ("cloud_cv_train_and_val.csv", "cloud_cv_test.csv")


def reference_pairs(data: Path = DATA, workers: int = 2) -> pl.DataFrame:
    """phonon_thermo1k materials paired with reference strings: material_id, cif, nsites, scope (ours), cloud."""
    from cloud_core.encode import EncodeSettings, encode_table

    phonon = pl.read_parquet(data / "phonon_thermo1k.parquet")
    reference = pl.concat([pl.read_csv(data / "cloud_reference" / f) for f in REFERENCE_FILES])
    ours = encode_table(phonon.select("material_id", "cif"), EncodeSettings(variant="official"), workers=workers)
    errors = ours.filter(pl.col("error").is_not_null())
    if errors.height:
        raise RuntimeError(f"{errors.height} phonon_thermo1k structures failed to encode: {errors.head(5)}")
    ours = ours.rename({"id": "material_id"}).join(phonon.select("material_id", "cif"), on="material_id")
    ours = ours.with_columns(key=pl.col("scope").str.split(" | ").list.get(2) + "#" + pl.col("nsites").cast(pl.String))
    reference = reference.with_columns(
        key=pl.col("cloud").str.split(" | ").list.get(2) + "#" + pl.col("n_atoms").cast(pl.Int64).cast(pl.String)
    )
    unique_ours = ours.filter(pl.col("key").is_unique())
    unique_ref = reference.filter(pl.col("key").is_unique())
    return unique_ours.join(unique_ref.select("key", "cloud"), on="key").select(
        "material_id", "cif", "nsites", "spacegroup", "scope", "cloud"
    )


def explain(ours: str, reference: str, cif: str) -> str:
    """Category of one difference (see the module docstring)."""
    from cloud_core.scope import canonical_scope
    from cloud_core.structures import crystal_from_cif
    from cloud_core.symmetry import find_symmetry

    generators, wyckoff, _ = ours.split(" | ")
    ref_generators, ref_wyckoff, _ = reference.split(" | ")
    if generators != ref_generators:
        return "space group"
    if sorted(wyckoff.split()) == sorted(ref_wyckoff.split()):
        return "letters swapped between sites"
    # Rewrite the reference's letters through our canonical form: equal canonical strings mean the letter sets
    # differ by a normalizer permutation.
    crystal = crystal_from_cif(cif)
    symmetry = find_symmetry(crystal, "spglib")
    ours_canonical = canonical_scope(crystal, symmetry).split(" | ")[1]
    ref_letters = sorted({symbol.lstrip("0123456789") for symbol in ref_wyckoff.split()})
    from cloud_core import wyckoff_tables

    number = symmetry.number
    letters = wyckoff_tables.letters(number)
    indices = sorted(wyckoff_tables.letter_index(number, x) for x in ref_letters)
    best = min(tuple(sorted({p[i] for i in indices})) for p in wyckoff_tables.letter_permutations(number))
    ref_canonical = " ".join(f"{wyckoff_tables.multiplicity(number, letters[i])}{letters[i]}" for i in best)
    return "equivalent Wyckoff letters" if ref_canonical == ours_canonical else "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    pairs = reference_pairs(workers=args.workers)
    equal = int((pairs["scope"] == pairs["cloud"]).sum())
    print(f"byte-identical: {equal} / {pairs.height} ({100 * equal / pairs.height:.2f}%)")
    differ = pairs.filter(pl.col("scope") != pl.col("cloud"))
    differ = differ.with_columns(
        category=pl.Series([explain(o, r, c) for o, r, c in differ.select("scope", "cloud", "cif").iter_rows()])
    )
    print(differ.group_by("category").len().sort("len", descending=True))
    with pl.Config(tbl_rows=500, fmt_str_lengths=200, tbl_width_chars=400):
        print(differ.select("material_id", "category", "scope", "cloud").sort("category", "material_id"))


if __name__ == "__main__":
    main()

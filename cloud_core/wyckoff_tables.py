"""Wyckoff letters, multiplicities and normalizer letter permutations for the 230 space groups.

Two standardizations of one crystal can differ by an element of the space group's Euclidean normalizer, which
relabels Wyckoff positions (rock salt is Na 4a + Cl 4b or Na 4b + Cl 4a; the eight inversion centres 1a..1h of
P-1 are all equivalent). Canonical SCOPE strings therefore need, per group, the letters with their multiplicities
and the letter permutations the normalizer induces. This module derives that table from spglib and moyopy and
ships it as ``cloud_core/data/wyckoff_tables.json``:

    python -m cloud_core.wyckoff_tables [--out PATH]

Derivation, per space group (spglib's default setting, i.e. the smallest Hall number of the type):

1. Take the conventional symmetry operations (centring included) from spglib's database.
2. On a rational grid (denominator 24, which contains every special coordinate of the ITA tables: 1/8, 1/3, 1/12,
   ...) compute each point's site-symmetry group as the set of operations fixing it, lattice shift included.
   Walk the special points and keep an orbit whenever a point's site-symmetry group is not yet conjugate to
   that of a kept orbit point, which keeps each Wyckoff position once (a few, in 32 groups, twice).
3. Build one decorated crystal on a generic lattice of the crystal family: each kept orbit its own atom type,
   plus two generic orbits of two more types, which pin the symmetry to exactly this group (one generic orbit
   alone can carry extra symmetry, e.g. a single atom in P1 is centrosymmetric).
4. spglib names the Wyckoff letter of every atom; the multiplicity of a letter is its orbit's size in the
   conventional cell. All letters from 'a' up to the general position's letter must appear.
5. moyopy's ``normalizer_wyckoff_positions`` on the same crystal gives the Wyckoff sequence of its standardized
   cell under each coset representative of the Euclidean normalizer (generic metric, improper elements
   included); comparing each sequence atom by atom with the identity sequence gives a letter permutation.

The runtime API (``letters``, ``multiplicity``, ``letter_index``, ``letter_permutations``) only reads the shipped
JSON; spglib and moyopy are imported inside the build functions alone.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

# Wyckoff letters in ITA order; spglib and moyopy write alpha (the 27th position of Pmmm) as 'A'.
ALPHABET = "abcdefghijklmnopqrstuvwxyzA"

SYMPREC = 1e-3  # the decorated crystals are exact, so any small tolerance works
GRID = 24  # grid denominator for special positions
# Two generic points (no special coordinates, no rational relation to each other or to the grid).
GENERIC_POINTS = ((0.0713, 0.1891, 0.2937), (0.3571, 0.4129, 0.1187))

DEFAULT_OUT = Path(__file__).parent / "data" / "wyckoff_tables.json"


# --------------------------------------------------------------------------------------------- derivation


@functools.lru_cache(maxsize=1)
def _default_hall_numbers() -> dict[int, int]:
    """Space group number -> spglib's default Hall number (the smallest of the type, the setting spglib
    standardizes to; origin choice 1 where ITA lists two, whose letters are the same as for choice 2)."""
    import spglib

    default: dict[int, int] = {}
    for hall_number in range(1, 531):
        default.setdefault(spglib.get_spacegroup_type(hall_number).number, hall_number)
    return default


def _generic_lattice(number: int) -> np.ndarray:
    """Row-wise conventional basis with a generic metric of the group's crystal family (Å), so that the
    Euclidean normalizer is the generic one and not that of an accidentally more symmetric lattice.
    Monoclinic groups use unique axis b; rhombohedral groups use hexagonal axes, as spglib's defaults do."""
    if number <= 2:
        a, b, c, alpha, beta, gamma = 5.1, 6.3, 7.2, 81.0, 86.0, 77.0
    elif number <= 15:
        a, b, c, alpha, beta, gamma = 5.1, 6.3, 7.2, 90.0, 101.0, 90.0
    elif number <= 74:
        a, b, c, alpha, beta, gamma = 5.1, 6.3, 7.2, 90.0, 90.0, 90.0
    elif number <= 142:
        a, b, c, alpha, beta, gamma = 5.1, 5.1, 7.2, 90.0, 90.0, 90.0
    elif number <= 194:
        a, b, c, alpha, beta, gamma = 5.1, 5.1, 7.2, 90.0, 90.0, 120.0
    else:
        a, b, c, alpha, beta, gamma = 6.0, 6.0, 6.0, 90.0, 90.0, 90.0
    cos_a, cos_b, cos_g = np.cos(np.radians([alpha, beta, gamma]))
    sin_g = np.sin(np.radians(gamma))
    cx = c * cos_b
    cy = c * (cos_a - cos_b * cos_g) / sin_g
    return np.array([[a, 0.0, 0.0], [b * cos_g, b * sin_g, 0.0], [cx, cy, np.sqrt(c * c - cx * cx - cy * cy)]])


def _special_orbits(rotations: np.ndarray, translations: np.ndarray, grid: int) -> list[np.ndarray]:
    """Orbits (integer grid coordinates, units of 1/grid, in [0, grid)) covering every Wyckoff position with a
    non-trivial site symmetry and a point on the grid, with few repeats.

    A point's site-symmetry group is identified exactly by, for each operation (R, t) of the list, the lattice
    vector n with R p + t = p + n, or "not fixing". Two points share a Wyckoff position iff their site-symmetry
    groups are conjugate, and the conjugates of the group of p are the groups of p's orbit points. So after
    keeping p's orbit, grid points whose group is that of an orbit point in the cell are skipped. Conjugates
    by lattice translations (the group of an orbit point shifted to a neighbouring cell) are not tracked, so a
    position whose fixed line or plane crosses the cell boundary can be kept twice; that is harmless here and
    keeps the fingerprint simple (Fm-3m still ends up with exactly one orbit per position).
    """
    scaled = translations * grid
    if not np.allclose(scaled, np.round(scaled)):
        raise ValueError(f"translations are not multiples of 1/{grid}; use a grid with a larger denominator")
    shifts = np.round(scaled).astype(np.int64)
    axis = np.arange(grid)
    points = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)  # index x*g*g + y*g + z
    images = points @ rotations.transpose(0, 2, 1) + shifts[:, None, :]  # (ops, points, 3)
    moved = images - points[None]
    fixes = np.all(moved % grid == 0, axis=2)  # (ops, points)
    # Per point, the lattice shift n of each fixing operation and a sentinel for the others: an exact
    # fingerprint of its site-symmetry group (|n| <= 3, so int8 holds it).
    fingerprint = np.where(fixes[:, :, None], moved // grid, 127).astype(np.int8).transpose(1, 0, 2).copy()

    orbits: list[np.ndarray] = []
    seen: set[bytes] = set()
    for k in np.flatnonzero(fixes.sum(axis=0) > 1):
        if fingerprint[k].tobytes() in seen:
            continue
        orbit = np.unique(images[:, k] % grid, axis=0)
        seen.update(fingerprint[i].tobytes() for i in (orbit[:, 0] * grid + orbit[:, 1]) * grid + orbit[:, 2])
        orbits.append(orbit)
    return orbits


def build_table(number: int, *, grid: int = GRID) -> dict[str, Any]:
    """Derive the table entry of space group ``number`` (1..230) in spglib's default setting.

    Returns ``{"letters": str, "multiplicities": list[int], "permutations": list[list[int]]}``: all Wyckoff
    letters in ITA order, their multiplicities in the conventional cell, and the letter permutations induced by
    the Euclidean normalizer (generic metric). ``perm[i] = j`` means letter ``i`` is mapped to letter ``j``;
    the identity comes first, the others follow in lexicographic order, without repeats. Raises ``RuntimeError``
    when the derivation misses a letter or finds an inconsistency.
    """
    import spglib

    if not 1 <= number <= 230:
        raise ValueError(f"space group number must be in 1..230, got {number}")
    hall_number = _default_hall_numbers()[number]
    operations = spglib.get_symmetry_from_database(hall_number)
    rotations = np.asarray(operations["rotations"], dtype=np.int64)
    translations = np.asarray(operations["translations"], dtype=float)

    orbits = [orbit / grid for orbit in _special_orbits(rotations, translations, grid)]
    orbits += [np.mod(rotations @ np.array(point) + translations, 1.0) for point in GENERIC_POINTS]
    positions = np.concatenate(orbits)
    types = np.repeat(np.arange(1, len(orbits) + 1), [len(orbit) for orbit in orbits])
    lattice = _generic_lattice(number)

    dataset = spglib.get_symmetry_dataset((lattice, positions, types), symprec=SYMPREC)
    if dataset is None or dataset.number != number or dataset.hall_number != hall_number:
        found = None if dataset is None else (dataset.number, dataset.hall_number)
        raise RuntimeError(f"group {number}: decorated crystal has (number, hall) {found}, not {(number, hall_number)}")

    multiplicity: dict[str, int] = {}
    start = 0
    for orbit in orbits:
        orbit_letters = set(dataset.wyckoffs[start : start + len(orbit)])
        start += len(orbit)
        if len(orbit_letters) != 1:
            raise RuntimeError(f"group {number}: one orbit got several Wyckoff letters {sorted(orbit_letters)}")
        letter = orbit_letters.pop()
        if multiplicity.setdefault(letter, len(orbit)) != len(orbit):
            raise RuntimeError(
                f"group {number}: letter {letter} found with multiplicities {multiplicity[letter]}, {len(orbit)}"
            )
    general = dataset.wyckoffs[-1]  # the last orbit is generic
    letters = ALPHABET[: ALPHABET.index(general) + 1]
    if set(multiplicity) != set(letters):
        missing = "".join(sorted(set(letters) - set(multiplicity)))
        raise RuntimeError(
            f"group {number}: Wyckoff letters {missing!r} not found on the 1/{grid} grid; "
            "try a grid with a larger denominator"
        )

    return {
        "letters": letters,
        "multiplicities": [multiplicity[letter] for letter in letters],
        "permutations": _normalizer_permutations(number, lattice, positions, types, letters, multiplicity),
    }


def _normalizer_permutations(
    number: int,
    lattice: np.ndarray,
    positions: np.ndarray,
    types: np.ndarray,
    letters: str,
    multiplicity: dict[str, int],
) -> list[list[int]]:
    """Letter permutations induced by the Euclidean normalizer, read off moyopy's Wyckoff sequences of the
    decorated crystal (which holds every letter, so each permutation is complete)."""
    import moyopy

    cell = moyopy.Cell(lattice.tolist(), positions.tolist(), types.tolist())
    dataset = moyopy.MoyoDataset(cell, symprec=SYMPREC, setting=moyopy.Setting.spglib())
    if dataset.number != number:
        raise RuntimeError(f"group {number}: moyopy finds group {dataset.number} for the decorated crystal")
    normalizer = dataset.normalizer_wyckoff_positions()
    identity = normalizer.wyckoffs
    for position in identity:
        if multiplicity.get(position.letter) != position.multiplicity:
            raise RuntimeError(
                f"group {number}: moyopy has {position.multiplicity}{position.letter}, spglib "
                f"{multiplicity.get(position.letter)}{position.letter}"
            )
    if {position.letter for position in identity} != set(letters):
        raise RuntimeError(f"group {number}: moyopy's standardized cell does not hold all letters {letters!r}")

    index = {letter: i for i, letter in enumerate(letters)}
    permutations: set[tuple[int, ...]] = set()
    for _, sequence in normalizer.coset_representatives:
        image: dict[str, str] = {}
        for before, after in zip(identity, sequence, strict=True):
            # Atoms sharing a letter must agree: the normalizer maps whole Wyckoff positions onto each other.
            if image.setdefault(before.letter, after.letter) != after.letter:
                raise RuntimeError(
                    f"group {number}: normalizer maps letter {before.letter} to both "
                    f"{image[before.letter]} and {after.letter}"
                )
        permutation = tuple(index[image[letter]] for letter in letters)
        if sorted(permutation) != list(range(len(letters))):
            raise RuntimeError(f"group {number}: normalizer letter map {image} is not a bijection")
        permutations.add(permutation)
    identity_permutation = tuple(range(len(letters)))
    permutations.discard(identity_permutation)
    return [list(identity_permutation), *map(list, sorted(permutations))]


def build_all(grid: int = GRID) -> dict[str, Any]:
    """Derive all 230 entries plus an ``_about`` record, keyed by the group number as a string."""
    import moyopy
    import spglib

    tables: dict[str, Any] = {
        "_about": {
            "content": "Per space group (spglib default setting): Wyckoff letters in ITA order ('A' = alpha), "
            "multiplicities in the conventional cell, and letter permutations induced by the Euclidean "
            "normalizer for a generic metric (improper elements included); perm[i] = j maps letter i "
            "to letter j, identity first.",
            "derivation": "cloud_core.wyckoff_tables: one orbit per Wyckoff position found on a 1/"
            f"{grid} grid plus two generic orbits, each its own atom type, on a generic lattice; "
            "letters from spglib.get_symmetry_dataset, permutations from "
            f"moyopy.MoyoDataset.normalizer_wyckoff_positions (symprec {SYMPREC}).",
            "generated_by": "python -m cloud_core.wyckoff_tables",
            "spglib": spglib.__version__,
            "moyopy": moyopy.__version__,
        }
    }
    for number in range(1, 231):
        tables[str(number)] = build_table(number, grid=grid)
    return tables


def _dumps(tables: dict[str, Any]) -> str:
    """JSON with one line per space group: small enough to ship, readable enough to review in a diff."""
    lines = [f"{json.dumps(key)}: {json.dumps(value, separators=(', ', ': '))}" for key, value in tables.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main(argv: list[str] | None = None) -> None:
    """Command line: rebuild the shipped table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output JSON (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    tables = build_all()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(_dumps(tables))
    print(f"wrote 230 space groups to {args.out} in {time.perf_counter() - start:.1f} s")


# --------------------------------------------------------------------------------------------- runtime API


@functools.lru_cache(maxsize=1)
def _tables() -> dict[int, dict[str, Any]]:
    """The shipped table, keyed by group number, with a letter -> index map added per group."""
    text = resources.files("cloud_core").joinpath("data").joinpath("wyckoff_tables.json").read_text()
    tables: dict[int, dict[str, Any]] = {}
    for key, entry in json.loads(text).items():
        if key.startswith("_"):
            continue
        tables[int(key)] = {
            "letters": entry["letters"],
            "multiplicities": tuple(entry["multiplicities"]),
            "permutations": tuple(tuple(permutation) for permutation in entry["permutations"]),
            "index": {letter: i for i, letter in enumerate(entry["letters"])},
        }
    return tables


def _entry(number: int) -> dict[str, Any]:
    try:
        return _tables()[number]
    except KeyError:
        raise ValueError(f"space group number must be in 1..230, got {number!r}") from None


def letters(number: int) -> str:
    """All Wyckoff letters of space group ``number`` in ITA order, e.g. ``'abcdefghi'`` for P-1."""
    return _entry(number)["letters"]


def letter_index(number: int, letter: str) -> int:
    """Position of ``letter`` in ``letters(number)``; ``ValueError`` if the group has no such letter."""
    try:
        return _entry(number)["index"][letter]
    except KeyError:
        raise ValueError(f"space group {number} has no Wyckoff letter {letter!r}") from None


def multiplicity(number: int, letter: str) -> int:
    """Multiplicity of Wyckoff position ``letter`` of group ``number`` in the conventional cell (4 for Fm-3m 4a)."""
    return _entry(number)["multiplicities"][letter_index(number, letter)]


def letter_permutations(number: int) -> list[tuple[int, ...]]:
    """Letter permutations induced by the Euclidean normalizer of group ``number``, as indices into
    ``letters(number)``: ``perm[i] = j`` maps letter ``i`` to letter ``j``. The identity comes first; the set is
    a group, so minimizing over it gives a canonical labelling."""
    return list(_entry(number)["permutations"])


if __name__ == "__main__":
    main()

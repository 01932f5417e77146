"""SCOPE strings: `GENERATORS | WYCKOFF | COMPOSITION`.

- GENERATORS: the space group's generator code, one character per token ("1 3 a E C C n O O O e O O D 0").
- WYCKOFF: Wyckoff symbols of the occupied sites, conventional-cell multiplicity + letter ("12c 18e").
- COMPOSITION: element / fractional amount pairs, amounts rounded to 2 decimals ("Al 0.4 O 0.6").

Three variants:

`official` reproduces the reference CLOUD strings byte for byte: spglib at symprec 0.01 Å and 5°, Wyckoff
symbols in input-site order with repeats dropped, elements in order of first appearance (pymatgen's
Composition order), amounts as `str(numpy.round(x, 2))`. It depends on site order and cell choice.

`canonical` (the default) is a function of the crystal alone. The space group is fixed by the crystal; the
Wyckoff letters are not quite: two standard descriptions of one crystal can differ by an element of the
space group's Euclidean normalizer (rock salt is Na 4a Cl 4b or Na 4b Cl 4a), which permutes letters. So we
apply every normalizer letter permutation of the group (tables in `wyckoff_tables`) and keep the smallest
result. Wyckoff symbols are then listed once each in ITA order (a, b, ..., z, A=alpha); elements are sorted
by Pauling electronegativity, then atomic number (the order of a chemical formula: cations first).

`detailed` keeps what the reduced form drops, so polymorphs with the same Wyckoff set stay apart: one token
per occupied orbit, `4a:Na`, sorted, repeated when several orbits share a letter, minimised over the
normalizer in the same way. Mixed sites write their elements joined by '+', e.g. `1a:Ba+Sr`.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable
from functools import cache, lru_cache
from typing import Literal

import numpy as np

from cloud_core import scope_tables, wyckoff_tables
from cloud_core.structures import Crystal, StructureError
from cloud_core.symmetry import DEFAULT_ANGLE_TOLERANCE, DEFAULT_SYMPREC, Backend, Symmetry, find_symmetry

Variant = Literal["official", "canonical", "detailed"]
VARIANTS: tuple[str, ...] = ("official", "canonical", "detailed")

# pymatgen's generator codes agree with the reference CLOUD table except for three groups, where the
# reference encodes another (equivalent) choice of generators. SCOPE strings follow the reference everywhere,
# so the model's vocabulary and pre-training corpus stay interchangeable with CLOUD's.
REFERENCE_GENERATOR_OVERRIDES = {
    39: "03aODDbOOOcODO0",
    131: "13bDDOgDOOcODD0",
    222: "14bDDOcDODdOOOeOOD1YYY",
}


@lru_cache(maxsize=1)
def generator_codes() -> dict[int, str]:
    """Space group number -> generator code: pymatgen's (shipped in `scope_tables`) with the reference's
    overrides."""
    codes = scope_tables.generator_codes()
    codes.update(REFERENCE_GENERATOR_OVERRIDES)
    return codes


@lru_cache(maxsize=256)
def generator_tokens(number: int) -> str:
    return " ".join(generator_codes()[number])


_AMOUNT_TEXT: dict[float, str] = {}


def format_amount(fraction: float) -> str:
    """The reference's rendering of a fractional amount: `str(numpy.round(x, 2))`.

    numpy rounds to 2 decimals by scaling by 100, rounding half to even and dividing by 100; Python's
    round() of a float to an integer does the same rounding exactly, so only the text needs numpy (cached).
    """
    rounded = round(fraction * 100.0) / 100.0
    text = _AMOUNT_TEXT.get(rounded)
    if text is None:
        text = _AMOUNT_TEXT[rounded] = str(np.float64(rounded))
    return text


@cache
def _element_sort_key(element: str) -> tuple[float, int]:
    data = scope_tables.element_data(element)
    if data is None:  # not one of the 118 elements of the shipped table: ask pymatgen itself
        from pymatgen.core.periodic_table import Element

        el = Element(element)
        with warnings.catch_warnings():  # pymatgen warns that noble gases have no Pauling value (NaN)
            warnings.simplefilter("ignore")
            data = (el.X, el.Z)
    x, z = data
    # Noble gases without a Pauling value get NaN from pymatgen: put them last, by atomic number.
    return (x if x == x else float("inf"), z)


def sorted_elements(elements: Iterable[str]) -> list[str]:
    return sorted(elements, key=_element_sort_key)


def _composition_part(amounts: dict[str, float], order: list[str]) -> str:
    total = sum(amounts.values())
    return " ".join(f"{el} {format_amount(amounts[el] / total)}" for el in order)


def official_scope(crystal: Crystal, symmetry: Symmetry) -> str:
    number = symmetry.number
    symbols: list[str] = []
    for letter in symmetry.wyckoffs:  # input-site order, repeats dropped
        symbol = f"{wyckoff_tables.multiplicity(number, letter)}{letter}"
        if symbol not in symbols:
            symbols.append(symbol)
    amounts = crystal.element_amounts()
    return f"{generator_tokens(number)} | {' '.join(symbols)} | {_composition_part(amounts, list(amounts))}"


def canonical_scope(crystal: Crystal, symmetry: Symmetry) -> str:
    number = symmetry.number
    letters = wyckoff_tables.letters(number)
    occupied = sorted({wyckoff_tables.letter_index(number, w) for w in set(symmetry.wyckoffs)})
    best = min(tuple(sorted({perm[i] for i in occupied})) for perm in wyckoff_tables.letter_permutations(number))
    wyckoff = " ".join(f"{wyckoff_tables.multiplicity(number, letters[i])}{letters[i]}" for i in best)
    amounts = crystal.element_amounts()
    return f"{generator_tokens(number)} | {wyckoff} | {_composition_part(amounts, sorted_elements(amounts))}"


def detailed_scope(crystal: Crystal, symmetry: Symmetry) -> str:
    number = symmetry.number
    letters = wyckoff_tables.letters(number)
    # Sites per (letter, occupant); the orbit count follows from the conventional multiplicity, because an
    # orbit of multiplicity m has m / (V_conv / V_input) sites in the input cell.
    sites: dict[tuple[int, str], int] = {}
    for (letter, species), count in Counter(zip(symmetry.wyckoffs, crystal.site_species, strict=True)).items():
        key = (wyckoff_tables.letter_index(number, letter), _occupant(species))
        sites[key] = sites.get(key, 0) + count
    orbits: list[tuple[int, str]] = []
    for (index, occupant), count in sites.items():
        multiplicity = wyckoff_tables.multiplicity(number, letters[index])
        n_orbits = count * symmetry.conventional_volume_ratio / multiplicity
        if abs(n_orbits - round(n_orbits)) > 1e-3 or round(n_orbits) < 1:
            raise StructureError(f"inconsistent symmetry: {count} sites on Wyckoff {multiplicity}{letters[index]}")
        orbits.extend([(index, occupant)] * round(n_orbits))
    occupant_rank = {occ: r for r, occ in enumerate(sorted({o for _, o in orbits}, key=_occupant_key))}
    best = min(
        tuple(sorted((perm[i], occupant_rank[o]) for i, o in orbits))
        for perm in wyckoff_tables.letter_permutations(number)
    )
    rank_occupant = {r: o for o, r in occupant_rank.items()}
    wyckoff = " ".join(
        f"{wyckoff_tables.multiplicity(number, letters[i])}{letters[i]}:{rank_occupant[r]}" for i, r in best
    )
    amounts = crystal.element_amounts()
    return f"{generator_tokens(number)} | {wyckoff} | {_composition_part(amounts, sorted_elements(amounts))}"


@lru_cache(maxsize=4096)
def _occupant(species: tuple[tuple[str, float], ...]) -> str:
    """What occupies a site, for the detailed SCOPE: its elements in electronegativity order, joined by '+'."""
    return "+".join(sorted_elements(el for el, _ in species))


def _occupant_key(occupant: str) -> tuple:
    return tuple(_element_sort_key(el) for el in occupant.split("+"))


_BUILDERS = {"official": official_scope, "canonical": canonical_scope, "detailed": detailed_scope}


def scope_string(
    crystal: Crystal,
    variant: Variant = "canonical",
    *,
    backend: Backend | None = None,
    symprec: float = DEFAULT_SYMPREC,
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
    time_limit: float | None = None,
) -> tuple[str, Symmetry]:
    """SCOPE string of one crystal and the symmetry it was built from. Raises StructureError.

    The official variant always uses spglib, like the reference; the others default to moyopy, whose
    letters differ from spglib's only by normalizer permutations that the canonical form removes.
    `time_limit` bounds the symmetry search of large cells (see symmetry.find_symmetry).
    """
    if variant not in _BUILDERS:
        raise ValueError(f"unknown SCOPE variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if backend is None:
        backend = "spglib" if variant == "official" else "moyopy"
    symmetry = find_symmetry(crystal, backend, symprec, angle_tolerance, time_limit=time_limit)
    return _BUILDERS[variant](crystal, symmetry), symmetry

"""Hypothetical candidates: common structure prototypes x element substitutions, charge-balance filtered.

This is the embedded default source: it needs no network, no key and no data files. Each prototype is given
by its space group and the Wyckoff representatives of its sites (pymatgen expands them); substituting
elements into the roles gives a candidate. Ionic prototypes keep only substitutions with a neutral
combination of common oxidation states; intermetallic ones (Heusler) need none.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache

from cloud_core.structures import Crystal, crystal_from_pymatgen


@dataclass(frozen=True)
class Prototype:
    name: str
    spacegroup: str  # Hermann-Mauguin symbol, pymatgen's default setting
    lattice: tuple[str, float, float]  # crystal family for pymatgen's Lattice constructors, a, c (in units of r)
    roles: tuple[str, ...]  # A, B, X ... in the order of `sites`
    sites: tuple[tuple[int, tuple[float, float, float]], ...]  # (role index, Wyckoff representative)
    ionic: bool = True  # filter substitutions by charge balance


PROTOTYPES: dict[str, Prototype] = {
    p.name: p
    for p in (
        Prototype("rocksalt", "Fm-3m", ("cubic", 2.0, 0), ("A", "X"), ((0, (0, 0, 0)), (1, (0.5, 0.5, 0.5)))),
        Prototype("cscl", "Pm-3m", ("cubic", 1.2, 0), ("A", "X"), ((0, (0, 0, 0)), (1, (0.5, 0.5, 0.5)))),
        Prototype("zincblende", "F-43m", ("cubic", 2.3, 0), ("A", "X"), ((0, (0, 0, 0)), (1, (0.25, 0.25, 0.25)))),
        Prototype(
            "wurtzite",
            "P6_3mc",
            ("hexagonal", 1.6, 2.6),
            ("A", "X"),
            ((0, (1 / 3, 2 / 3, 0)), (1, (1 / 3, 2 / 3, 0.375))),
        ),
        Prototype("nias", "P6_3/mmc", ("hexagonal", 1.5, 2.0), ("A", "X"), ((0, (0, 0, 0)), (1, (1 / 3, 2 / 3, 0.25)))),
        Prototype("fluorite", "Fm-3m", ("cubic", 2.3, 0), ("A", "X"), ((0, (0, 0, 0)), (1, (0.25, 0.25, 0.25)))),
        Prototype(
            "rutile", "P4_2/mnm", ("tetragonal", 1.9, 1.25), ("A", "X"), ((0, (0, 0, 0)), (1, (0.305, 0.305, 0)))
        ),
        Prototype(
            "perovskite",
            "Pm-3m",
            ("cubic", 1.6, 0),
            ("A", "B", "X"),
            ((0, (0.5, 0.5, 0.5)), (1, (0, 0, 0)), (2, (0.5, 0, 0))),
        ),
        Prototype(
            "spinel",
            "Fd-3m",
            ("cubic", 3.4, 0),
            ("A", "B", "X"),
            ((0, (0, 0, 0)), (1, (0.625, 0.625, 0.625)), (2, (0.3875, 0.3875, 0.3875))),
        ),  # origin choice 1
        Prototype(
            "heusler",
            "Fm-3m",
            ("cubic", 2.4, 0),
            ("X", "Y", "Z"),
            ((0, (0.25, 0.25, 0.25)), (1, (0, 0, 0)), (2, (0.5, 0.5, 0.5))),
            ionic=False,
        ),
        Prototype(
            "half-heusler",
            "F-43m",
            ("cubic", 2.4, 0),
            ("X", "Y", "Z"),
            ((0, (0.25, 0.25, 0.25)), (1, (0, 0, 0)), (2, (0.5, 0.5, 0.5))),
            ionic=False,
        ),
    )
}

# Element pools by role: cations, anions for ionic prototypes; metals and main-group elements for Heuslers.
CATIONS = (
    "Li",
    "Na",
    "K",
    "Rb",
    "Cs",
    "Be",
    "Mg",
    "Ca",
    "Sr",
    "Ba",
    "Sc",
    "Y",
    "La",
    "Ti",
    "Zr",
    "Hf",
    "V",
    "Nb",
    "Ta",
    "Cr",
    "Mo",
    "W",
    "Mn",
    "Fe",
    "Co",
    "Ni",
    "Cu",
    "Ag",
    "Zn",
    "Cd",
    "Al",
    "Ga",
    "In",
    "Ge",
    "Sn",
    "Pb",
    "Bi",
    "Sb",
)
ANIONS = ("O", "S", "Se", "Te", "F", "Cl", "Br", "I", "N", "P")
HEUSLER_X = ("Fe", "Co", "Ni", "Cu", "Ru", "Rh", "Pd", "Ir", "Pt", "Au", "Mn")
HEUSLER_Y = ("Ti", "V", "Cr", "Mn", "Fe", "Zr", "Nb", "Hf", "Sc", "Y")
HEUSLER_Z = ("Al", "Ga", "In", "Si", "Ge", "Sn", "Sb", "Bi")


@cache
def _oxidation_states(element: str) -> tuple[int, ...]:
    from pymatgen.core.periodic_table import Element

    return tuple(Element(element).common_oxidation_states)


def charge_balanced(elements: Sequence[str], counts: Sequence[int]) -> bool:
    """True if some choice of common oxidation states makes the formula neutral (cations > 0 > anions)."""
    options = [_oxidation_states(el) for el in elements]
    return any(sum(q * n for q, n in zip(states, counts, strict=True)) == 0 for states in itertools.product(*options))


@cache
def _prototype_cell(name: str) -> tuple[Crystal, tuple[int, ...]]:
    """The prototype expanded to its conventional cell (placeholder elements) and each site's role."""
    from pymatgen.core import Lattice, Structure

    proto = PROTOTYPES[name]
    family, a, c = proto.lattice
    lattice = {
        "cubic": lambda: Lattice.cubic(a),
        "hexagonal": lambda: Lattice.hexagonal(a, c * a),
        "tetragonal": lambda: Lattice.tetragonal(a, c * a),
    }[family]()
    placeholders = ["H", "He", "Li"][: len(proto.roles)]  # one distinct element per role
    species = [placeholders[role] for role, _ in proto.sites]
    structure = Structure.from_spacegroup(proto.spacegroup, lattice, species, [xyz for _, xyz in proto.sites])
    roles = tuple(placeholders.index(site.specie.symbol) for site in structure)
    return crystal_from_pymatgen(structure), roles


def _role_pools(proto: Prototype) -> list[tuple[str, ...]]:
    if not proto.ionic:
        return [HEUSLER_X, HEUSLER_Y, HEUSLER_Z]
    return [CATIONS] * (len(proto.roles) - 1) + [ANIONS]


def generate_candidates(
    prototypes: Sequence[str] | None = None, max_count: int = 1000, seed: int = 0, elements: Sequence[str] | None = None
) -> Iterator[tuple[str, Crystal]]:
    """Yield (id, crystal) for up to `max_count` distinct substitutions, in a seeded random order.

    `elements` restricts every role's pool to those elements. Ids read `prototype:El1-El2-...`.
    """
    names = list(prototypes or PROTOTYPES)
    unknown = [n for n in names if n not in PROTOTYPES]
    if unknown:
        raise ValueError(f"unknown prototypes {unknown}; known: {', '.join(PROTOTYPES)}")
    combos: list[tuple[str, tuple[str, ...]]] = []
    for name in names:
        pools = _role_pools(PROTOTYPES[name])
        if elements is not None:
            pools = [tuple(e for e in pool if e in elements) for pool in pools]
        combos.extend((name, combo) for combo in itertools.product(*pools) if len(set(combo)) == len(combo))
    random.Random(seed).shuffle(combos)
    produced = 0
    for name, combo in combos:
        if produced >= max_count:
            return
        proto = PROTOTYPES[name]
        template, roles = _prototype_cell(name)
        counts = [roles.count(r) for r in range(len(proto.roles))]
        if proto.ionic and not charge_balanced(combo, counts):
            continue
        species = [((combo[r], 1.0),) for r in roles]
        yield f"{name}:{'-'.join(combo)}", Crystal(template.lattice.copy(), template.frac_coords.copy(), species)
        produced += 1

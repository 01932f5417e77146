"""Hypothetical candidates: common structure prototypes x element substitutions, charge-balance filtered.

This is the embedded default source: it needs no network, no key and no data files. Each prototype is given
by its space group and the Wyckoff representatives of its sites (pymatgen expands them); substituting
elements into the roles gives a candidate. Ionic prototypes keep only substitutions with a neutral
combination of common oxidation states; intermetallic ones (Heuslers) need none. Roles that symmetry makes
interchangeable (elpasolite's B and C on 4a and 4b, swapped by an origin shift) are filled in one order only,
so every candidate is a distinct crystal (checked in tests by canonical SCOPE + structure hash).

About 390,000 distinct candidates in all (`candidate_space()`), most of them quaternary (elpasolites,
kesterites, quaternary Heuslers). They come in a seeded random order drawn over the whole space at once (a
permutation of combination indices, 8 bytes each), so any prefix mixes every prototype and the order never
materialises the combinations themselves.
"""

from __future__ import annotations

import itertools
import math
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
    # Pairs of roles (i, j), with the same pool, that symmetry makes interchangeable: only combinations with
    # element i < element j are made.
    interchangeable: tuple[tuple[int, int], ...] = ()
    pools: tuple[str, ...] = ()  # names of the element pool of each role (see POOLS); empty: by `ionic`


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
        # Cs2NaBiCl6 / Ba2FeMoO6 (rock-salt ordered double perovskite): A 8c, B 4a, C 4b, X 24e (x = 1/4).
        Prototype(
            "elpasolite",
            "Fm-3m",
            ("cubic", 4.0, 0),
            ("A", "B", "C", "X"),
            ((0, (0.25, 0.25, 0.25)), (1, (0, 0, 0)), (2, (0.5, 0.5, 0.5)), (3, (0.25, 0, 0))),
            interchangeable=((1, 2),),
            pools=("cations+", "cations+", "cations+", "anions"),
        ),
        # Cu2ZnSnS4: A 2a + 2c, B 2d, C 2b, X 8g; B and C swap by a normalizer operation once A holds 2a + 2c.
        Prototype(
            "kesterite",
            "I-4",
            ("tetragonal", 2.7, 2.0),
            ("A", "B", "C", "X"),
            ((0, (0, 0, 0)), (0, (0, 0.5, 0.25)), (1, (0, 0.5, 0.75)), (2, (0, 0, 0.5)), (3, (0.756, 0.757, 0.872))),
            interchangeable=((1, 2),),
            pools=("cations+", "cations+", "cations+", "anions"),
        ),
        # LiMgPdSn-type quaternary Heusler XX'YZ: X 4c, X' 4d (the pair is unordered), Y 4b, Z 4a.
        Prototype(
            "quaternary-heusler",
            "F-43m",
            ("cubic", 2.4, 0),
            ("X", "X'", "Y", "Z"),
            ((0, (0.25, 0.25, 0.25)), (1, (0.75, 0.75, 0.75)), (2, (0.5, 0.5, 0.5)), (3, (0, 0, 0))),
            ionic=False,
            interchangeable=((0, 1),),
            pools=("heusler-metals", "heusler-metals", "heusler-metals", "heusler-z"),
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
# Wider pools for the quaternary prototypes: lanthanides, actinides and more d-block cations; the metals of
# Heusler compounds with the main-group Z elements they pair with.
MORE_CATIONS = (
    *("Ce", "Pr", "Nd", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Th", "U"),
    *("Tl", "Hg", "Au", "Pd", "Pt", "Rh", "Ru", "Ir", "Os", "Re", "Tc", "Si", "B", "As"),
)
HEUSLER_METALS = tuple(dict.fromkeys((*HEUSLER_X, *HEUSLER_Y, "Ni", "Cu", "Zn", "Mo", "W", "Ta", "Ag", "Li", "Mg")))
POOLS: dict[str, tuple[str, ...]] = {
    "cations": CATIONS,
    "cations+": CATIONS + MORE_CATIONS,
    "anions": ANIONS,
    "heusler-x": HEUSLER_X,
    "heusler-y": HEUSLER_Y,
    "heusler-z": HEUSLER_Z + ("Ge", "Pb", "As", "B", "Tl"),
    "heusler-metals": HEUSLER_METALS,
}


@cache
def _oxidation_states(element: str) -> tuple[int, ...]:
    from pymatgen.core.periodic_table import Element

    return tuple(Element(element).common_oxidation_states)


def charge_balanced(elements: Sequence[str], counts: Sequence[int]) -> bool:
    """True if some choice of common oxidation states makes the formula neutral (cations > 0 > anions)."""
    options = [_oxidation_states(el) for el in elements]
    options = [[q for q in states if q > 0] for states in options[:-1]] + [[q for q in options[-1] if q < 0]]
    return any(sum(q * n for q, n in zip(states, counts, strict=True)) == 0 for states in itertools.product(*options))


@cache
def _prototype_cell(name: str) -> tuple[Crystal, tuple[int, ...]]:
    """The prototype expanded to its primitive cell (placeholder elements) and each site's role."""
    from pymatgen.core import Lattice, Structure

    proto = PROTOTYPES[name]
    family, a, c = proto.lattice
    lattice = {
        "cubic": lambda: Lattice.cubic(a),
        "hexagonal": lambda: Lattice.hexagonal(a, c * a),
        "tetragonal": lambda: Lattice.tetragonal(a, c * a),
    }[family]()
    placeholders = ["H", "He", "Li", "Be"][: len(proto.roles)]  # one distinct element per role
    species = [placeholders[role] for role, _ in proto.sites]
    structure = Structure.from_spacegroup(proto.spacegroup, lattice, species, [xyz for _, xyz in proto.sites])
    structure = structure.get_primitive_structure()  # fewer sites to analyse; SCOPE does not depend on the cell
    roles = tuple(placeholders.index(site.specie.symbol) for site in structure)
    return crystal_from_pymatgen(structure), roles


def _role_pools(proto: Prototype, elements: Sequence[str] | None) -> list[tuple[str, ...]]:
    if proto.pools:
        pools = [POOLS[name] for name in proto.pools]
    elif proto.ionic:
        pools = [CATIONS] * (len(proto.roles) - 1) + [ANIONS]
    else:
        pools = [HEUSLER_X, HEUSLER_Y, HEUSLER_Z]
    if elements is not None:
        pools = [tuple(e for e in pool if e in elements) for pool in pools]
    return pools


def candidate_space(prototypes: Sequence[str] | None = None, elements: Sequence[str] | None = None) -> int:
    """How many distinct candidates the generator can yield (after the distinctness and charge filters)."""
    return sum(1 for _ in generate_candidates(prototypes, max_count=10**9, elements=elements, crystals=False))


def generate_candidates(
    prototypes: Sequence[str] | None = None,
    max_count: int = 1000,
    seed: int = 0,
    elements: Sequence[str] | None = None,
    crystals: bool = True,
) -> Iterator[tuple[str, Crystal | None]]:
    """Yield (id, crystal) for up to `max_count` distinct substitutions, in a seeded random order.

    `elements` restricts every role's pool to those elements. Ids read `prototype:El1-El2-...`. With
    `crystals=False` only the ids are made (crystal None), for counting.
    """
    import numpy as np

    names = list(prototypes or PROTOTYPES)
    unknown = [n for n in names if n not in PROTOTYPES]
    if unknown:
        raise ValueError(f"unknown prototypes {unknown}; known: {', '.join(PROTOTYPES)}")
    spaces = [(PROTOTYPES[name], _role_pools(PROTOTYPES[name], elements)) for name in names]
    sizes = [math.prod(len(pool) for pool in pools) for _, pools in spaces]
    starts = np.cumsum([0, *sizes])
    produced = 0
    for index in np.random.default_rng(seed).permutation(int(starts[-1])):
        if produced >= max_count:
            return
        which = int(np.searchsorted(starts, index, side="right")) - 1
        proto, pools = spaces[which]
        rest, combo = int(index - starts[which]), []
        for pool in pools:  # mixed-radix digits of the index within this prototype's space
            rest, digit = divmod(rest, len(pool))
            combo.append(pool[digit])
        if len(set(combo)) < len(combo) or any(combo[i] > combo[j] for i, j in proto.interchangeable):
            continue
        template, roles = _prototype_cell(proto.name)
        if proto.ionic and not charge_balanced(combo, [roles.count(r) for r in range(len(proto.roles))]):
            continue
        crystal = None
        if crystals:
            species = [((combo[r], 1.0),) for r in roles]
            crystal = Crystal(template.lattice.copy(), template.frac_coords.copy(), species)
        yield f"{proto.name}:{'-'.join(combo)}", crystal
        produced += 1

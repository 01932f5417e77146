"""Hypothetical candidates: common structure prototypes x element substitutions, charge-balance filtered.

This is the embedded default source: it needs no network, no key and no data files. Each prototype is given
by its space group and the Wyckoff representatives of its sites (spglib's operations expand them); substituting
elements into the roles gives a candidate. Ionic prototypes keep only substitutions with a neutral
combination of common oxidation states; intermetallic ones (Heuslers) need none. Roles that symmetry makes
interchangeable (elpasolite's B and C on 4a and 4b, swapped by an origin shift) are filled in one order only,
so every candidate is a distinct crystal (checked in tests by canonical SCOPE + structure hash).

The default selection has 438,150 distinct candidates (`candidate_space()`), most of them quaternary
(elpasolites, kesterites, quaternary Heuslers). The opt-in quinary double-double perovskites AA'BB'X6 add
8,071,308 more (`candidate_space(["double-double-perovskite"])`), for runs of millions. Candidates come in a
seeded pseudo-random order over the whole space of the selection at once (`shuffled_range`: a permutation of
combination indices computed block by block, in constant memory), so any prefix mixes every prototype in
proportion to its size and the order never materialises the combinations themselves.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

from cloud_core import scope_tables
from cloud_core.structures import Crystal


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
    # Left out of the default selection: a space this large would make nearly every candidate of a default run
    # its own (asked for by name, or with `all`).
    opt_in: bool = False


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
        # AA'BB'X6: the elpasolite cell with its A sites (8c) split into 4c and 4d as well, both sublattices rock-salt
        # ordered (F-43m). Inversion swaps A and A' only; the shift by (1/2, 1/2, 1/2) swaps both pairs, so
        # the pairs are interchangeable independently.
        Prototype(
            "double-double-perovskite",
            "F-43m",
            ("cubic", 4.0, 0),
            ("A", "A'", "B", "B'", "X"),
            (
                (0, (0.25, 0.25, 0.25)),
                (1, (0.75, 0.75, 0.75)),
                (2, (0, 0, 0)),
                (3, (0.5, 0.5, 0.5)),
                (4, (0.25, 0, 0)),
            ),
            interchangeable=((0, 1), (2, 3)),
            pools=("cations+", "cations+", "cations+", "cations+", "anions"),
            opt_in=True,
        ),
    )
}
DEFAULT_PROTOTYPES = tuple(name for name, proto in PROTOTYPES.items() if not proto.opt_in)


def select_prototypes(names: Sequence[str] | None) -> list[str]:
    """Prototype names to generate from: the given ones (`all`: every prototype), or DEFAULT_PROTOTYPES."""
    if not names:
        return list(DEFAULT_PROTOTYPES)
    if "all" in names:
        return list(PROTOTYPES)
    unknown = [n for n in names if n not in PROTOTYPES]
    if unknown:
        raise ValueError(f"unknown prototypes {unknown}; known: {', '.join(PROTOTYPES)} (or all)")
    return list(dict.fromkeys(names))


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
    "cations+": (*CATIONS, *MORE_CATIONS),
    "anions": ANIONS,
    "heusler-x": HEUSLER_X,
    "heusler-y": HEUSLER_Y,
    "heusler-z": (*HEUSLER_Z, "Pb", "As", "B", "Tl"),
    "heusler-metals": HEUSLER_METALS,
}


@cache
def _oxidation_states(element: str) -> tuple[int, ...]:
    states = scope_tables.common_oxidation_states(element)
    if states is None:
        raise ValueError(f"unknown element {element!r}")
    return states


def charge_balanced(elements: Sequence[str], counts: Sequence[int]) -> bool:
    """True if some choice of common oxidation states makes the formula neutral: the last element is the anion
    (a negative state), the others cations (positive states)."""
    totals = {0}
    for element, count in zip(elements[:-1], counts[:-1], strict=True):
        totals = {t + charge for t in totals for charge in _charges(element, count, 1)}
    return any(-charge in totals for charge in _charges(elements[-1], counts[-1], -1))


@cache
def _charges(element: str, count: int, sign: int) -> tuple[int, ...]:
    """The charges `count` atoms of `element` can carry in one of its common oxidation states of this sign."""
    return tuple(q * count for q in _oxidation_states(element) if q * sign > 0)


PLACEHOLDERS = ("H", "He", "Li", "Be", "B")  # the element of each role in a prototype's template cell

# Lattice vectors of the primitive cell in conventional fractional coordinates, by centring (the first letter of
# the Hermann-Mauguin symbol).
PRIMITIVE_BASIS = {
    "P": ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
    "F": ((0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0)),
    "I": ((-0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.5, 0.5, -0.5)),
}


@cache
def _prototype_cell(name: str) -> tuple[Crystal, tuple[int, ...]]:
    """The prototype's primitive cell and each site's role (index into `roles`).

    Each Wyckoff representative is expanded by the space group's operations (spglib's database, in the group's
    first setting, which is pymatgen's default: origin choice 1 where there are two); the orbit is reduced to the
    primitive cell of the centring. A millisecond per prototype, where pymatgen's from_spacegroup took up to
    half a second (`test_prototype_cells_match_pymatgen` compares the two)."""
    import spglib

    proto = PROTOTYPES[name]
    hall = next(h for h in range(1, 531) if spglib.get_spacegroup_type(h).international_short == proto.spacegroup)
    operations = spglib.get_symmetry_from_database(hall)
    family, a, c = proto.lattice
    if family == "hexagonal":
        conventional = np.array([[a, 0, 0], [-a / 2, a * math.sqrt(3) / 2, 0], [0, 0, c * a]])
    else:  # cubic, tetragonal
        conventional = np.diag([a, a, c * a if family == "tetragonal" else a])
    basis = np.array(PRIMITIVE_BASIS[proto.spacegroup[0]], dtype=float)  # rows: primitive vectors (conventional)
    to_primitive = np.linalg.inv(basis.T)
    frac, roles = [], []
    for role, representative in proto.sites:
        images = np.einsum("kij,j->ki", operations["rotations"], representative) + operations["translations"]
        images = (images @ to_primitive.T) % 1.0
        images = np.unique(np.round(images, 6) % 1.0, axis=0)  # % again: 0.9999996 rounds to 1.0
        frac.extend(images)
        roles.extend([role] * len(images))
    species = [((PLACEHOLDERS[r], 1.0),) for r in roles]
    return Crystal(basis @ conventional, np.array(frac), species), tuple(roles)


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
    names = select_prototypes(prototypes)
    spaces = [(PROTOTYPES[name], _role_pools(PROTOTYPES[name], elements)) for name in names]
    produced = 0
    for proto, combo in _distinct_combinations(spaces, seed):
        if produced >= max_count:
            return
        template, roles = _prototype_cell(proto.name)
        if proto.ionic and not charge_balanced(combo, [roles.count(r) for r in range(len(proto.roles))]):
            continue
        crystal = None
        if crystals:
            species = [((combo[r], 1.0),) for r in roles]
            crystal = Crystal(template.lattice.copy(), template.frac_coords.copy(), species)
        yield f"{proto.name}:{'-'.join(combo)}", crystal
        produced += 1


def _distinct_combinations(
    spaces: list[tuple[Prototype, list[tuple[str, ...]]]], seed: int, block: int = 1 << 16
) -> Iterator[tuple[Prototype, tuple[str, ...]]]:
    """(prototype, elements per role) over all prototypes' combination spaces in one seeded random order, without
    repeated elements and with interchangeable roles in one order only.

    The order is a pseudo-random permutation of combination indices (`shuffled_range`: constant memory, however
    large the space); each block of it is decoded (mixed-radix digits per prototype) and filtered in numpy,
    since most indices fail these filters."""
    symbols = sorted({e for _, pools in spaces for pool in pools for e in pool})
    rank = {e: i for i, e in enumerate(symbols)}  # comparing ranks = comparing symbols
    pool_ranks = [[np.array([rank[e] for e in pool], dtype=np.int64) for pool in pools] for _, pools in spaces]
    sizes = [math.prod(len(pool) for pool in pools) for _, pools in spaces]
    starts = np.cumsum([0, *sizes])
    for indices in shuffled_range(int(starts[-1]), seed, block):
        which = np.searchsorted(starts, indices, side="right") - 1
        combos = np.full((len(indices), max(len(pools) for _, pools in spaces)), -1, dtype=np.int64)
        keep = np.zeros(len(indices), dtype=bool)
        for p in np.unique(which):
            rows = np.flatnonzero(which == p)
            rest = indices[rows] - starts[p]
            for role, pool in enumerate(pool_ranks[p]):  # mixed-radix digits of the index in this space
                rest, digit = np.divmod(rest, len(pool))
                combos[rows, role] = pool[digit]
            picked = combos[rows, : len(pool_ranks[p])]
            ok = np.ones(len(rows), dtype=bool)
            for i, j in itertools.combinations(range(picked.shape[1]), 2):
                ok &= picked[:, i] != picked[:, j]
            for i, j in spaces[p][0].interchangeable:
                ok &= picked[:, i] < picked[:, j]
            keep[rows] = ok
        for row in np.flatnonzero(keep):
            proto, pools = spaces[which[row]]
            yield proto, tuple(symbols[k] for k in combos[row, : len(pools)])


_FEISTEL_ROUNDS = 4


def shuffled_range(n: int, seed: int, block: int = 1 << 16) -> Iterator[np.ndarray]:
    """Every integer of range(n) once, in a seeded pseudo-random order, as int64 blocks of at most `block`.

    A Feistel network on 2h-bit integers (2^2h >= n) is a bijection whatever its round function; counting through
    its domain and keeping the images below n visits range(n) in a scrambled order (at most 4 counters per
    index). Memory is one block, where a permutation array would take 8 bytes per index (1.6 GB for the
    double-double perovskites' 201 million)."""
    half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = np.random.default_rng(seed).integers(0, 2**63, _FEISTEL_ROUNDS, dtype=np.uint64)
    for first in range(0, 1 << (2 * half), block):
        counter = np.arange(first, min(first + block, 1 << (2 * half)), dtype=np.uint64)
        left, right = counter >> np.uint64(half), counter & mask
        for key in keys:
            left, right = right, left ^ (_mix(right ^ key) & mask)
        image = ((left << np.uint64(half)) | right).astype(np.int64)
        image = image[image < n]
        if len(image):
            yield image


def _mix(x: np.ndarray) -> np.ndarray:
    """A 64-bit integer hash (splitmix64's finaliser), elementwise, wrapping like the C original."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))

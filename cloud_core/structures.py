"""Crystal structures as plain arrays, read from files, tables and pymatgen objects.

The encoder needs only a lattice, fractional coordinates and what occupies each site, so a `Crystal` holds
just that. CIF text is parsed with gemmi (about 100x faster than pymatgen's CifParser); every other format,
and any CIF that gemmi rejects, goes through pymatgen. Reading never raises for one bad structure: the
readers yield `Record`s that carry either a `Crystal` or the reason it could not be read.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Occupancies this far below 1 still count as a fully occupied site (CIFs often write 0.9999).
FULL_OCCUPANCY_TOLERANCE = 1e-3
# Two atoms closer than this (Å) are the same place: a broken file, unless they share a disordered site.
MIN_ATOM_DISTANCE = 0.5
# Sites this close (Å) that are each partially occupied are one mixed site (the CIF way to write disorder).
MIXED_SITE_DISTANCE = 0.01
# Default cap on sites per structure: symmetry search grows quickly with cell size.
DEFAULT_MAX_SITES = 2000
# Largest structure file (CIF, POSCAR, XYZ, JSON) read, in MiB; $CLOUD_SCREEN_MAX_FILE_MB overrides it. A larger
# file is an error row, refused from its size without being read. Tables (.parquet, .csv, .jsonl) are streamed
# in row batches and have no file limit, but each structure text in them is held to the same limit.
DEFAULT_MAX_FILE_MB = 64
MAX_FILE_MB_ENV = "CLOUD_SCREEN_MAX_FILE_MB"

STRUCTURE_SUFFIXES = {".cif", ".mcif", ".vasp", ".poscar", ".xyz", ".extxyz", ".json"}
STRUCTURE_NAMES = {"POSCAR", "CONTCAR"}
TABLE_SUFFIXES = {".parquet", ".csv", ".jsonl", ".ndjson"}

Species = tuple[tuple[str, float], ...]  # what occupies one site: ((element, occupancy), ...)


class StructureError(ValueError):
    """A structure that cannot be encoded; the message is the row's `error` reason."""


@dataclass(slots=True)
class Crystal:
    """A periodic crystal: lattice vectors as rows (Å), fractional coordinates, and each site's species.

    `site_species[i]` lists (element, occupancy) pairs, one pair for an ordered site. `site_kinds[i]` is
    the label that tells sites apart for symmetry (an element, or a species with its oxidation state, or
    a mixed-site label), so two sites are symmetry-equivalent only if their kinds are equal.
    """

    lattice: np.ndarray  # (3, 3) float64, rows a, b, c
    frac_coords: np.ndarray  # (n_sites, 3) float64
    site_species: list[Species]
    site_kinds: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.site_kinds:
            self.site_kinds = [_kind_label(s) for s in self.site_species]

    @property
    def nsites(self) -> int:
        return len(self.site_species)

    @property
    def is_ordered(self) -> bool:
        return all(len(s) == 1 and s[0][1] >= 1 - FULL_OCCUPANCY_TOLERANCE for s in dict.fromkeys(self.site_species))

    def kind_numbers(self) -> np.ndarray:
        """Site kinds as integers 1, 2, ... in order of first appearance (what spglib calls `types`)."""
        index: dict[str, int] = {}
        return np.array([index.setdefault(k, len(index) + 1) for k in self.site_kinds], dtype=np.int32)

    def element_amounts(self) -> dict[str, float]:
        """Element -> amount in the cell, in order of first appearance (pymatgen's Composition order)."""
        amounts: dict[str, float] = {}
        counts = Counter(self.site_species)  # distinct species in order of first appearance
        if all(len(species) == 1 and species[0][1] == 1.0 for species in counts):
            for ((element, _),), count in counts.items():  # whole atoms: sums of 1.0 are exact
                amounts[element] = amounts.get(element, 0.0) + count
            return amounts
        for species in self.site_species:  # partial occupancies: add them up in site order
            for element, occupancy in species:
                amounts[element] = amounts.get(element, 0.0) + occupancy
        return amounts


@dataclass(slots=True)
class Record:
    """One input structure on its way through the encoder: an id, where it came from, and either a
    crystal or the reason there is none."""

    id: str
    source: str
    crystal: Crystal | None = None
    error: str | None = None


def _kind_label(species: Species) -> str:
    if len(species) == 1 and species[0][1] >= 1 - FULL_OCCUPANCY_TOLERANCE:
        return species[0][0]
    return ",".join(f"{el}:{occ:.4g}" for el, occ in species)


# --------------------------------------------------------------------------------------------------
# Validation: every check raises StructureError with the reason a user needs.


def _element_symbols() -> frozenset[str]:
    import gemmi

    # gemmi knows elements 1..118 (and 'X' for unknown, which we reject).
    return frozenset(gemmi.Element(z).name for z in range(1, 119))


_ELEMENTS: frozenset[str] | None = None


def known_element(symbol: str) -> bool:
    global _ELEMENTS
    if _ELEMENTS is None:
        _ELEMENTS = _element_symbols()
    return symbol in _ELEMENTS


def validate(crystal: Crystal, max_sites: int = DEFAULT_MAX_SITES) -> Crystal:
    """Check a crystal is something symmetry analysis can work on; raise StructureError if not."""
    n = crystal.nsites
    if n == 0:
        raise StructureError("empty structure: no atoms")
    if n > max_sites:
        raise StructureError(f"too many sites ({n} > max_sites={max_sites}); raise --max-sites to try it")
    lattice, frac = crystal.lattice, crystal.frac_coords
    if lattice.shape != (3, 3) or frac.shape != (n, 3):
        raise StructureError(f"malformed arrays: lattice {lattice.shape}, coordinates {frac.shape}")
    if not (np.isfinite(lattice).all() and np.isfinite(frac).all()):
        raise StructureError("non-finite lattice or coordinates (NaN or inf)")
    (a, b, c) = rows = lattice.tolist()
    volume = abs(_triple_product(a, b, c))
    lengths = [math.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]) for v in rows]
    # Compare with the volume of a box of the same edge lengths, so flat and needle cells both fail.
    if volume < 1e-3 * lengths[0] * lengths[1] * lengths[2] or volume < 1.0:
        volume, edges = abs(float(np.linalg.det(lattice))), np.round(np.linalg.norm(lattice, axis=1), 3).tolist()
        raise StructureError(f"degenerate cell: volume {volume:.3g} Å^3 for edges {edges} Å")
    for species in dict.fromkeys(crystal.site_species):  # each distinct species once, in site order
        for element, occupancy in species:
            if not known_element(element):
                raise StructureError(f"unknown element symbol {element!r}")
            if not (0 < occupancy <= 1 + FULL_OCCUPANCY_TOLERANCE):
                raise StructureError(f"occupancy {occupancy} of {element} outside (0, 1]")
        if sum(o for _, o in species) > 1 + FULL_OCCUPANCY_TOLERANCE:
            raise StructureError(f"site occupancies sum to more than 1: {species}")
    _check_no_overlaps(crystal, volume)
    return crystal


def _cross(u: list[float], v: list[float]) -> list[float]:
    return [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]]


def _triple_product(a: list[float], b: list[float], c: list[float]) -> float:
    """a . (b x c): the signed volume of the cell with rows a, b, c (plain floats: 3 x 3 needs no numpy)."""
    bc = _cross(b, c)
    return a[0] * bc[0] + a[1] * bc[1] + a[2] * bc[2]


try:  # the encoder's hot loops in C (cloud_core/_kernels.c), built by pip install where a compiler is present
    from cloud_core import _kernels as kernels
except ImportError:  # not built: the numpy versions, same answers
    kernels = None

# The 27 lattice shifts (-1, 0, 1)^3 in the order the image index uses: image s holds shift SHIFTS[s],
# SHIFTS[13] is the central cell.
_SHIFTS = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], float)
# Above this many sites a structure whose cell is thinner than 2 * MIN_ATOM_DISTANCE in some direction goes
# through scipy's KD-tree instead of the dense all-pairs test (27 n^2 distances).
_DENSE_OVERLAP_MAX_SITES = 64
# Above this many sites every structure goes through the KD-tree: the bound-first test's n x n arrays take
# 0.4 GB at 2,000 sites and 2.3 GB at 5,000; the tree stays under 0.1 GB and 0.1 s there (same first pair).
_DENSE_OVERLAP_LARGE_SITES = 1000


def _check_no_overlaps(crystal: Crystal, volume: float | None = None) -> None:
    """Raise if two atoms sit closer than MIN_ATOM_DISTANCE, periodic images included.

    Atom j's images in the 27 cells around the central one are tested against every atom i; that is enough
    because MIN_ATOM_DISTANCE is far below any cell edge that validate() lets through (the closest image of
    an atom is itself, one lattice vector away). The first offending pair is reported: smallest i, then the
    smallest image index s * n + j (the order of a KD-tree over the images, which this check replaces).

    A cheap exact filter does most of the work: a vector with fractional components x has a Cartesian length
    of at least |x_k| * h_k, h_k being the spacing of the lattice planes normal to axis k. So an image can be
    within MIN_ATOM_DISTANCE only if |x_k| <= MIN_ATOM_DISTANCE / h_k on every axis; when that bound is below
    1/2 on all three axes, only one shift per pair (the minimum-image one) can pass, and the test costs a
    few n x n array operations with no 27-fold images.
    """
    lattice = crystal.lattice
    n = crystal.nsites
    if n > _DENSE_OVERLAP_LARGE_SITES:  # n x n arrays would take GBs (and seconds): the KD-tree takes ~0.1 s
        _check_no_overlaps_kdtree(crystal)
        return
    a, b, c = lattice.tolist()
    if volume is None:
        volume = abs(_triple_product(a, b, c))
    # Plane spacing h_k = V / |b_k+1 x b_k+2|, so the bound MIN_ATOM_DISTANCE / h_k is |...| * d / V.
    bound = (
        np.array([math.sqrt(sum(x * x for x in _cross(u, v))) for u, v in ((b, c), (c, a), (a, b))])
        * (MIN_ATOM_DISTANCE / volume * (1 + 1e-9))
        + 1e-12
    )
    frac = crystal.frac_coords
    if not (bound < 0.5).all():  # a cell thinner than about 1 Å: test every image
        if n > _DENSE_OVERLAP_MAX_SITES:
            _check_no_overlaps_kdtree(crystal)
        else:
            _check_no_overlaps_dense((frac - np.floor(frac)) @ lattice, lattice)
        return
    if kernels is not None and not kernels.overlap_candidate(
        np.ascontiguousarray(frac, dtype=np.float64),
        np.ascontiguousarray(lattice, dtype=np.float64),
        bound,
        MIN_ATOM_DISTANCE,
    ):
        return  # the C filter's False is exact (see cloud_core/_kernels.c); True: the test below finds the pair
    frac = frac - np.floor(frac)
    columns = np.ascontiguousarray(frac.T)  # axis first: n x n arrays per axis, no reduction over a short axis
    delta = columns[:, None, :] - columns[:, :, None]  # [k, i, j] = frac_jk - frac_ik, in (-1, 1)
    shift = -np.round(delta)
    close = np.abs(delta + shift) <= bound[:, None, None]
    near = close[0] & close[1] & close[2]
    # An atom is not near itself; its own images are not near either, since every bound is below 1/2.
    near[np.diag_indices(n)] = False
    if not near.any():
        return
    cart = frac @ lattice
    found = []
    for i, j in np.argwhere(near).tolist():  # candidate pairs, each with its one possible shift
        s = round((shift[:, i, j] + 1) @ (9.0, 3.0, 1.0))
        d = float(np.linalg.norm(cart[j] + _SHIFTS[s] @ lattice - cart[i]))
        if d <= MIN_ATOM_DISTANCE:
            found.append((i, s * n + j, j, d))
    if found:
        i, _, j, d = min(found)
        _raise_overlap(i, j, d)


def _check_no_overlaps_dense(cart: np.ndarray, lattice: np.ndarray) -> None:
    n = len(cart)
    images = cart[None, :, :] + (_SHIFTS @ lattice)[:, None, :]  # (27, n, 3)
    distances = np.linalg.norm(images[None, :, :, :] - cart[:, None, None, :], axis=3)  # (n, 27, n)
    distances[np.arange(n), 13, np.arange(n)] = np.inf
    close = np.argwhere(distances <= MIN_ATOM_DISTANCE)  # row-major: smallest i, then s, then j
    if len(close):
        i, s, j = close[0].tolist()
        _raise_overlap(i, j, float(np.linalg.norm(images[s, j] - cart[i])))


def _raise_overlap(i: int, j: int, d: float) -> None:
    if j == i:
        raise StructureError(f"cell too small: site {i} is {d:.3f} Å from its own periodic image")
    raise StructureError(f"overlapping atoms: sites {min(i, j)} and {max(i, j)} are {d:.3f} Å apart")


def _check_no_overlaps_kdtree(crystal: Crystal) -> None:
    """The same test for large structures with a thin cell: a KD-tree over the 27 images."""
    from scipy.spatial import cKDTree

    frac = crystal.frac_coords - np.floor(crystal.frac_coords)
    cart = frac @ crystal.lattice
    images = (cart[None, :, :] + (_SHIFTS @ crystal.lattice)[:, None, :]).reshape(-1, 3)
    n = crystal.nsites
    for i, neighbours in enumerate(cKDTree(images).query_ball_point(cart, MIN_ATOM_DISTANCE)):
        for flat in neighbours:
            j = flat % n
            if flat == 13 * n + i:  # the atom itself, in the central cell
                continue
            _raise_overlap(i, j, float(np.linalg.norm(images[flat] - cart[i])))


# --------------------------------------------------------------------------------------------------
# Parsers: text or objects in, Crystal out (or StructureError).


def crystal_from_cif(text: str) -> Crystal:
    """Parse CIF text with gemmi (fast); fall back to pymatgen for what gemmi cannot read."""
    try:
        return _crystal_from_cif_gemmi(text)
    except StructureError:
        raise
    except Exception as gemmi_error:  # gemmi rejects some CIFs that pymatgen reads; try it before failing
        try:
            return _crystal_from_cif_pymatgen(text)
        except Exception as pmg_error:
            raise StructureError(
                f"unreadable CIF: {_one_line(gemmi_error)}; pymatgen: {_one_line(pmg_error)}"
            ) from None


def _crystal_from_cif_gemmi(text: str) -> Crystal:
    import gemmi

    block = gemmi.cif.read_string(text).sole_block()
    small = gemmi.make_small_structure_from_block(block)
    cell = small.cell
    if not all(math.isfinite(x) and x > 0 for x in (cell.a, cell.b, cell.c, cell.alpha, cell.beta, cell.gamma)):
        raise StructureError(f"invalid cell parameters: {cell.parameters}")
    lattice = np.array(cell.orth.mat.tolist(), dtype=float).T  # gemmi's columns are a, b, c
    table = _p1_site_table(block, small) if not cell.images else None
    if table is not None:
        frac, site_keys, key_sites = table
    else:
        sites = small.get_all_unit_cell_sites()
        if not sites and not small.sites:
            # Either a CIF with no atom loop, or one gemmi could not read: let pymatgen have a look too.
            raise ValueError("no atom sites")
        frac = np.array([s.fract.tolist() for s in sites], dtype=float).reshape(-1, 3)
        site_keys = [(s.element.name, s.occ, s.type_symbol) for s in sites]
        key_sites = sites
    _check_cell_as_written(block, cell)  # after the atom check: a CIF without atoms says so first
    # Sites repeat a handful of (element, occupancy, type symbol) combinations: build each one's entry once.
    entries: dict[tuple, tuple[Species, str]] = {}
    for i, key in enumerate(site_keys):
        if key not in entries:
            element, occupancy, type_symbol = key
            if element == "X":
                site = key_sites[i]
                raise StructureError(f"unknown element symbol {site.type_symbol or site.label!r}")
            entries[key] = (((element, float(occupancy)),), _kind_from_type_symbol(type_symbol, element))
    species = [entries[key][0] for key in site_keys]
    kinds = [entries[key][1] for key in site_keys]
    return _merge_mixed_sites(Crystal(lattice, frac, species, kinds))


_CELL_TAGS = ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")


def _check_cell_as_written(block: Any, cell: Any) -> None:
    """The six cell parameters as the CIF writes them must make a cell, and gemmi's cell must be that cell.

    gemmi silently replaces a missing or impossible cell (an angle of 0 or 180 degrees, angles no cell can
    have) by a 1 Å cube, which would then be encoded as if it were the crystal.
    """
    import gemmi

    written = []
    for name in _CELL_TAGS:
        raw = block.find_value(f"_cell_{name}")
        if raw is None:
            raw = block.find_value(f"_cell.{name}")
        value = gemmi.cif.as_number(raw) if raw is not None else math.nan
        if not math.isfinite(value):
            shown = "missing" if raw is None else repr(raw)
            raise StructureError(f"invalid cell parameters: _cell_{name} is {shown}, not a finite number")
        written.append(value)
    lengths, angles = written[:3], written[3:]
    if min(lengths) <= 0:
        raise StructureError(f"invalid cell parameters: lengths {lengths} Å must be positive")
    if not all(0 < angle < 180 for angle in angles):
        raise StructureError(f"invalid cell parameters: angles {angles} must lie strictly between 0 and 180 degrees")
    ca, cb, cg = (math.cos(math.radians(angle)) for angle in angles)
    if 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg <= 1e-9:  # (V / abc)^2: no volume at these angles
        raise StructureError(f"invalid cell parameters: no cell has the angles {angles} (zero or no volume)")
    if any(abs(x - y) > 1e-6 * max(1.0, abs(y)) for x, y in zip(cell.parameters, written, strict=True)):
        raise StructureError(f"invalid cell parameters: {written} read as {cell.parameters}")


# A character no plain decimal number has: uncertainties '1.2(3)', '?', quotes, letters other than e/E.
_NOT_PLAIN_NUMBER = re.compile(r"[^0-9.eE+\- ]")


class _LoopSite:
    """What the error message of an unknown element needs from a site of the fast path."""

    __slots__ = ("label", "type_symbol")

    def __init__(self, site: Any) -> None:
        self.label, self.type_symbol = site.label, site.type_symbol


def _p1_site_table(block: Any, small: Any) -> tuple[np.ndarray, list[tuple], Any] | None:
    """Sites of a CIF without symmetry images (P 1, as Materials Project and pymatgen write them), read from
    the atom-site loop's strings in a few whole-column operations instead of one Python call per site
    attribute. Returns exactly what gemmi's `get_all_unit_cell_sites()` would give (coordinates as written,
    gemmi's element and type symbol per site), or None when the loop is anything but plain: then the
    caller takes gemmi's per-site path.
    """
    column = block.find_loop("_atom_site_fract_x")
    loop = column.get_loop() if column else None
    if loop is None:
        return None
    tags = [tag.lower() for tag in loop.tags]
    needed = ("_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x", "_atom_site_fract_y")
    if not all(tag in tags for tag in (*needed, "_atom_site_fract_z")):
        return None
    width, length = loop.width(), loop.length()
    if length == 0 or length != len(small.sites):
        return None
    values = loop.values
    coordinates = [values[tags.index(f"_atom_site_fract_{axis}") :: width] for axis in "xyz"]
    has_occupancy = "_atom_site_occupancy" in tags
    occupancies = values[tags.index("_atom_site_occupancy") :: width] if has_occupancy else None
    columns = [*coordinates, occupancies] if has_occupancy else coordinates
    # Plain decimal numbers only, [-+]digits[.digits][e[-+]digits]: with no character outside [0-9.eE+-],
    # float() accepts exactly those ('1.2.3', 'e5', '+-1' raise), so either test failing means not plain.
    if _NOT_PLAIN_NUMBER.search(" ".join(" ".join(c) for c in columns)):
        return None
    try:
        # As read: gemmi wraps only the symmetry images of a site into the cell, not the site itself.
        frac = np.array([list(map(float, c)) for c in coordinates], dtype=float).T.copy()
        occupancy_values = list(map(float, occupancies)) if has_occupancy else [1.0] * length
    except ValueError:
        return None
    # gemmi's reading of each distinct type symbol (quotes, charges), taken from the first site that has it.
    symbols = values[tags.index("_atom_site_type_symbol") :: width]
    element, type_symbol, first_site = {}, {}, {}
    for raw in dict.fromkeys(symbols):  # distinct, in order of first appearance
        if raw in ("?", "."):  # gemmi then takes the element from the label, site by site
            return None
        site = small.sites[symbols.index(raw)]
        if not site.type_symbol:
            return None
        element[raw], type_symbol[raw], first_site[raw] = site.element.name, site.type_symbol, _LoopSite(site)
    elements, type_symbols = map(element.__getitem__, symbols), map(type_symbol.__getitem__, symbols)
    site_keys = list(zip(elements, occupancy_values, type_symbols, strict=True))
    return frac, site_keys, list(map(first_site.__getitem__, symbols))


def _kind_from_type_symbol(type_symbol: str, element: str) -> str:
    """Keep an oxidation state ('Fe2+') as the symmetry kind, as pymatgen does; otherwise the element."""
    if type_symbol and type_symbol[-1] in "+-" and type_symbol.startswith(element):
        return type_symbol
    return element


def _merge_mixed_sites(crystal: Crystal) -> Crystal:
    """Join partially occupied sites at the same place into one mixed site (CIF writes them apart)."""
    totals = {species: sum(o for _, o in species) for species in dict.fromkeys(crystal.site_species)}
    if all(total >= 1 - FULL_OCCUPANCY_TOLERANCE for total in totals.values()):
        ordered = {species: ((species[0][0], 1.0),) for species in totals}  # 0.9999 becomes 1
        crystal.site_species = [ordered[species] for species in crystal.site_species]
        return crystal
    occupancies = np.array([totals[species] for species in crystal.site_species])
    frac = crystal.frac_coords - np.floor(crystal.frac_coords)
    keep: list[int] = []
    merged: dict[int, list[tuple[str, float]]] = {}
    for i in range(crystal.nsites):
        for k in keep:
            delta = frac[i] - frac[k]
            delta -= np.round(delta)
            if (
                np.linalg.norm(delta @ crystal.lattice) < MIXED_SITE_DISTANCE
                and occupancies[i] < 1
                and occupancies[k] < 1
            ):
                merged[k].extend(crystal.site_species[i])
                break
        else:
            keep.append(i)
            merged[i] = list(crystal.site_species[i])
    species = [_combine(merged[k]) for k in keep]
    return Crystal(crystal.lattice, crystal.frac_coords[keep], species)


def _combine(pairs: list[tuple[str, float]]) -> Species:
    amounts: dict[str, float] = {}
    for el, occ in pairs:
        amounts[el] = amounts.get(el, 0.0) + occ
    if len(amounts) == 1:
        ((el, occ),) = amounts.items()
        return ((el, 1.0 if occ >= 1 - FULL_OCCUPANCY_TOLERANCE else occ),)
    return tuple(amounts.items())


def _crystal_from_cif_pymatgen(text: str) -> Crystal:
    import warnings

    from pymatgen.io.cif import CifParser

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        structures = CifParser.from_str(text).parse_structures(primitive=False)
    if not structures:
        raise StructureError("CIF holds no structure")
    return crystal_from_pymatgen(structures[0])


def crystal_from_pymatgen(structure: Any) -> Crystal:
    """A pymatgen Structure (ordered or disordered) as a Crystal."""
    species: list[Species] = []
    kinds: list[str] = []
    for site in structure:
        # Element.symbol and Species.symbol are both the bare element ('Fe' for Fe2+); dummies give 'X...'.
        pairs = tuple((str(getattr(sp, "symbol", sp)), float(occ)) for sp, occ in site.species.items())
        for element, _ in pairs:
            if not known_element(element):
                raise StructureError(f"unknown element symbol {element!r}")
        species.append(pairs)
        kinds.append(site.species_string if len(pairs) == 1 else _kind_label(pairs))
    return Crystal(
        np.array(structure.lattice.matrix, dtype=float),
        np.array(structure.frac_coords, dtype=float).reshape(-1, 3),
        species,
        kinds,
    )


def crystal_from_text(text: str, fmt: str) -> Crystal:
    """Parse structure text of a known format: 'cif', 'poscar', 'extxyz' or 'json'."""
    if not text.strip():
        raise StructureError(f"empty {fmt} input")
    if fmt == "cif":
        return crystal_from_cif(text)
    try:
        if fmt == "poscar":
            import warnings

            from pymatgen.io.vasp import Poscar

            _check_poscar_counts(text)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return crystal_from_pymatgen(Poscar.from_str(text).structure)
        if fmt == "json":
            return _crystal_from_json(text)
        if fmt == "extxyz":
            return _crystal_from_extxyz(text)
    except StructureError:
        raise
    except Exception as exc:
        raise StructureError(f"unreadable {fmt}: {_one_line(exc)}") from None
    raise StructureError(f"unknown structure format {fmt!r}")


def _is_int(token: str) -> bool:
    return token.isdigit()


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _check_poscar_counts(text: str) -> None:
    """A POSCAR's species and atom-count lines must agree with each other and with its coordinate lines.

    pymatgen reads as many coordinate lines as the counts say and ignores the rest, or fails with an index
    error when there are fewer; a file whose counts do not match its atoms is broken, whichever way.
    """
    lines = text.splitlines()
    if len(lines) < 8:
        raise StructureError(f"truncated POSCAR: {len(lines)} lines (a POSCAR has at least 8)")
    first = lines[5].split()
    names, at = (None, 5) if first and all(_is_int(t) for t in first) else (first, 6)
    counts = lines[at].split() if at < len(lines) else []
    if not counts or not all(_is_int(t) for t in counts):
        raise StructureError(f"POSCAR line {at + 1} should hold the atom count of each species, not {lines[at][:60]!r}")
    if names is not None and len(names) != len(counts):
        plural = "s" if len(counts) != 1 else ""
        raise StructureError(
            f"POSCAR names {len(names)} species ({' '.join(names)}) but gives {len(counts)} atom count{plural} "
            f"({' '.join(counts)})"
        )
    expected = sum(int(t) for t in counts)
    at += 1
    if at < len(lines) and lines[at].strip()[:1] in ("s", "S"):  # Selective dynamics
        at += 1
    found = 0
    for line in lines[at + 1 :]:  # after the Direct/Cartesian line, up to the first line that is no position
        parts = line.split()
        if len(parts) < 3 or not all(_is_number(p) for p in parts[:3]):
            break
        found += 1
    if found != expected:
        raise StructureError(
            f"POSCAR atom counts ({' + '.join(counts)} = {expected}) do not match its {found} coordinate lines"
        )


def crystal_to_json(crystal: Crystal) -> str:
    """The crystal as pymatgen Structure JSON (readable by `Structure.from_dict` and by `crystal_from_text`),
    written without importing pymatgen."""
    sites = [
        {
            "species": [{"element": el, "occu": occ} for el, occ in species],
            "abc": [round(float(x), 10) for x in frac],
            "properties": {},
            "label": kind,
        }
        for species, frac, kind in zip(crystal.site_species, crystal.frac_coords, crystal.site_kinds, strict=True)
    ]
    return json.dumps(
        {
            "@module": "pymatgen.core.structure",
            "@class": "Structure",
            "charge": 0,
            "lattice": {"matrix": [[round(float(x), 10) for x in row] for row in crystal.lattice], "pbc": [True] * 3},
            "properties": {},
            "sites": sites,
        }
    )


def _crystal_from_json(text: str) -> Crystal:
    data = json.loads(text)
    if not isinstance(data, dict) or "lattice" not in data or "sites" not in data:
        raise StructureError("JSON is not a pymatgen Structure (needs 'lattice' and 'sites')")
    if isinstance(data["sites"], list) and not data["sites"]:
        raise StructureError("empty structure: no atoms")
    crystal = _plain_crystal_from_json(data)
    if crystal is not None:
        return crystal
    from pymatgen.core import Structure  # only for what the plain path cannot read (an import of ~0.1 s)

    try:
        structure = Structure.from_dict(data)
    except Exception as exc:
        raise StructureError(f"JSON is not a valid pymatgen Structure: {_one_line(exc)}") from None
    return crystal_from_pymatgen(structure)


def _plain_crystal_from_json(data: dict[str, Any]) -> Crystal | None:
    """The Crystal of a plain ordered Structure dict (a lattice matrix; sites of one element each, full
    occupancy, fractional `abc`; what `crystal_to_json` writes) without pymatgen, which spends ~0.3 ms per
    structure building Site objects; None for anything else (oxidation states, partial occupancy, Cartesian
    sites, unknown keys in a species), which goes through pymatgen as before."""
    try:
        matrix = data["lattice"]["matrix"]
        elements, coords = [], []
        for site in data["sites"]:
            (entry,) = site["species"]
            if entry.keys() != {"element", "occu"} or entry["occu"] != 1 or not known_element(entry["element"]):
                return None
            elements.append(entry["element"])
            coords.append(site["abc"])
        lattice = np.array(matrix, dtype=float)
        frac = np.array(coords, dtype=float)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    if lattice.shape != (3, 3) or frac.shape != (len(elements), 3):
        return None
    return Crystal(lattice, frac, [((element, 1.0),) for element in elements], elements)


def _crystal_from_extxyz(text: str) -> Crystal:
    import io

    from ase.io import read

    atoms = read(io.StringIO(text), format="extxyz")
    if not atoms.cell.rank == 3 or not all(atoms.pbc):
        raise StructureError("extended XYZ frame has no 3D periodic lattice (Lattice=... with pbc)")
    kinds = list(atoms.get_chemical_symbols())
    for symbol in kinds:
        if not known_element(symbol):
            raise StructureError(f"unknown element symbol {symbol!r}")
    return Crystal(
        np.array(atoms.cell[:], float),
        np.array(atoms.get_scaled_positions(wrap=False), float),
        [((k, 1.0),) for k in kinds],
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


# --------------------------------------------------------------------------------------------------
# Inputs: files, directories and tables to a stream of Records.


def format_of(path: Path) -> str | None:
    """The structure format a file name implies, or None if it is not a structure file."""
    name, suffix = path.name, path.suffix.lower()
    if suffix in (".cif", ".mcif"):
        return "cif"
    if name in STRUCTURE_NAMES or name.startswith(("POSCAR", "CONTCAR")) or suffix in (".vasp", ".poscar"):
        return "poscar"
    if suffix in (".xyz", ".extxyz"):
        return "extxyz"
    if suffix == ".json":
        return "json"
    if suffix in TABLE_SUFFIXES:
        return "table"
    return None


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files named on the command line, with each directory replaced by its structure files (sorted).

    Raises FileNotFoundError for a missing input and ValueError for a malformed $CLOUD_SCREEN_MAX_FILE_MB.
    """
    max_file_bytes()
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            # scandir knows file types without a stat per file; names sort as the paths would (one folder).
            with os.scandir(path) as entries:
                names = sorted(e.name for e in entries if e.is_file() and format_of(Path(e.name)))
            paths.extend(path / name for name in names)
        elif path.exists():
            paths.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    return paths


@dataclass(slots=True)
class RawInput:
    """A structure not yet parsed: text plus its format (parsing happens in the worker processes)."""

    id: str
    source: str
    fmt: str
    text: str | None = None
    error: str | None = None


def max_file_bytes() -> int:
    """The size limit for one structure file: $CLOUD_SCREEN_MAX_FILE_MB (MiB), else DEFAULT_MAX_FILE_MB."""
    raw = os.environ.get(MAX_FILE_MB_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_FILE_MB << 20
    try:
        megabytes = float(raw)
    except ValueError:
        megabytes = math.nan
    if not megabytes > 0 or not math.isfinite(megabytes):
        raise ValueError(f"{MAX_FILE_MB_ENV}={raw!r}: give the largest structure file to read in MiB, e.g. 64")
    return int(megabytes * (1 << 20))


def _text_limit() -> int:
    """max_file_bytes(), or the default where the variable is malformed (expand_inputs reports that)."""
    try:
        return max_file_bytes()
    except ValueError:
        return DEFAULT_MAX_FILE_MB << 20


def _too_large(size: int, limit: int, what: str = "file") -> str:
    def amount(n: int) -> str:
        return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n:,} bytes"

    return (
        f"{what} too large: {amount(size)}, above the {amount(limit)} limit per structure "
        f"(set {MAX_FILE_MB_ENV} to raise it; tables are streamed, only their structure texts are limited)"
    )


def _read_limited(path: Path, limit: int) -> tuple[bytes | None, str | None]:
    """The bytes of a regular file of at most `limit` bytes, or the reason there are none. A larger file is
    refused from its size, without reading it.

    One open and an fstat of the descriptor (a fifth of the time of stat, then open, through pathlib, which
    counts at thousands of small files per second); O_NONBLOCK so that a FIFO named like a structure file is
    refused instead of waiting for a writer."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        with contextlib.suppress(OSError):  # a socket cannot be opened at all: say what it is
            if not stat.S_ISREG(os.stat(path).st_mode):
                return None, "not a regular file"
        return None, f"cannot read file: {_one_line(exc)}"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None, "not a regular file"
        if info.st_size > limit:
            return None, _too_large(info.st_size, limit)
        parts, size, wanted = [], 0, info.st_size + 1
        while size <= limit:  # usually one read of the whole file; more if it is huge or grew meanwhile
            part = os.read(fd, wanted)
            if not part:
                break
            parts.append(part)
            size += len(part)
            # A short read past the size fstat gave is the end (no extra call to see it); before that it is
            # the kernel's cap on one read (~2 GiB on Linux), not the end.
            if len(part) < wanted and size >= info.st_size:
                break
            wanted = min(limit + 1 - size, max(info.st_size + 1 - size, 1 << 20))
    except OSError as exc:
        return None, f"cannot read file: {_one_line(exc)}"
    finally:
        os.close(fd)
    if size > limit:  # it grew after the size check
        return None, _too_large(size, limit)
    return b"".join(parts), None


def iter_raw_inputs(paths: Iterable[Path], table_batch_rows: int = 4096) -> Iterator[RawInput]:
    """Stream every structure in the given files; tables are read in row batches to bound memory."""
    limit = max_file_bytes()
    for path in paths:
        fmt = format_of(path)
        if fmt == "table":
            yield from _iter_table(path, table_batch_rows)
            continue
        source = str(path)
        if fmt is None:
            yield RawInput(path.stem, source, "unknown", error=f"unrecognised file type {path.suffix or path.name!r}")
            continue
        data, problem = _read_limited(path, limit)
        if data is None:
            yield RawInput(path.stem, source, fmt, error=problem)
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            try:
                text = data.decode("latin-1") if b"\x00" not in data else None
            except Exception:
                text = None
            if text is None:
                yield RawInput(path.stem, source, fmt, error="binary file: not UTF-8 or Latin-1 text")
                continue
        if fmt == "json":
            yield from _iter_json_file(path, text)
        else:
            yield RawInput(path.stem, source, fmt, text)


def _iter_json_file(path: Path, text: str) -> Iterator[RawInput]:
    """A JSON file holds one pymatgen Structure dict, or a list of them (ids from 'id'/'material_id')."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; nesting too deep recurses
        yield RawInput(path.stem, str(path), "json", error=f"invalid JSON: {_one_line(exc)}")
        return
    if isinstance(data, list):
        for i, item in enumerate(data):
            ident = (
                str(item.get("material_id") or item.get("id") or f"{path.stem}:{i}")
                if isinstance(item, dict)
                else f"{path.stem}:{i}"
            )
            structure = item.get("structure", item) if isinstance(item, dict) else item
            yield RawInput(ident, str(path), "json", json.dumps(structure))
    else:
        yield RawInput(path.stem, str(path), "json", text)


def _iter_table(path: Path, batch_rows: int) -> Iterator[RawInput]:
    """Rows of a Parquet/CSV/JSONL table with a `cif` column; ids from `material_id` or `id`, else row number."""
    import polars as pl

    source = str(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            lazy = pl.scan_parquet(path)
        elif suffix == ".csv":
            lazy = pl.scan_csv(path, infer_schema=False)
        else:
            lazy = pl.scan_ndjson(path, infer_schema_length=None)
        columns = lazy.collect_schema().names()
    except Exception as exc:
        yield RawInput(path.stem, source, "table", error=f"unreadable table: {_one_line(exc)}")
        return
    if "cif" not in columns:
        yield RawInput(
            path.stem, source, "table", error=f"table has no 'cif' column (columns: {', '.join(columns[:20])})"
        )
        return
    id_column = next((c for c in ("material_id", "id") if c in columns), None)
    selected = ["cif"] + ([id_column] if id_column else [])
    offset = 0
    while True:
        try:
            batch = lazy.select(selected).slice(offset, batch_rows).collect()
        except Exception as exc:
            yield RawInput(
                f"{path.stem}:{offset}", source, "table", error=f"unreadable table rows from {offset}: {_one_line(exc)}"
            )
            return
        if batch.height == 0:
            return
        cifs = batch["cif"].to_list()
        ids = batch[id_column].cast(pl.String).to_list() if id_column else [None] * batch.height
        for row, (ident, cif) in enumerate(zip(ids, cifs, strict=True)):
            ident = ident if ident is not None else str(offset + row)
            if cif is None:
                yield RawInput(ident, source, "cif", error="empty cif cell")
            else:
                yield RawInput(ident, source, "cif", cif)
        offset += batch.height
        if batch.height < batch_rows:
            return


def parse_raw(raw: RawInput, max_sites: int = DEFAULT_MAX_SITES) -> Record:
    """Parse and validate one raw input; a failure becomes the record's error, never an exception."""
    if raw.error is not None:
        return Record(raw.id, raw.source, error=raw.error)
    if raw.text is not None and len(raw.text) > (limit := _text_limit()):  # e.g. one cell of a table
        return Record(raw.id, raw.source, error=_too_large(len(raw.text), limit, "structure text"))
    try:
        crystal = validate(crystal_from_text(raw.text or "", raw.fmt), max_sites)
    except StructureError as exc:
        return Record(raw.id, raw.source, error=str(exc))
    except Exception as exc:  # a parser bug or an exotic file must not take the batch down
        return Record(raw.id, raw.source, error=f"{type(exc).__name__}: {_one_line(exc)}")
    return Record(raw.id, raw.source, crystal=crystal)

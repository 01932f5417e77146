"""Space group and Wyckoff letters of a crystal, from spglib (the reference) or moyopy (faster).

Both backends give, per input site, the Wyckoff letter in the standard setting of the space group, plus the
ratio of conventional-cell to input-cell volume (which turns site counts into orbit counts). When the search
fails at the requested tolerance we walk a fixed ladder of tolerances and record the one that worked:

    symprec, symprec / 10, symprec / 100     (angle tolerance as requested, then spglib's default)

Failures at a tolerance come from tolerances large enough to make the found operations inconsistent, so
tightening is what helps; a tighter search can only lower the symmetry, which the row records via `symprec`.
The moyopy backend falls back to spglib when moyopy fails on every rung.

Runtime guard: moyopy is used only where it is expected to agree with spglib. A structure is borderline when
moyopy's answer sits near the edge of the tolerance, and there the two libraries' slightly different tolerance
rules can pick different groups (on mp37k at 0.01 Å, 77 of 36,737 differed). Borderline means any of:

- moyopy had to lower symprec internally to get a consistent group;
- symmetrising the input under moyopy's group moves some atom by more than BORDERLINE_DISPLACEMENT x symprec
  (moyopy accepted operations that only just fit, spglib may reject them);
- the lattice admits a rotation that moyopy did not report and that maps every atom onto an atom of the same
  kind within BORDERLINE_EXTRA_MAPPING x symprec (spglib, whose lattice test takes angles within 5 degrees,
  may accept an operation that moyopy's stricter angle rule rejects).

Borderline structures are analysed again with spglib (whole ladder), and the row's backend says so. The
guard's tests exit before any work where nothing can have been missed (moyopy reports the full cubic point
group; there are no more loose lattice rotations than moyopy's rotations), and the two costly ones (the
symmetrising displacement and the missed-rotation test, which maps the atoms under every candidate operation)
run in C (cloud_core/_kernels.c) where it is built, with the numpy versions below as reference and fallback:
about 0.035 ms per structure on the 4,000-structure benchmark, against ~0.39 ms for moyopy's own search.
bench/agreement.py measures what the tests catch, bench/kernels_vs_numpy.py that both implementations agree.

Repeated geometries are searched once per process (find_symmetry's cache): candidates generated from one
prototype differ only in their elements, and the search depends only on the geometry and on which sites share
a kind.
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass
from functools import cache
from itertools import chain
from typing import Literal

import numpy as np

from cloud_core.forked import ChildDied, ChildTimedOut, call_forked
from cloud_core.structures import Crystal, StructureError, kernels

Backend = Literal["spglib", "moyopy"]

# moyopy warns (per structure, via logging) that on supercell inputs its orbits use primitive-cell symmetry;
# we use only its space group, letters and standard cell, so the warning is noise in a batch of millions.
logging.getLogger("moyo").setLevel(logging.ERROR)

DEFAULT_SYMPREC = 0.01  # Å, the reference's (pymatgen SpacegroupAnalyzer's) default
DEFAULT_ANGLE_TOLERANCE = 5.0  # degrees, likewise
# Cells with more sites than this are searched in a forked child process under a time limit (seconds), so one
# huge or pathological cell costs one error row, never a stuck batch; a crash of spglib or moyopy on it costs
# the row too, not the worker. Smaller cells take milliseconds and are searched in-process (no fork).
TIME_LIMITED_MIN_SITES = 500
DEFAULT_TIME_LIMIT = 60.0


@dataclass(slots=True, frozen=True)
class Symmetry:
    number: int  # space group number 1..230
    wyckoffs: tuple[str, ...]  # Wyckoff letter of each input site, standard setting
    conventional_volume_ratio: float  # V(conventional standard cell) / V(input cell)
    symprec: float  # tolerance that succeeded
    backend: Backend


def tolerance_ladder(symprec: float, angle_tolerance: float) -> list[tuple[float, float]]:
    return [(symprec, angle_tolerance), (symprec / 10, angle_tolerance), (symprec / 100, -1.0)]


def find_symmetry(
    crystal: Crystal,
    backend: Backend = "spglib",
    symprec: float = DEFAULT_SYMPREC,
    angle_tolerance: float = DEFAULT_ANGLE_TOLERANCE,
    guard: bool = True,
    time_limit: float | None = None,
) -> Symmetry:
    """Symmetry of `crystal`, walking the tolerance ladder; raises StructureError if nothing works.

    With the moyopy backend, a borderline result (see the module docstring) goes to spglib instead, unless
    `guard` is False (benchmarks use that to measure the bare backend). With a `time_limit` (seconds), a cell
    of more than TIME_LIMITED_MIN_SITES sites is searched in a child process that is stopped at the limit.
    """
    args = (crystal, backend, symprec, angle_tolerance, guard)
    if time_limit and crystal.nsites > TIME_LIMITED_MIN_SITES and hasattr(os, "fork"):
        return _search_in_child(args, time_limit)
    if crystal.nsites > SEARCH_CACHE_MAX_SITES:
        return _search(*args)
    # The answer depends on the geometry and on which sites share a kind, not on the elements: candidates made
    # by substituting elements into one prototype (the screen's generator) share a search.
    key = (crystal.lattice.tobytes(), crystal.frac_coords.tobytes(), crystal.kind_numbers().tobytes(), args[1:])
    found = _searched.get(key)
    if found is None:
        found = _searched[key] = _search(*args)
        while len(_searched) > SEARCH_CACHE_SIZE:
            _searched.popitem(last=False)  # the least recently used
    else:
        _searched.move_to_end(key)
    return found


# Symmetry of recently searched cells (per process), by exact geometry, site kinds and settings: the libraries
# are deterministic, so a repeated search would give the same answer. Only successful searches of cells of
# up to SEARCH_CACHE_MAX_SITES sites are kept (keys of at most ~2 kB: a few MB per process).
SEARCH_CACHE_SIZE, SEARCH_CACHE_MAX_SITES = 4096, 64
_searched: OrderedDict[tuple, Symmetry] = OrderedDict()


def _search(crystal: Crystal, backend: Backend, symprec: float, angle_tolerance: float, guard: bool = True) -> Symmetry:
    cell = (crystal.lattice, crystal.frac_coords, crystal.kind_numbers())
    errors = []
    searches = [_moyopy, _spglib] if backend == "moyopy" else [_spglib]
    for search in searches:
        for prec, angle in tolerance_ladder(symprec, angle_tolerance):
            try:
                result = search(cell, prec, angle) if search is _spglib else _moyopy(cell, prec, angle, guard)
            except Borderline:
                break  # straight to spglib's ladder
            except Exception as exc:  # both libraries signal failure by raising (or returning None)
                errors.append(f"{search.__name__[1:]}@{prec:g}: {' '.join(str(exc).split())[:120]}")
                continue
            if result is not None:
                return result
            errors.append(f"{search.__name__[1:]}@{prec:g}: no dataset")
    raise StructureError("symmetry search failed at every tolerance (" + "; ".join(errors) + ")")


def _search_in_child(args: tuple, time_limit: float) -> Symmetry:
    """_search(*args) in a forked child that is killed after `time_limit` seconds (see cloud_core.forked)."""
    nsites = args[0].nsites
    try:
        return call_forked(_search, *args, time_limit=time_limit)
    except ChildTimedOut:
        raise StructureError(
            f"symmetry search stopped at the time limit of {time_limit:g} s ({nsites} sites; cells of more "
            f"than {TIME_LIMITED_MIN_SITES} sites are searched under a time limit)"
        ) from None
    except ChildDied as died:
        raise StructureError(f"symmetry search crashed ({died.how}) on this cell of {nsites} sites") from None


def _spglib(cell: tuple, symprec: float, angle_tolerance: float) -> Symmetry | None:
    import spglib

    dataset = spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=angle_tolerance)
    if dataset is None:
        return None
    ratio = abs(np.linalg.det(dataset.std_lattice)) / abs(np.linalg.det(cell[0]))
    return Symmetry(int(dataset.number), tuple(dataset.wyckoffs), float(ratio), symprec, "spglib")


class Borderline(Exception):
    """moyopy found a group, but too close to the tolerance's edge to trust it to agree with spglib."""


def _moyopy(cell: tuple, symprec: float, angle_tolerance: float, guard: bool = True) -> Symmetry | None:
    import moyopy

    lattice, frac, numbers = cell
    # The angle tolerance is deliberately left to moyopy (it derives one from symprec). moyopy takes it in
    # radians; even 5 degrees (0.087 rad) makes moyopy 0.21 loop forever on some cells whose angles sit at
    # that edge (mp-9947, SiC, 85.01 degrees after reduction), while spglib takes 1 ms on it. The structures
    # where the stricter derived angle rule matters are caught by the borderline guard instead.
    del angle_tolerance
    moyo_cell = moyopy.Cell(lattice.tolist(), frac.tolist(), numbers.tolist())
    dataset = moyopy.MoyoDataset(moyo_cell, symprec=symprec)
    reason = _borderline(dataset, lattice, frac, numbers, symprec) if guard else None
    if reason:
        raise Borderline(reason)
    ratio = abs(determinant3(dataset.std_cell.basis)) / abs(determinant3(lattice))
    return Symmetry(int(dataset.number), tuple(dataset.wyckoffs), float(ratio), symprec, "moyopy")


# --------------------------------------------------------------------------------------------------
# The borderline guard (see the module docstring).

BORDERLINE_DISPLACEMENT = 0.4  # x symprec: largest displacement that symmetrising the input may need
BORDERLINE_EXTRA_MAPPING = 3.0  # x symprec: how well a missed lattice rotation must map the atoms to count
_LATTICE_LENGTH_TOLERANCE = 3.0  # x symprec, for the lattice rotations a looser search could accept
_LATTICE_ANGLE_TOLERANCE = 6.0  # degrees (spglib's is 5)
# Integer combinations (-1, 0, 1)^3 of reduced basis vectors: candidates for the images of the basis vectors.
_COMBINATIONS = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if i or j or k], float)


def _borderline(dataset, lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray, symprec: float) -> str | None:
    """Why moyopy's result is too close to the tolerance to trust, or None."""
    if dataset.symprec < symprec:
        return f"moyopy lowered symprec to {dataset.symprec:g}"
    displacement = _symmetrizing_displacement(dataset, frac)
    if displacement > BORDERLINE_DISPLACEMENT * symprec:
        return f"symmetrising moves an atom by {displacement:.4f} Å"
    if _missed_rotation(dataset, lattice, frac, numbers, symprec):
        return "a lattice rotation moyopy did not report nearly maps the atoms"
    return None


def _symmetrizing_displacement(dataset, frac: np.ndarray) -> float:
    """Largest distance (Å) between an input atom and its place in moyopy's refined primitive cell."""
    prim = dataset.prim_std_cell
    if kernels is not None:  # the same steps in C (cloud_core/_kernels.c)
        return kernels.symmetrizing_displacement(
            np.ascontiguousarray(frac, dtype=np.float64),
            prim.positions,
            dataset.mapping_std_prim,
            dataset.prim_std_origin_shift,
            dataset.prim_std_linear,
            prim.basis,
        )
    ideal = np.array(prim.positions)[dataset.mapping_std_prim]
    delta = (frac - dataset.prim_std_origin_shift) @ _inverse3(dataset.prim_std_linear).T - ideal
    delta -= np.round(delta)
    delta = delta @ np.array(prim.basis)
    return math.sqrt(float(np.einsum("ij,ij->i", delta, delta).max()))


def _inverse3(matrix) -> np.ndarray:
    """Inverse of a 3 x 3 matrix (nested lists or array) by its adjugate: no LAPACK call for 9 numbers."""
    (a, b, c), (d, e, f), (g, h, i) = matrix.tolist() if isinstance(matrix, np.ndarray) else matrix
    co_a, co_b, co_c = e * i - f * h, f * g - d * i, d * h - e * g
    det = a * co_a + b * co_b + c * co_c
    adjugate = [
        [co_a, c * h - b * i, b * f - c * e],
        [co_b, a * i - c * g, c * d - a * f],
        [co_c, b * g - a * h, a * e - b * d],
    ]
    return np.array(adjugate) / det


def determinant3(matrix) -> float:
    """Determinant of a 3 x 3 matrix (nested lists or array), by cofactors of the first row in plain floats."""
    (a, b, c), (d, e, f), (g, h, i) = matrix.tolist() if isinstance(matrix, np.ndarray) else matrix
    return a * (e * i - f * h) + b * (f * g - d * i) + c * (d * h - e * g)


def _reduce(lattice: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """A short basis (pairwise Gauss reduction) and the integer matrix M with reduced = M @ lattice (None
    when the input basis is already reduced, M being the identity).

    Plain Python floats: a 3 x 3 problem is far cheaper without numpy's per-call overhead.
    """
    basis = lattice.tolist()
    matrix = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    norms = [v[0] * v[0] + v[1] * v[1] + v[2] * v[2] for v in basis]
    reduced = False
    for _ in range(50):
        changed = False
        for i in range(3):
            for j in range(3):
                if i == j:
                    continue
                bi, bj = basis[i], basis[j]
                k = round((bi[0] * bj[0] + bi[1] * bj[1] + bi[2] * bj[2]) / norms[j])
                if k:
                    shorter = [bi[0] - k * bj[0], bi[1] - k * bj[1], bi[2] - k * bj[2]]
                    norm = shorter[0] * shorter[0] + shorter[1] * shorter[1] + shorter[2] * shorter[2]
                    if norm < norms[i] - 1e-12:
                        basis[i], norms[i] = shorter, norm
                        mi, mj = matrix[i], matrix[j]
                        matrix[i] = [mi[0] - k * mj[0], mi[1] - k * mj[1], mi[2] - k * mj[2]]
                        changed = reduced = True
        if not changed:
            break
    if not reduced:
        return lattice, None
    return np.array(basis), np.array(matrix, dtype=float)


_UNIT_COMBINATIONS = [_COMBINATIONS.tolist().index(row) for row in ([1, 0, 0], [0, 1, 0], [0, 0, 1])]
_KEY_POWERS = 3 ** np.arange(9)


@cache
def _combination_tables() -> tuple[np.ndarray, np.ndarray]:
    """For every triple (a, b, c) of _COMBINATIONS: whether the integer matrix with those rows is unimodular;
    and, per column position, each combination's share of the base-3 key of W = N^T (see _missed_rotation)."""
    combos = _COMBINATIONS.astype(np.int64)
    det = np.einsum("ak,bck->abc", combos, np.cross(combos[:, None, :], combos[None, :, :]))
    # W[r, col] = combos[triple[col]][r], so entry (r, col) has weight 3 ** (3 r + col).
    column_keys = np.stack([(combos + 1) @ (3 ** (3 * np.arange(3) + col)) for col in range(3)])  # (3, 26)
    return np.abs(det) == 1, column_keys


def _lattice_rotations(basis: np.ndarray, length_tolerance: float, at_most: int = 0) -> np.ndarray:
    """Index triples (a, b, c) into _COMBINATIONS: rows of the integer matrices N (images of the reduced
    basis vectors) that keep lengths within length_tolerance and angles within _LATTICE_ANGLE_TOLERANCE,
    the lattice's rotations, loosely. Row-major order over the candidate images of a, then b, then c.
    Returns an empty array when there can be no more than `at_most` of them."""
    vectors = _COMBINATIONS @ basis
    gram = vectors @ vectors.T  # (26, 26)
    vector_lengths = np.sqrt(gram.diagonal())
    unit = _UNIT_COMBINATIONS
    close = np.abs(vector_lengths - vector_lengths[unit][:, None]) <= length_tolerance  # (3, 26)
    c0, c1, c2 = (np.flatnonzero(row) for row in close)
    if len(c0) * len(c1) * len(c2) <= at_most:
        return _NO_TRIPLES
    angle = np.degrees(np.arccos(np.clip(gram / np.outer(vector_lengths, vector_lengths), -1, 1)))
    unimodular, _ = _combination_tables()
    i0, i1, i2 = c0[:, None, None], c1[None, :, None], c2[None, None, :]
    keep = unimodular[i0, i1, i2]
    keep &= np.abs(angle[i0, i1] - angle[unit[0], unit[1]]) <= _LATTICE_ANGLE_TOLERANCE
    keep &= np.abs(angle[i0, i2] - angle[unit[0], unit[2]]) <= _LATTICE_ANGLE_TOLERANCE
    keep &= np.abs(angle[i1, i2] - angle[unit[1], unit[2]]) <= _LATTICE_ANGLE_TOLERANCE
    a, b, c = keep.nonzero()
    return np.stack([c0[a], c1[b], c2[c]], axis=1)


_NO_TRIPLES = np.empty((0, 3), dtype=np.int64)
_IDENTITY = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]


def _missed_rotation(dataset, lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray, symprec: float) -> bool:
    """Does a lattice rotation that moyopy did not report map every atom near an atom of the same kind?"""
    rotations = dataset.operations.rotations  # input basis: on supercells, only those integer in it
    if kernels is None or len(frac) > C_GUARD_MAX_SITES:
        return _missed_rotation_numpy(rotations, lattice, frac, numbers, symprec)
    return kernels.missed_rotation(
        np.ascontiguousarray(lattice, dtype=np.float64),
        np.ascontiguousarray(frac, dtype=np.float64),
        np.ascontiguousarray(numbers, dtype=np.int32),
        np.fromiter(chain.from_iterable(chain.from_iterable(rotations)), np.int64, 9 * len(rotations)),
        _LATTICE_LENGTH_TOLERANCE * symprec,
        _LATTICE_ANGLE_TOLERANCE,
        BORDERLINE_EXTRA_MAPPING * symprec,
    )


def _missed_rotation_numpy(
    rotations: list, lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray, symprec: float
) -> bool:
    """_missed_rotation given moyopy's rotations (input basis, nested lists), in numpy: the reference for
    cloud_core/_kernels.c, and what runs where that is not built or the cell is large (the KD-tree keeps the
    atom-mapping test fast on thousands of sites)."""
    # moyopy's operations form a group; its distinct rotations are the operations over pure translations.
    n_found = len(rotations) // sum(1 for r in rotations if r == _IDENTITY)
    if n_found == 48:
        # m-3m, the largest point group a lattice can have, and moyopy found all of it. A cubic lattice's loose
        # rotations are these 48: no other combination of the reduced basis comes within 3 x symprec of a
        # basis vector's length and 6 degrees of its angles. So none was missed.
        return False
    basis, matrix = _reduce(lattice)
    triples = _lattice_rotations(basis, _LATTICE_LENGTH_TOLERANCE * symprec, at_most=n_found)
    if len(triples) <= n_found:  # moyopy's rotations are lattice rotations: nothing was missed
        return False
    # moyopy's rotations (input basis, acting on column vectors) in the reduced basis: W = M^-T R M^T.
    found = np.fromiter(chain.from_iterable(chain.from_iterable(rotations)), np.int64, 9 * len(rotations))
    if matrix is not None:
        inverse = _inverse3(matrix)  # exact: M is unimodular, so its adjugate is integer and det is +-1
        found = np.rint(inverse.T @ found.reshape(-1, 3, 3) @ matrix.T).astype(np.int64).reshape(-1)
    found = found.reshape(-1, 9)
    found_keys = set(((found[(np.abs(found) <= 1).all(axis=1)] + 1) @ _KEY_POWERS).tolist())  # others: no candidates
    _, column_keys = _combination_tables()
    keys = column_keys[0, triples[:, 0]] + column_keys[1, triples[:, 1]] + column_keys[2, triples[:, 2]]
    missed_triples = triples[[key not in found_keys for key in keys.tolist()]]
    if not len(missed_triples):
        return False
    # W = N^T for each missed rotation; images[w, n] = W_w x_n = x_n @ N_w.
    x = frac if matrix is None else frac @ inverse  # reduced fractional coordinates
    images = x @ _COMBINATIONS[missed_triples]  # (w, n, 3)
    counts = np.bincount(numbers)
    kinds = [k for k in np.argsort(counts, kind="stable").tolist() if counts[k]]  # rarest kind first
    rare = (numbers == kinds[0]).nonzero()[0]
    # Candidate operations (W, t): t takes the first atom of the rarest kind onto each atom of that kind.
    shifts = x[rare][None, :, :] - images[:, rare[0], None, :]  # (w, m, 3)
    pair_w, pair_t = np.divmod(np.arange(len(images) * len(rare)), len(rare))
    tolerance = BORDERLINE_EXTRA_MAPPING * symprec
    # An operation counts when every atom lands within the tolerance of an atom of its kind. Test atoms kind
    # by kind (rarest first), in growing blocks, dropping failed operations as we go: the first blocks settle
    # almost every operation, and the answer does not depend on the order.
    for kind in kinds:
        members = (numbers == kind).nonzero()[0]
        if kind == kinds[0]:
            members = members[1:]  # the first atom of the rarest kind lands on an atom by construction
        targets = x[numbers == kind]
        tree = None
        start, size = 0, _FIRST_BLOCK
        while start < len(members):
            if tree is None and len(pair_w) * len(targets) > _MAPPING_BLOCK:
                # Even one atom per block would need more than _MAPPING_BLOCK distances (large cells, where the
                # rarest kind gives thousands of candidate translations): look up nearest targets in a KD-tree.
                tree = _PeriodicNearest(targets, basis)
            if tree is not None:
                size = max(1, min(size, _TREE_BLOCK // len(pair_w)))
            else:
                size = max(1, min(size, _MAPPING_BLOCK // (len(pair_w) * len(targets))))
            block = members[start : start + size]
            moved = images[pair_w[:, None], block[None, :]] + shifts[pair_w, pair_t][:, None, :]  # (s, b, 3)
            if tree is not None:
                keep = tree.distance(moved, tolerance).max(axis=1) <= tolerance
            else:
                delta = moved[:, :, None, :] - targets  # (s, b, k, 3)
                delta -= np.round(delta)
                delta = delta @ basis
                nearest = np.einsum("...k,...k->...", delta, delta).min(axis=2).max(axis=1)  # (s,), squared
                keep = np.sqrt(nearest) <= tolerance
            pair_w, pair_t = pair_w[keep], pair_t[keep]
            if not len(pair_w):
                return False
            start, size = start + size, size * _BLOCK_GROWTH
    return True


# Cells of up to this many sites take the C implementation of the test (an atom-by-atom search, fast on small
# cells); larger ones the numpy one, whose KD-tree keeps thousands of sites fast.
C_GUARD_MAX_SITES = 500

# The mapping test's blocks: 4 atoms first, then 4 times as many each time, and at most this many
# (operation, atom, atom) distances in one array (memory stays small on 2,000-site cells). Where even one
# atom per block would exceed that, at most _TREE_BLOCK (operation, atom) positions per KD-tree lookup.
_FIRST_BLOCK, _BLOCK_GROWTH, _MAPPING_BLOCK, _TREE_BLOCK = 4, 4, 200_000, 500_000


class _PeriodicNearest:
    """Distance (Å) from points to the nearest of a set of targets, periodic images included.

    Coordinates are fractional in a reduced basis; each point is wrapped into the unit cell and looked up in a
    KD-tree over the targets' 27 images around it. The nearest image of a wrapped point is among those
    whenever the distance is below the cell's smallest plane spacing, far above the tolerances asked here.
    The dense test (minimum image by rounding fractional differences) gives the same distance wherever it is
    within those tolerances: a reduced basis makes the rounded image the nearest one at such short range.
    """

    def __init__(self, targets: np.ndarray, basis: np.ndarray) -> None:
        from scipy.spatial import cKDTree

        from cloud_core.structures import _SHIFTS

        wrapped = targets - np.floor(targets)
        images = (wrapped[None, :, :] + _SHIFTS[:, None, :]).reshape(-1, 3) @ basis
        self.tree, self.basis = cKDTree(images), basis

    def distance(self, points: np.ndarray, upper_bound: float) -> np.ndarray:
        """Nearest-target distances for fractional points of any shape (..., 3), the shape without the 3;
        inf where no target is within upper_bound."""
        flat = points.reshape(-1, 3)
        distances, _ = self.tree.query((flat - np.floor(flat)) @ self.basis, k=1, distance_upper_bound=upper_bound)
        return distances.reshape(points.shape[:-1])

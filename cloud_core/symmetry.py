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
first two tests are cheap; the missed-rotation test costs about as much as moyopy's own search (about 1 ms
per structure, measured on the 4,000-structure benchmark) and is the next thing to make faster.
bench/agreement.py measures what the tests catch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cloud_core.structures import Crystal, StructureError

Backend = Literal["spglib", "moyopy"]

# moyopy warns (per structure, via logging) that on supercell inputs its orbits use primitive-cell symmetry;
# we use only its space group, letters and standard cell, so the warning is noise in a batch of millions.
logging.getLogger("moyo").setLevel(logging.ERROR)

DEFAULT_SYMPREC = 0.01  # Å, the reference's (pymatgen SpacegroupAnalyzer's) default
DEFAULT_ANGLE_TOLERANCE = 5.0  # degrees, likewise


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
) -> Symmetry:
    """Symmetry of `crystal`, walking the tolerance ladder; raises StructureError if nothing works.

    With the moyopy backend, a borderline result (see the module docstring) goes to spglib instead, unless
    `guard` is False (benchmarks use that to measure the bare backend).
    """
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
    std_volume = abs(np.linalg.det(np.array(dataset.std_cell.basis)))
    ratio = std_volume / abs(np.linalg.det(lattice))
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
    linear = np.array(dataset.prim_std_linear)
    ideal = np.array(prim.positions)[np.array(dataset.mapping_std_prim)]
    delta = (frac - np.array(dataset.prim_std_origin_shift)) @ np.linalg.inv(linear).T - ideal
    delta -= np.round(delta)
    return float(np.sqrt(((delta @ np.array(prim.basis)) ** 2).sum(axis=1)).max())


def _reduce(lattice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A short basis (pairwise Gauss reduction) and the integer matrix M with reduced = M @ lattice."""
    basis, matrix = lattice.copy(), np.eye(3)
    for _ in range(50):
        changed = False
        for i in range(3):
            for j in range(3):
                if i == j:
                    continue
                k = round(float(basis[i] @ basis[j]) / float(basis[j] @ basis[j]))
                if k:
                    shorter = basis[i] - k * basis[j]
                    if shorter @ shorter < basis[i] @ basis[i] - 1e-12:
                        basis[i], matrix[i] = shorter, matrix[i] - k * matrix[j]
                        changed = True
        if not changed:
            break
    return basis, matrix


def _lattice_rotations(basis: np.ndarray, length_tolerance: float) -> np.ndarray:
    """Integer matrices N (rows: images of the reduced basis vectors) that keep lengths within
    length_tolerance and angles within _LATTICE_ANGLE_TOLERANCE: the lattice's rotations, loosely."""
    lengths = np.sqrt((basis * basis).sum(axis=1))
    vectors = _COMBINATIONS @ basis
    vector_lengths = np.sqrt((vectors * vectors).sum(axis=1))
    candidates = [np.flatnonzero(np.abs(vector_lengths - lengths[i]) <= length_tolerance) for i in range(3)]
    picks = np.meshgrid(*candidates, indexing="ij")
    rows = np.stack([_COMBINATIONS[pick.ravel()] for pick in picks], axis=1)  # (c, 3, 3)
    rows = rows[np.abs(np.abs(np.linalg.det(rows)) - 1) < 1e-6]
    images = rows @ basis
    image_lengths = np.sqrt((images * images).sum(axis=2))
    keep = np.ones(len(rows), dtype=bool)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        before = np.arccos(np.clip(basis[i] @ basis[j] / (lengths[i] * lengths[j]), -1, 1))
        cosine = (images[:, i] * images[:, j]).sum(axis=1) / (image_lengths[:, i] * image_lengths[:, j])
        keep &= np.abs(np.degrees(np.arccos(np.clip(cosine, -1, 1)) - before)) <= _LATTICE_ANGLE_TOLERANCE
    return rows[keep]


def _missed_rotation(dataset, lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray, symprec: float) -> bool:
    """Does a lattice rotation that moyopy did not report map every atom near an atom of the same kind?"""
    rotations = np.array(dataset.operations.rotations, dtype=float).reshape(-1, 3, 3)
    basis, matrix = _reduce(lattice)
    candidates = _lattice_rotations(basis, _LATTICE_LENGTH_TOLERANCE * symprec)
    distinct = np.unique(rotations.reshape(-1, 9).round(), axis=0)
    if len(candidates) <= len(distinct):  # moyopy's rotations are lattice rotations: nothing was missed
        return False
    inverse = np.linalg.inv(matrix)
    # Fractional rotations in the reduced basis (acting on column vectors): W = N^T; moyopy's, converted.
    found = np.round(inverse.T @ distinct.reshape(-1, 3, 3) @ matrix.T).astype(np.int64)
    missed = np.round(np.swapaxes(candidates, 1, 2)).astype(np.int64)
    missed = missed[~(missed[:, None] == found[None]).all(axis=(2, 3)).any(axis=1)].astype(float)
    if not len(missed):
        return False
    x = frac @ inverse  # reduced fractional coordinates
    kinds, counts = np.unique(numbers, return_counts=True)
    rare = np.flatnonzero(numbers == kinds[np.argmin(counts)])
    tolerance = BORDERLINE_EXTRA_MAPPING * symprec
    images = np.einsum("wij,nj->wni", missed, x)  # (w, n, 3)
    # Translations that take the first atom of the rarest kind onto each atom of that kind.
    shifts = x[rare][None, :, :] - images[:, rare[0], :][:, None, :]  # (w, m, 3)
    # Quick test on (up to 4 atoms of) the rarest kind alone, then the full test for what survives.
    probe = rare[:4]
    delta = images[:, None, probe, None, :] + shifts[:, :, None, None, :] - x[rare][None, None, None, :, :]
    delta -= np.round(delta)
    worst = np.sqrt(((delta @ basis) ** 2).sum(axis=-1)).min(axis=3).max(axis=2)  # (w, m)
    same = numbers[:, None] == numbers[None, :]
    for w, t in np.argwhere(worst <= tolerance):
        delta = (images[w] + shifts[w, t])[:, None, :] - x[None, :, :]
        delta -= np.round(delta)
        distances = np.where(same, np.sqrt(((delta @ basis) ** 2).sum(axis=-1)), np.inf)
        if distances.min(axis=1).max() <= tolerance:
            return True
    return False

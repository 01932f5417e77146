"""Space group and Wyckoff letters of a crystal, from spglib (the reference) or moyopy (faster).

Both backends give, per input site, the Wyckoff letter in the standard setting of the space group, plus the
ratio of conventional-cell to input-cell volume (which turns site counts into orbit counts). When the search
fails at the requested tolerance we walk a fixed ladder of tolerances and record the one that worked:

    symprec, symprec / 10, symprec / 100     (angle tolerance as requested, then spglib's default)

Failures at a tolerance come from tolerances large enough to make the found operations inconsistent, so
tightening is what helps; a tighter search can only lower the symmetry, which the row records via `symprec`.
The moyopy backend falls back to spglib when moyopy fails on every rung.
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
) -> Symmetry:
    """Symmetry of `crystal`, walking the tolerance ladder; raises StructureError if nothing works."""
    cell = (crystal.lattice, crystal.frac_coords, crystal.kind_numbers())
    errors = []
    searches = [_moyopy, _spglib] if backend == "moyopy" else [_spglib]
    for search in searches:
        for prec, angle in tolerance_ladder(symprec, angle_tolerance):
            try:
                result = search(cell, prec, angle)
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


def _moyopy(cell: tuple, symprec: float, angle_tolerance: float) -> Symmetry | None:
    import moyopy

    lattice, frac, numbers = cell
    # The angle tolerance is deliberately left to moyopy (it derives one from symprec): with an explicit
    # angle tolerance moyopy 0.21 never returns on some very acute cells (mp-9947, SiC with 10 degree
    # angles), while spglib takes 1 ms on it. Agreement with spglib is measured in bench/README.md.
    del angle_tolerance
    moyo_cell = moyopy.Cell(lattice.tolist(), frac.tolist(), numbers.tolist())
    dataset = moyopy.MoyoDataset(moyo_cell, symprec=symprec)
    std_volume = abs(np.linalg.det(np.array(dataset.std_cell.basis)))
    ratio = std_volume / abs(np.linalg.det(lattice))
    return Symmetry(int(dataset.number), tuple(dataset.wyckoffs), float(ratio), symprec, "moyopy")

"""Every kind of bad input becomes one row with a specific reason; the good rows around it still encode."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from cloud_core.encode import EncodeSettings, encode_structures
from cloud_core.structures import Crystal

GOOD_CIF = """data_NaCl
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_symmetry_equiv_pos_as_xyz
'x, y, z'
loop_
_atom_site_type_symbol
_atom_site_label
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Na Na0 0 0 0 1
Na Na1 0 0.5 0.5 1
Na Na2 0.5 0 0.5 1
Na Na3 0.5 0.5 0 1
Cl Cl4 0.5 0.5 0.5 1
Cl Cl5 0.5 0 0 1
Cl Cl6 0 0.5 0 1
Cl Cl7 0 0 0.5 1
"""


def encode_one(item, **settings):
    """Encode `item` between two good structures and return its row; the neighbours must stay good."""
    frame = encode_structures([GOOD_CIF, item, GOOD_CIF], ["before", "bad", "after"], EncodeSettings(**settings))
    assert frame.height == 3
    for neighbour in ("before", "after"):
        row = frame.filter(frame["id"] == neighbour).row(0, named=True)
        assert row["error"] is None and row["scope"].endswith("| Na 0.5 Cl 0.5"), row
    return frame.filter(frame["id"] == "bad").row(0, named=True)


def assert_error(row, *fragments):
    assert row["scope"] is None
    assert row["error"] is not None
    for fragment in fragments:
        assert fragment in row["error"], row["error"]


def test_truncated_cif():
    assert_error(encode_one(GOOD_CIF[: GOOD_CIF.index("_atom_site_fract_y")]), "CIF")


def test_garbage_text():
    assert_error(encode_one("\x00\x01 this is not a crystal \xff" * 20), "unreadable CIF")


def test_empty_text():
    assert_error(encode_one("   \n"), "empty")


def test_unknown_element():
    assert_error(encode_one(GOOD_CIF.replace("Cl Cl4", "Qq Cl4")), "unknown element", "Qq")


def test_nan_cell_parameter():
    assert_error(encode_one(GOOD_CIF.replace("_cell_length_b 5.64", "_cell_length_b nan")))


def test_nan_coordinates():
    crystal = Crystal(np.eye(3) * 4, np.array([[0, 0, 0], [np.nan, 0.5, 0.5]]), [(("Na", 1.0),), (("Cl", 1.0),)])
    assert_error(encode_one(crystal), "non-finite")


def test_zero_volume_cell():
    lattice = np.array([[4.0, 0, 0], [0, 4.0, 0], [4.0, 4.0, 0]])  # third vector in the plane of the others
    crystal = Crystal(lattice, np.array([[0, 0, 0], [0.5, 0.5, 0.5]]), [(("Na", 1.0),), (("Cl", 1.0),)])
    assert_error(encode_one(crystal), "degenerate cell")


def test_overlapping_atoms():
    cif = GOOD_CIF.replace("Cl Cl7 0 0 0.5 1", "Cl Cl7 0 0 0.5 1\nCl Cl8 0.001 0 0.5 1")
    assert_error(encode_one(cif), "overlapping atoms", "0.006")


def test_overlap_across_the_cell_boundary():
    crystal = Crystal(np.eye(3) * 5, np.array([[0.001, 0, 0], [0.999, 0, 0]]), [(("Na", 1.0),), (("Cl", 1.0),)])
    assert_error(encode_one(crystal), "overlapping atoms", "0.010")


def test_empty_structure():
    assert_error(encode_one(Structure(Lattice.cubic(4), [], [])), "empty structure")


def test_cif_without_atoms():
    assert_error(encode_one(GOOD_CIF[: GOOD_CIF.index("loop_\n_atom_site_type_symbol")]))


def test_too_many_sites(rocksalt):
    big = rocksalt * (3, 3, 3)  # 216 sites
    assert_error(encode_one(big, max_sites=200), "too many sites", "216")
    row = encode_one(big, max_sites=300)
    assert row["error"] is None and row["spacegroup"] == 225


def test_not_a_structure():
    assert_error(encode_one({"lattice": "nope"}), "not a structure")


def test_partial_occupancy_is_encoded_as_fractional_composition():
    """Decision: a mixed site keeps the symmetry of the site and contributes its occupancies."""
    structure = Structure(
        Lattice.cubic(4.0),
        [{"Ba": 0.5, "Sr": 0.5}, "Ti", "O", "O", "O"],
        [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]],
    )
    row = encode_one(structure)
    assert row["error"] is None and row["disordered"] is True
    assert row["spacegroup"] == 221
    assert row["scope"].endswith("| Ba 0.1 Sr 0.1 Ti 0.2 O 0.6")


def test_vacancies_keep_their_occupancy():
    structure = Structure(Lattice.cubic(4.0), [{"Na": 0.75}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    row = encode_one(structure)
    assert row["error"] is None and row["disordered"] is True
    assert row["scope"].endswith("| Na 0.43 Cl 0.57")


def test_mixed_site_written_as_two_cif_rows():
    cif = GOOD_CIF.replace("Na Na0 0 0 0 1", "Na Na0 0 0 0 0.5\nK K0 0 0 0 0.5")
    row = encode_one(cif, variant="official")
    assert row["error"] is None and row["disordered"] is True
    assert row["scope"].split(" | ")[2] == "Na 0.44 K 0.06 Cl 0.5"


def test_failing_tolerance_walks_the_ladder(rocksalt):
    """A tolerance so coarse that symmetry search fails falls back to tighter ones, and the row says which."""
    noisy = rocksalt.copy()
    noisy.perturb(0.05, min_distance=0.05)
    row = encode_one(noisy, variant="official", symprec=10.0)  # spglib finds no dataset at 10 Å
    assert row["error"] is None and row["backend"] == "spglib"
    assert row["symprec"] == pytest.approx(1.0) and row["spacegroup"] == 225

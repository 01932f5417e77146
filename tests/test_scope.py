"""SCOPE strings: reference conformance, known examples, and invariance of the canonical variants."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymatgen.core import Lattice, Structure

from cloud_core.prototypes import generate_candidates
from cloud_core.scope import canonical_scope, generator_codes, scope_string
from cloud_core.structures import Crystal, crystal_from_cif, crystal_from_pymatgen
from cloud_core.symmetry import find_symmetry
from tests.conftest import shared_file


def scope_of(structure, variant="canonical", **kwargs) -> str:
    return scope_string(crystal_from_pymatgen(structure), variant, **kwargs)[0]


# -- reference conformance ------------------------------------------------------------------------------


def test_generator_codes_match_reference_for_all_230_groups():
    reference = json.loads(shared_file("cloud_reference/generator.json").read_text())
    ours = generator_codes()
    assert sorted(ours) == list(range(1, 231))
    assert {n: ours[n] for n in ours} == {int(k): v for k, v in reference.items()}


def test_official_example_from_the_paper(corundum):
    assert scope_of(corundum, "official") == "1 3 a E C C n O O O e O O D 0 | 12c 18e | Al 0.4 O 0.6"


def test_official_keeps_input_order_and_canonical_does_not(corundum):
    reordered = Structure.from_sites(sorted(corundum, key=lambda s: s.specie.symbol != "O"))
    assert scope_of(reordered, "official") == "1 3 a E C C n O O O e O O D 0 | 18e 12c | O 0.6 Al 0.4"
    assert scope_of(reordered) == scope_of(corundum) == "1 3 a E C C n O O O e O O D 0 | 12c 18e | Al 0.4 O 0.6"


@pytest.mark.shared_data
def test_official_variant_reproduces_reference_strings():
    """Done-when of the encoder: >= 97% byte-identical on the materials that pair up uniquely
    (bench/official_vs_reference.py lists and explains every difference)."""
    shared_file("phonon_thermo1k.parquet")
    from bench.official_vs_reference import reference_pairs

    pairs = reference_pairs(workers=2)
    equal = (pairs["scope"] == pairs["cloud"]).sum()
    assert pairs.height > 1000
    assert equal / pairs.height >= 0.97, pairs.filter(pl.col("scope") != pl.col("cloud")).select("scope", "cloud")


# -- canonical and detailed forms -----------------------------------------------------------------------


def test_rocksalt_canonical(rocksalt):
    assert scope_of(rocksalt) == "1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4a 4b | Na 0.5 Cl 0.5"


def test_detailed_separates_polymorphs_that_canonical_merges():
    """Perovskite ABX3 vs the 'anti' arrangement with X beside A: same Wyckoff set, different crystals."""
    lattice = Lattice.cubic(4.0)
    faces = [[0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]]
    edges = [[0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    perovskite = Structure(lattice, ["Sr", "Ti", "O", "O", "O"], [[0.5, 0.5, 0.5], [0, 0, 0], *faces])
    anti = Structure(lattice, ["Sr", "Ti", "O", "O", "O"], [[0.5, 0.5, 0.5], [0, 0, 0], *edges])
    assert scope_of(perovskite) == scope_of(anti)
    assert scope_of(perovskite, "detailed") != scope_of(anti, "detailed")


def test_detailed_counts_orbits_of_the_same_letter():
    # Two O orbits on 4e-type positions in Sr2TiO4-like tetragonal layers: the detailed form lists both.
    structure = Structure.from_spacegroup(
        "I4/mmm",
        Lattice.tetragonal(3.88, 12.6),
        ["Sr", "Ti", "O", "O"],
        [[0, 0, 0.355], [0, 0, 0], [0, 0.5, 0], [0, 0, 0.16]],
    )
    wyckoff = scope_of(structure, "detailed").split(" | ")[1].split()
    assert wyckoff.count("4e:Sr") == 1 and wyckoff.count("4e:O") == 1 and len(wyckoff) == 4


SUPERCELLS = [
    np.eye(3, dtype=int),
    np.diag([2, 1, 1]),
    np.diag([1, 2, 2]),
    np.array([[1, 1, 0], [-1, 1, 0], [0, 0, 1]]),
    np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0]]),
]


def rewritten(crystal: Crystal, rng: np.random.Generator) -> Crystal:
    """The same crystal written differently: supercell, new origin, shuffled sites, rotation, ~1e-4 Å noise."""
    matrix = SUPERCELLS[rng.integers(len(SUPERCELLS))]
    if crystal.nsites * round(abs(np.linalg.det(matrix))) > 200:
        matrix = SUPERCELLS[0]
    # Supercell: every site + every lattice translation inside the new cell, in the new basis.
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) @ matrix
    ranges = [range(int(corners[:, d].min()), int(corners[:, d].max()) + 1) for d in range(3)]
    translations = np.array([[i, j, k] for i in ranges[0] for j in ranges[1] for k in ranges[2]], float)
    inverse = np.linalg.inv(matrix)
    frac = ((crystal.frac_coords[:, None, :] + translations[None, :, :]) @ inverse).reshape(-1, 3)
    species = [s for s in crystal.site_species for _ in translations]
    inside = np.all((frac > -1e-8) & (frac < 1 - 1e-8), axis=1)
    frac, species = frac[inside], [s for s, keep in zip(species, inside, strict=True) if keep]
    assert len(species) == crystal.nsites * round(abs(np.linalg.det(matrix)))
    lattice = matrix @ crystal.lattice
    frac = (frac + rng.random(3)) % 1.0  # new origin
    order = rng.permutation(len(species))
    angle = rng.uniform(0, 2 * np.pi)
    c, k = np.cos(angle), np.sin(angle)
    lattice = lattice @ np.array([[c, -k, 0], [k, c, 0], [0, 0, 1]]).T  # rotated in space
    noise = rng.normal(scale=1e-4, size=frac.shape) @ np.linalg.inv(lattice)
    return Crystal(lattice, frac[order] + noise, [species[i] for i in order])


def crystal_scope(crystal: Crystal, variant: str) -> str:
    return scope_string(crystal, variant)[0]


def _prototype_crystals() -> list[Crystal]:
    from cloud_core.prototypes import PROTOTYPES

    crystals = []
    for name in PROTOTYPES:  # a few substitutions of every prototype
        crystals.extend(crystal for _, crystal in generate_candidates([name], max_count=4, seed=1))
    return crystals


PROTOTYPE_CRYSTALS = _prototype_crystals()


@pytest.mark.parametrize("variant", ["canonical", "detailed"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(crystal=st.sampled_from(PROTOTYPE_CRYSTALS), seed=st.integers(0, 2**32 - 1))
def test_canonical_invariance_on_prototypes(variant, crystal, seed):
    assert crystal_scope(rewritten(crystal, np.random.default_rng(seed)), variant) == crystal_scope(crystal, variant)


@pytest.fixture(scope="module")
def real_crystals() -> list[tuple[str, Crystal]]:
    """220 Materials Project structures of up to 50 sites, a fixed random sample."""
    frame = pl.read_parquet(shared_file("mp37k.parquet")).filter(pl.col("cif").str.count_matches("\n") < 60)
    frame = frame.sample(220, seed=7)
    return [(m, crystal_from_cif(c)) for m, c in frame.select("material_id", "cif").iter_rows()]


@pytest.mark.shared_data
@pytest.mark.parametrize("variant", ["canonical", "detailed"])
@settings(
    max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1))
def test_canonical_invariance_on_real_structures(real_crystals, variant, seed):
    """Every one of 220 Materials Project structures, each rewritten in a freshly drawn way per example."""
    rng = np.random.default_rng(seed)
    failures = []
    for material_id, crystal in real_crystals:
        expected = crystal_scope(crystal, variant)
        got = crystal_scope(rewritten(crystal, rng), variant)
        if got != expected:
            failures.append((material_id, expected, got))
    assert not failures, failures[:5]


@pytest.mark.shared_data
@pytest.mark.timeout(60)
def test_moyopy_backend_returns_on_very_acute_cells():
    """mp-9947 (SiC, rhombohedral cell with 10 degree angles) never returned from moyopy with an explicit
    angle tolerance; the moyopy backend must finish and agree with spglib on it."""
    frame = pl.read_parquet(shared_file("mp37k.parquet")).filter(pl.col("material_id") == "mp-9947")
    crystal = crystal_from_cif(frame["cif"][0])
    moyo = find_symmetry(crystal, "moyopy")
    spg = find_symmetry(crystal, "spglib")
    assert moyo.backend == "moyopy" and moyo.number == spg.number == 160
    assert canonical_scope(crystal, moyo) == canonical_scope(crystal, spg)


# -- the moyopy backend's borderline guard --------------------------------------------------------------


def test_guard_sends_borderline_structures_to_spglib(rocksalt):
    """An atom 0.007 Å off its site: within symprec 0.01 Å, so both libraries may call it Fm-3m, but too near
    the edge to trust moyopy to agree with spglib; a clean crystal stays with moyopy."""
    clean = crystal_from_pymatgen(rocksalt)
    assert find_symmetry(clean, "moyopy").backend == "moyopy"
    frac = clean.frac_coords.copy()
    frac[0] += np.array([0.007, 0, 0]) / 5.64
    shaken = Crystal(clean.lattice, frac, clean.site_species)
    guarded = find_symmetry(shaken, "moyopy")
    assert guarded.backend == "spglib"
    assert guarded.number == find_symmetry(shaken, "spglib").number
    assert find_symmetry(shaken, "moyopy", guard=False).backend == "moyopy"


@pytest.mark.shared_data
@pytest.mark.parametrize(
    ("material_id", "spglib_number", "bare_moyopy_number"),
    [("mp-18795", 148, 2), ("mp-18720", 141, 70), ("mp-40144", 2, 148)],
)
def test_guard_catches_known_moyopy_spglib_disagreements(material_id, spglib_number, bare_moyopy_number):
    """mp37k structures where bare moyopy and spglib pick different groups at 0.01 Å (both directions)."""
    frame = pl.read_parquet(shared_file("mp37k.parquet")).filter(pl.col("material_id") == material_id)
    crystal = crystal_from_cif(frame["cif"][0])
    assert find_symmetry(crystal, "moyopy", guard=False).number == bare_moyopy_number
    guarded = find_symmetry(crystal, "moyopy")
    assert (guarded.backend, guarded.number) == ("spglib", spglib_number)


def test_guard_lattice_rotations_of_simple_lattices():
    """The loose lattice rotations: 48 for a cubic cell, 16 for a tetragonal one, 2 for a generic triclinic one
    (identity and inversion); the reduction keeps a reduced basis and says so."""
    from cloud_core.symmetry import _lattice_rotations, _reduce

    cubic = np.eye(3) * 4.0
    assert _reduce(cubic)[1] is None
    assert len(_lattice_rotations(cubic, 0.03)) == 48
    assert len(_lattice_rotations(np.diag([4.0, 4.0, 5.0]), 0.03)) == 16
    triclinic = np.array([[4.1, 0.0, 0.0], [0.7, 5.3, 0.0], [0.9, 1.3, 6.2]])
    basis, matrix = _reduce(triclinic)
    assert len(_lattice_rotations(basis, 0.03)) == 2
    # A skewed basis of the cubic lattice reduces back to a cubic one (up to signs and order).
    skewed = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]], float) @ cubic
    basis, matrix = _reduce(skewed)
    assert matrix is not None and np.allclose(matrix @ skewed, basis)
    assert np.allclose(np.sort(np.abs(basis).sum(axis=1)), [4, 4, 4])


def test_symmetry_search_is_shared_by_cells_that_differ_only_in_elements(rocksalt, monkeypatch):
    """Substituting elements into one geometry (what the candidate generator does) repeats no search: the
    answer is cached by geometry, site kinds and settings. Which sites share a kind is part of the key (NaCl
    is Fm-3m, the same sites all sodium a simple cubic Pm-3m), and so are the settings; the cache is bounded."""
    from cloud_core import symmetry

    calls = []
    search = symmetry._search

    def counted(*args):
        calls.append(args)
        return search(*args)

    monkeypatch.setattr(symmetry, "_search", counted)
    monkeypatch.setattr(symmetry, "_searched", symmetry.OrderedDict())
    salt = crystal_from_pymatgen(rocksalt)
    swapped = Crystal(
        salt.lattice.copy(),
        salt.frac_coords.copy(),
        [(("K" if el == "Na" else "Br", 1.0),) for ((el, _),) in salt.site_species],
    )
    sodium = Crystal(salt.lattice.copy(), salt.frac_coords.copy(), [(("Na", 1.0),)] * salt.nsites)
    first = find_symmetry(salt, "moyopy")
    assert find_symmetry(swapped, "moyopy") == first and len(calls) == 1  # KBr: served from the cache
    assert find_symmetry(sodium, "moyopy").number == 221 != first.number == 225 and len(calls) == 2
    find_symmetry(salt, "moyopy", symprec=0.1)
    find_symmetry(salt, "spglib")
    assert len(calls) == 4
    monkeypatch.setattr(symmetry, "SEARCH_CACHE_SIZE", 2)
    find_symmetry(salt, "moyopy", symprec=0.001)
    assert len(symmetry._searched) == 2 and len(calls) == 5
    find_symmetry(salt, "moyopy")  # evicted: searched again
    assert len(calls) == 6


def test_c_kernels_are_built():
    """pip install compiles cloud_core/_kernels.c; without it the encoder runs its numpy versions (slower, same
    answers). The test suite must exercise the C code, so a missing build is a failure here."""
    from cloud_core import structures

    assert structures.kernels is not None, (
        "cloud_core._kernels is not built: reinstall with a C compiler (pip install -e .)"
    )


def test_guard_in_c_matches_numpy(monkeypatch):
    """The guard's two tests in C give the numpy implementations' answers on near-symmetric cells: generated
    candidates with a strained lattice, shaken atoms, skewed bases and doubled cells, at two tolerances. About
    40 % of them have a missed rotation, so both answers are exercised; displacements agree to 1e-12 Å."""
    import moyopy

    from cloud_core import symmetry
    from cloud_core.prototypes import select_prototypes

    rng = np.random.default_rng(7)
    answers, displacements = [], []
    for name in select_prototypes(None):
        for _, crystal in generate_candidates([name], max_count=3, seed=2):
            for trial in range(6):
                lattice, frac = crystal.lattice.copy(), crystal.frac_coords.copy()
                if trial % 3 == 1:
                    lattice = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]]) @ lattice  # same lattice, skewed basis
                if trial % 3 == 2:  # a doubled cell: supercell operations
                    lattice = np.diag([2, 1, 1]) @ lattice
                    frac = np.vstack([frac / [2, 1, 1], frac / [2, 1, 1] + [0.5, 0, 0]])
                lattice = lattice @ (np.eye(3) + rng.normal(scale=rng.choice([0.0005, 0.002, 0.005]), size=(3, 3)))
                noise = rng.normal(scale=rng.choice([0.0005, 0.002, 0.006]), size=frac.shape)
                frac = frac + noise / np.linalg.norm(lattice, axis=1)
                species = list(crystal.site_species) * (len(frac) // crystal.nsites)
                numbers = Crystal(lattice, frac, species).kind_numbers()
                for symprec in (0.01, 0.03):
                    cell = moyopy.Cell(lattice.tolist(), frac.tolist(), numbers.tolist())
                    dataset = moyopy.MoyoDataset(cell, symprec=symprec)
                    rotations = dataset.operations.rotations
                    in_c = symmetry._missed_rotation(dataset, lattice, frac, numbers, symprec)
                    answers.append((in_c, symmetry._missed_rotation_numpy(rotations, lattice, frac, numbers, symprec)))
                    in_c = symmetry._symmetrizing_displacement(dataset, frac)
                    with monkeypatch.context() as patch:
                        patch.setattr(symmetry, "kernels", None)
                        displacements.append((in_c, symmetry._symmetrizing_displacement(dataset, frac)))
    assert all(c == ref for c, ref in answers), [i for i, (c, ref) in enumerate(answers) if c != ref]
    missed = sum(ref for _, ref in answers)
    assert 0.2 * len(answers) < missed < 0.8 * len(answers), (missed, len(answers))
    assert np.allclose(*np.array(displacements).T, rtol=0, atol=1e-12)
    assert max(ref for _, ref in displacements) > 0.01  # shaken well past the guard's 0.4 x symprec


# -- shipped pymatgen tables ----------------------------------------------------------------------------


def test_shipped_scope_tables_equal_what_pymatgen_gives():
    """`cloud_core/data/scope_tables.json` (generator codes, electronegativities) is what
    `python -m cloud_core.scope_tables` derives from the installed pymatgen, so encoding need not import it."""
    from cloud_core import scope_tables

    built = scope_tables.build()
    assert scope_tables.shipped() == json.loads(json.dumps(built))
    assert scope_tables.DEFAULT_OUT.read_text() == scope_tables.dumps(built)
    assert sorted(scope_tables.generator_codes()) == list(range(1, 231))


def test_encode_imports_no_pymatgen_torch_or_prefect(tmp_path, corundum):
    """The encode command's start-up: none of the heavy libraries it does not need."""
    import subprocess
    import sys

    from pymatgen.io.cif import CifWriter

    CifWriter(corundum).write_file(tmp_path / "corundum.cif")
    code = (
        "import sys\n"
        "from flows.cli import app\n"
        "try:\n"
        f"    app(['encode', {str(tmp_path)!r}, '--out', {str(tmp_path / 'out.parquet')!r}, '--workers', '1'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'pymatgen', 'torch', 'prefect', 'scipy'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stderr
    assert pl.read_parquet(tmp_path / "out.parquet")["scope"][0].endswith("| 12c 18e | Al 0.4 O 0.6")

"""Every kind of bad input becomes one row with a specific reason; the good rows around it still encode.

The first part feeds bad structures to the Python API one at a time. The second writes a corpus of good and
bad files (generated here, nothing binary in the repository) and runs it through `cloud-screen encode`,
`predict` and `screen`: exit status 0, one row per input, the reason for each bad one, every good one
predicted and stored in the catalog.
"""

from __future__ import annotations

import faulthandler
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from pymatgen.core import Lattice, Structure

from cloud_core.encode import EncodeSettings, encode_structures, encode_table
from cloud_core.structures import Crystal, iter_raw_inputs
from tests.conftest import process_running

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


def test_overlap_filter_in_c_matches_numpy(monkeypatch):
    """The C filter in front of the overlap test changes no answer: 4,000 random cells, most with one pair of
    atoms placed 0.45-0.55 Å apart (the limit is 0.5 Å), some of them across the cell boundary, checked with
    the filter and without it (numpy alone): the same error message, or none, for every cell."""
    from cloud_core import structures

    assert structures.kernels is not None
    rng = np.random.default_rng(0)
    outcomes = []
    for _ in range(4000):
        n = int(rng.integers(1, 40))
        lattice = rng.normal(size=(3, 3)) * 0.6 + np.diag(rng.uniform(2.5, 7, 3))
        frac = rng.uniform(-1, 2, (n, 3))
        if n > 1 and rng.random() < 0.7:
            i, j = rng.integers(n, size=2)
            step = rng.normal(size=3)
            step *= rng.uniform(0.45, 0.55) / np.linalg.norm(step)
            frac[j] = frac[i] + np.linalg.solve(lattice.T, step) + rng.integers(-1, 2, 3)
        crystal = Crystal(lattice, frac, [(("Na", 1.0),)] * n)
        pair = []
        for kernels in (structures.kernels, None):
            monkeypatch.setattr(structures, "kernels", kernels)
            try:
                structures._check_no_overlaps(crystal)
                pair.append(None)
            except structures.StructureError as exc:
                pair.append(str(exc))
        monkeypatch.undo()
        outcomes.append(pair)
    assert all(with_c == without for with_c, without in outcomes)
    overlapping = sum(without is not None for _, without in outcomes)
    assert 0.2 * len(outcomes) < overlapping < 0.9 * len(outcomes), overlapping  # both answers exercised


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


def test_invalid_cell_angle_is_refused_not_replaced_by_a_unit_cube():
    """gemmi turns an impossible cell into a 1 Å cube without a word; the reader must refuse it instead."""
    assert_error(encode_one(GOOD_CIF.replace("_cell_angle_gamma 90", "_cell_angle_gamma 0")), "angles", "0.0")
    assert_error(encode_one(GOOD_CIF.replace("_cell_angle_gamma 90", "_cell_angle_gamma 200")), "angles")
    impossible = GOOD_CIF.replace("_cell_angle_alpha 90", "_cell_angle_alpha 20").replace(
        "_cell_angle_beta 90", "_cell_angle_beta 20"
    )  # gamma (90) above alpha + beta: no such cell
    assert_error(encode_one(impossible), "invalid cell parameters")
    missing = "\n".join(line for line in GOOD_CIF.splitlines() if not line.startswith("_cell_length_c"))
    assert_error(encode_one(missing), "_cell_length_c is missing")


def test_cell_with_uncertainties_still_reads():
    row = encode_one(GOOD_CIF.replace("_cell_length_a 5.64", "_cell_length_a 5.640(2)"))
    assert row["error"] is None and row["spacegroup"] == 225


def test_structure_text_in_a_table_is_held_to_the_size_limit(monkeypatch):
    monkeypatch.setenv("CLOUD_SCREEN_MAX_FILE_MB", "0.0001")  # 104 bytes
    frame = encode_table(pl.DataFrame({"id": ["long"], "cif": [GOOD_CIF]}))
    assert "structure text too large" in frame["error"][0] and "CLOUD_SCREEN_MAX_FILE_MB" in frame["error"][0]


# --------------------------------------------------------------------------------------------------
# Large cells: bounded time and memory, or refused with a reason.


def _jittered_p1_cell(n: int, seed: int = 0) -> Crystal:
    """n silicon atoms on a jittered grid in a cubic box: no symmetry, no overlaps (about 12 Å^3 per atom)."""
    rng = np.random.default_rng(seed)
    m = int(np.ceil(n ** (1 / 3)))
    grid = np.array([(i, j, k) for i in range(m) for j in range(m) for k in range(m)][:n], float) / m
    grid += rng.uniform(-0.1, 0.1, grid.shape) / m
    return Crystal(np.eye(3) * (12 * n) ** (1 / 3), grid, [(("Si", 1.0),)] * n)


def test_large_cell_without_symmetry_encodes_in_bounded_time_and_memory():
    """A 2,000-site P 1 cell (the default max_sites) took 20 s and 4.5 GB in the borderline guard, whose atom
    mapping test built (operations x atoms x atoms) arrays; the KD-tree path takes about a second."""
    import tracemalloc

    tracemalloc.start()
    started = time.perf_counter()
    row = encode_one(_jittered_p1_cell(2000))
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert row["error"] is None and row["spacegroup"] == 1 and row["backend"] == "moyopy"
    assert elapsed < 15, elapsed
    assert peak < 300 * 2**20, peak / 2**20


def test_symmetry_search_of_a_huge_cell_stops_at_the_time_limit(rocksalt):
    huge = rocksalt * (8, 8, 10)  # 5,120 sites
    assert_error(encode_one(huge), "too many sites (5120 > max_sites=2000)")
    started = time.perf_counter()
    row = encode_one(huge, max_sites=6000, time_limit=0.2)
    assert time.perf_counter() - started < 20
    assert_error(row, "time limit of 0.2 s", "5120 sites")


def test_huge_cell_encodes_under_the_default_time_limit(rocksalt):
    """With --max-sites raised, a 5,120-site cell encodes in about 2 s (the 60 s limit is far away)."""
    row = encode_one(rocksalt * (8, 8, 10), max_sites=6000)
    assert row["error"] is None and row["spacegroup"] == 225 and row["nsites"] == 5120


def test_a_crash_in_the_symmetry_search_of_a_large_cell_costs_one_row(rocksalt, monkeypatch):
    """Large cells are searched in a forked child: a segfault there (spglib and moyopy are C and Rust) is an
    error row, while the parent and the other rows carry on."""
    from cloud_core import symmetry

    search = symmetry._search

    def crash_on_large_cells(crystal, *args, **kwargs):
        if crystal.nsites > symmetry.TIME_LIMITED_MIN_SITES:
            faulthandler.disable()  # pytest's traceback dump of the child is noise here
            os.kill(os.getpid(), signal.SIGSEGV)
        return search(crystal, *args, **kwargs)

    monkeypatch.setattr(symmetry, "_search", crash_on_large_cells)
    assert_error(encode_one(rocksalt * (4, 4, 5)), "crashed (signal SIGSEGV)", "640 sites")


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="Linux only (prctl, /proc)")
def test_search_child_ends_with_the_process_that_forked_it(rocksalt, tmp_path, monkeypatch):
    """A pool worker terminated mid-search (an abandoned batch, Ctrl-C) must not leave its search running."""
    from cloud_core import symmetry
    from cloud_core.structures import crystal_from_pymatgen

    pid_file = tmp_path / "search.pid"

    def slow_search(*args, **kwargs):
        pid_file.write_text(str(os.getpid()))
        time.sleep(60)

    monkeypatch.setattr(symmetry, "_search", slow_search)
    crystal = crystal_from_pymatgen(rocksalt * (4, 4, 5))
    worker = os.fork()
    if worker == 0:  # stands in for an encoder pool worker
        try:
            symmetry.find_symmetry(crystal, "moyopy", time_limit=120)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 20
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    search = int(pid_file.read_text())
    os.kill(worker, signal.SIGKILL)
    os.waitpid(worker, 0)

    deadline = time.monotonic() + 5
    while process_running(search) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_running(search)


def test_large_cell_in_a_child_gives_the_in_process_answer(rocksalt):
    large = rocksalt * (4, 4, 5)  # 640 sites: over TIME_LIMITED_MIN_SITES
    for variant in ("official", "canonical", "detailed"):
        limited = encode_one(large, variant=variant)
        free = encode_one(large, variant=variant, time_limit=None)
        assert limited == free and limited["error"] is None


# --------------------------------------------------------------------------------------------------
# The same through files and the command line: a corpus of good and bad files.

CORPUS_GOOD = 8  # distinct crystals, so each one is one candidate in the catalog


def _p1_cif(name: str, lengths: tuple[float, float, float], sites: list[tuple[str, float, float, float]]) -> str:
    """A P 1 CIF in GOOD_CIF's layout with an orthogonal cell of the given edge lengths."""
    header = GOOD_CIF[: GOOD_CIF.index("Na Na0")].replace("data_NaCl", f"data_{name}")
    for axis, length in zip("abc", lengths, strict=True):
        header = header.replace(f"_cell_length_{axis} 5.64", f"_cell_length_{axis} {length}")
    return header + "".join(f"{el} {el}{i} {x:.6f} {y:.6f} {z:.6f} 1\n" for i, (el, x, y, z) in enumerate(sites))


def _supercell_sites(
    repeats: tuple[int, int, int], basis: list[tuple[str, float, float, float]]
) -> list[tuple[str, float, float, float]]:
    """Fractional sites of a repeats[0] x repeats[1] x repeats[2] supercell of a cell with the given basis."""
    nx, ny, nz = repeats
    return [
        (el, (x + i) / nx, (y + j) / ny, (z + k) / nz)
        for i in range(nx)
        for j in range(ny)
        for k in range(nz)
        for el, x, y, z in basis
    ]


def _rocksalt(a: str, b: str, lattice: float) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(lattice), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[tuple[str, str], str | None]]:
    """A folder (name with a space and non-ASCII letters) of good and bad structure files, and per
    (file name, row id) what its row must say: None for a structure that encodes, else a fragment of the reason.
    """
    from pymatgen.io.vasp import Poscar

    folder = tmp_path_factory.mktemp("corpus") / "bad input ü"
    folder.mkdir()
    expected: dict[tuple[str, str], str | None] = {}

    def put(name: str, content: str | bytes, reason: str | None, ident: str | None = None) -> None:
        path = folder / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        expected[(name, ident or path.stem)] = reason

    lif = Poscar(_rocksalt("Li", "F", 4.03)).get_str()
    lines = lif.splitlines()  # comment, scale, 3 vectors, species, counts, Direct, 8 positions
    # good ones: 8 distinct crystals in every format, names with spaces and non-ASCII letters
    put("good NaCl ü.cif", GOOD_CIF, None)
    put("KCl.json", json.dumps(_rocksalt("K", "Cl", 6.29).as_dict()), None)
    put("LiF.vasp", lif, None)
    mgo = _rocksalt("Mg", "O", 4.21).as_dict()
    put("list.json", json.dumps([mgo, 42, {"id": "junk-1", "lattice": "nope", "sites": [1]}]), None, "list:0")
    expected[("list.json", "list:1")] = "JSON is not a pymatgen Structure"
    expected[("list.json", "junk-1")] = "JSON is not a valid pymatgen Structure"
    partial = Structure(
        Lattice.cubic(4.0),
        [{"Ba": 0.5, "Sr": 0.5}, "Ti", "O", "O", "O"],
        [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]],
    )
    put("partial occupancy.json", json.dumps(partial.as_dict()), None)
    vacancy = Structure(Lattice.cubic(4.0), [{"Na": 0.75}, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    put("vacancy.json", json.dumps(vacancy.as_dict()), None)
    cscl = _supercell_sites((7, 7, 7), [("Cs", 0, 0, 0), ("Cl", 0.5, 0.5, 0.5)])  # 686 sites: time-limited path
    put("CsCl 686 sites.cif", _p1_cif("CsCl", (7 * 4.12,) * 3, cscl), None)
    put(
        "日本語 NaCl.xyz",
        '2\nLattice="3.2 0 0 0 3.2 0 0 0 3.2" Properties=species:S:1:pos:R:3 pbc="T T T"\nNa 0 0 0\nCl 1.6 1.6 1.6\n',
        None,
    )
    # bad ones
    put("truncated.cif", GOOD_CIF[: GOOD_CIF.index("_atom_site_fract_y")], "unreadable CIF: no atom sites")
    put("empty.cif", "", "empty cif input")
    put("binary.cif", bytes(range(256)) * 16, "binary file")
    put("binary.json", b"\x00\xff" * 64, "binary file")  # same id as binary.cif: still its own row
    put("loop length.cif", GOOD_CIF.replace("Cl Cl7 0 0 0.5 1", "Cl Cl7 0 0 0.5"), "Wrong number of values in loop")
    put("POSCAR_counts", "\n".join([*lines[:6], "4 5", *lines[7:]]), "counts (4 + 5 = 9) do not match its 8")
    put("POSCAR_species", "\n".join([*lines[:6], "8", *lines[7:]]), "names 2 species (Li F) but gives 1 atom count")
    put("nan cell.cif", GOOD_CIF.replace("_cell_length_b 5.64", "_cell_length_b nan"), "invalid cell parameters")
    put("inf cell.cif", GOOD_CIF.replace("_cell_length_b 5.64", "_cell_length_b inf"), "invalid cell parameters")
    put("zero angle.cif", GOOD_CIF.replace("_cell_angle_gamma 90", "_cell_angle_gamma 0"), "angles [90.0, 90.0, 0.0]")
    put("zero volume.vasp", "\n".join([*lines[:4], lines[2], *lines[5:]]), "degenerate cell")
    nan_json = json.dumps(_rocksalt("Rb", "Br", 6.9).as_dict()).replace("6.9", "NaN", 1)
    put("nan lattice.json", nan_json, "non-finite lattice")
    put("overlap.cif", GOOD_CIF.replace("Cl Cl7 0 0 0.5 1", "Cl Cl7 0 0 0.5 1\nCl Cl8 0.001 0 0.5 1"), "overlapping")
    put("unknown element.cif", GOOD_CIF.replace("Cl Cl4", "Qq Cl4"), "unknown element symbol 'Qq'")
    put("empty structure.json", json.dumps(Structure(Lattice.cubic(4), [], []).as_dict()), "empty structure")
    put("no atoms.cif", GOOD_CIF[: GOOD_CIF.index("loop_\n_atom_site_type_symbol")], "no atom sites")
    rocksalt = [("Na", 0, 0, 0), ("Na", 0, 0.5, 0.5), ("Na", 0.5, 0, 0.5), ("Na", 0.5, 0.5, 0)]
    rocksalt += [("Cl", x + 0.5 - (x > 0), y, z) for _, x, y, z in rocksalt]
    huge = _supercell_sites((5, 5, 25), rocksalt)  # 5,000 sites
    put("huge 5000 sites.cif", _p1_cif("huge", (28.2, 28.2, 141.0), huge), "too many sites (5000 > max_sites=2000)")
    put("not a structure.json", json.dumps({"hello": "world"}), "JSON is not a pymatgen Structure")
    put("invalid.json", "{not json", "invalid JSON")
    put("deep.json", "[" * 100_000, "invalid JSON: maximum recursion depth")
    put("no lattice.xyz", "2\n\nNa 0 0 0\nCl 2 2 2\n", "no 3D periodic lattice")
    with open(folder / "big 100 MB.cif", "wb") as handle:  # sparse: 100 MB long, a few kB on disk
        handle.write(GOOD_CIF.encode())
        handle.truncate(100 * 2**20)
    expected[("big 100 MB.cif", "big 100 MB")] = "file too large: 100.0 MiB, above the 64.0 MiB limit"
    assert sum(reason is None for reason in expected.values()) == CORPUS_GOOD
    return folder, expected


def cloud_screen(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("cloud-screen") or str(Path(sys.executable).parent / "cloud-screen")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300, env=env)


def check_rows(table: pl.DataFrame, expected: dict[tuple[str, str], str | None]) -> dict[tuple[str, str], dict]:
    """One row per input, and each says what `expected` says; returns the rows by (file name, id)."""
    rows = {(Path(r["source"]).name, r["id"]): r for r in table.iter_rows(named=True)}
    assert table.height == len(rows) == len(expected)
    assert set(rows) == set(expected)
    for key, reason in expected.items():
        row = rows[key]
        if reason is None:
            assert row["error"] is None and row["scope"], (key, row["error"])
        else:
            assert row["scope"] is None and row["error"] and reason in row["error"], (key, row["error"])
    return rows


def test_corpus_through_encode(corpus, tmp_path):
    folder, expected = corpus
    out = tmp_path / "out" / "scope.parquet"
    result = cloud_screen("encode", str(folder), "--out", str(out), "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert f"encoded {CORPUS_GOOD} of {len(expected)} structures" in result.stderr
    rows = check_rows(pl.read_parquet(out), expected)
    assert rows[("partial occupancy.json", "partial occupancy")]["disordered"] is True
    assert rows[("CsCl 686 sites.cif", "CsCl 686 sites")]["spacegroup"] == 221
    assert os.listdir(out.parent) == ["scope.parquet"]  # nothing else written, no partial file left


def test_corpus_through_predict(corpus, tmp_path):
    folder, expected = corpus
    out = tmp_path / "predictions.csv"
    result = cloud_screen("predict", str(folder), "--out", str(out), "--device", "cpu", "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert f"{len(expected)} structures, {CORPUS_GOOD} predicted" in result.stderr
    rows = check_rows(pl.read_csv(out), expected)
    for key, reason in expected.items():
        predicted = rows[key]["debye_temperature"]
        assert (predicted is not None and predicted > 0) if reason is None else predicted is None, key


def test_corpus_through_screen(corpus, tmp_path, prefect_harness):
    """`cloud-screen screen --source FOLDER` on the harness's Prefect server: the good ones are predicted and in
    the catalog, every bad one is a `failures` row with its reason."""
    from prefect.settings import PREFECT_API_URL

    folder, expected = corpus
    catalog = tmp_path / "screen.duckdb"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200"}
    result = cloud_screen("screen", "--catalog", str(catalog), "--source", str(folder), "--no-report", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    bad = len(expected) - CORPUS_GOOD
    assert f"{len(expected)} candidates: {CORPUS_GOOD} predicted, {bad} failed" in result.stderr
    with duckdb.connect(str(catalog), read_only=True) as con:
        failures = con.execute("SELECT source, source_id, error FROM failures").fetchall()
        stored = con.execute(
            "SELECT c.source, c.source_id, p.error, p.debye_temperature FROM predictions p JOIN candidates c "
            "USING (candidate_id)"
        ).fetchall()
    failed = {(Path(source).name, ident): error for source, ident, error in failures}
    assert len(failures) == len(failed) == bad
    assert set(failed) == {key for key, reason in expected.items() if reason is not None}
    for key, error in failed.items():
        assert expected[key] in error, (key, error)
    assert {(Path(source).name, ident) for source, ident, _, _ in stored} == {
        key for key, reason in expected.items() if reason is None
    }
    assert all(error is None and theta > 0 for _, _, error, theta in stored)


def test_oversized_file_is_refused_without_being_read(corpus, monkeypatch):
    folder, _ = corpus

    def no_reading(*args, **kwargs):
        raise AssertionError("the oversized file was opened")

    monkeypatch.setattr(os, "read", no_reading)
    monkeypatch.setattr(Path, "open", no_reading)
    monkeypatch.setattr(Path, "read_bytes", no_reading)
    (raw,) = iter_raw_inputs([folder / "big 100 MB.cif"])
    assert raw.text is None and "file too large: 100.0 MiB" in raw.error and "CLOUD_SCREEN_MAX_FILE_MB" in raw.error


def test_files_that_are_not_regular_files_are_rows_with_a_reason_and_never_block(tmp_path):
    """A FIFO (opened non-blocking: no writer ever comes), a socket (cannot be opened at all) and a folder,
    each named like a structure file, become rows saying what they are; the good file beside them reads."""
    import socket

    os.mkfifo(tmp_path / "pipe.cif")
    (tmp_path / "folder.cif").mkdir()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "socket.cif"))
    (tmp_path / "good.cif").write_text(GOOD_CIF)
    names = ["pipe.cif", "folder.cif", "socket.cif", "missing.cif", "good.cif"]
    found: list = []
    reader = threading.Thread(target=lambda: found.extend(iter_raw_inputs([tmp_path / n for n in names])), daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():  # let the blocked open go (a writer appears), then fail
        os.close(os.open(tmp_path / "pipe.cif", os.O_WRONLY | os.O_NONBLOCK))
        raise AssertionError("reading the FIFO blocked")
    server.close()
    raws = {raw.id: raw for raw in found}
    assert raws["pipe"].error == raws["folder"].error == raws["socket"].error == "not a regular file"
    assert raws["missing"].error.startswith("cannot read file: [Errno 2] No such file or directory")
    assert raws["good"].error is None and raws["good"].text == GOOD_CIF


def test_a_file_read_in_short_pieces_is_read_whole(tmp_path, monkeypatch):
    """One read() returns at most ~2 GiB on Linux: a file above that (with the limit raised) comes in pieces,
    and must not be cut at the first. Simulated with reads capped at 100 bytes."""
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: real_read(fd, min(n, 100)))
    (tmp_path / "good.cif").write_text(GOOD_CIF)
    (raw,) = iter_raw_inputs([tmp_path / "good.cif"])
    assert len(GOOD_CIF) > 300 and raw.error is None and raw.text == GOOD_CIF


def test_file_size_limit_is_a_setting(corpus, tmp_path, monkeypatch):
    folder, _ = corpus
    monkeypatch.setenv("CLOUD_SCREEN_MAX_FILE_MB", "200")
    (raw,) = iter_raw_inputs([folder / "big 100 MB.cif"])
    assert raw.error is None and len(raw.text) == 100 * 2**20  # read (the parser would then refuse it)
    monkeypatch.setenv("CLOUD_SCREEN_MAX_FILE_MB", "0.0001")
    (raw,) = iter_raw_inputs([folder / "good NaCl ü.cif"])
    assert raw.error.startswith("file too large: 480 bytes, above the 104 bytes limit")
    monkeypatch.setenv("CLOUD_SCREEN_MAX_FILE_MB", "lots")
    result = cloud_screen("encode", str(folder / "empty.cif"), "--out", str(tmp_path / "x.csv"), env=dict(os.environ))
    assert result.returncode == 1 and "CLOUD_SCREEN_MAX_FILE_MB='lots'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_screen_with_a_missing_source_fails_in_one_line(tmp_path):
    """Before: a traceback from inside the flow run. Now: one line, and no catalog is created."""
    from typer.testing import CliRunner

    from flows.cli import app

    catalog = tmp_path / "c.duckdb"
    missing = tmp_path / "nowhere" / "x.cif"
    result = CliRunner().invoke(app, ["screen", "--catalog", str(catalog), "--source", str(missing)])
    assert result.exit_code == 1 and f"input not found: {missing}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not catalog.exists()


def test_screen_with_an_unknown_prototype_fails_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    catalog = tmp_path / "c.duckdb"
    result = CliRunner().invoke(app, ["screen", "--catalog", str(catalog), "--prototypes", "rocksalt,garnet"])
    assert result.exit_code == 1 and "unknown prototypes ['garnet']; known: rocksalt, cscl" in result.stderr
    assert "double-double-perovskite (or all)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not catalog.exists()

"""The built-in generator of hypothetical candidates: distinct crystals, charge balance, reproducible order."""

from __future__ import annotations

import itertools

import pytest

from cloud_core.encode import EncodeSettings, encode_structures
from cloud_core.prototypes import PROTOTYPES, charge_balanced, generate_candidates
from cloud_core.structures import Crystal

IDENTIFY = EncodeSettings(identify=True)


def test_every_generated_candidate_is_a_distinct_crystal_of_its_prototype_group():
    ids, crystals = zip(*generate_candidates(max_count=400, seed=11), strict=True)
    frame = encode_structures(crystals, ids, IDENTIFY)
    assert frame["error"].null_count() == frame.height == 400
    assert frame["candidate_id"].n_unique() == 400 and len(set(ids)) == 400
    expected_group = {name: None for name in PROTOTYPES}
    for ident, group in zip(ids, frame["spacegroup"].to_list(), strict=True):
        name = ident.split(":")[0]
        expected_group[name] = expected_group[name] or group
        assert group == expected_group[name], ident  # a substitution never changes the prototype's group


@pytest.mark.parametrize("name", [n for n, p in PROTOTYPES.items() if p.interchangeable])
def test_roles_left_out_as_interchangeable_are_the_same_crystal(name):
    """Filling interchangeable roles in the other order gives the same candidate (so nothing distinct is lost),
    while swapping any other pair of roles drawn from the same pool gives a different one (so the rule is not
    too broad). Roles with different pools cannot produce the same combination twice."""
    from cloud_core.prototypes import _role_pools

    proto = PROTOTYPES[name]
    pools = _role_pools(proto, None)
    (ident, crystal), *_ = generate_candidates([name], max_count=1, seed=2)
    combo = ident.split(":")[1].split("-")
    roles = [combo.index(species[0][0]) for species in crystal.site_species]

    def swapped(i: int, j: int) -> Crystal:
        order = list(range(len(combo)))
        order[i], order[j] = j, i
        species = [((combo[order[r]], 1.0),) for r in roles]
        return Crystal(crystal.lattice.copy(), crystal.frac_coords.copy(), species)

    base = encode_structures([crystal], settings=IDENTIFY)["candidate_id"][0]
    for i, j in itertools.combinations(range(len(combo)), 2):
        if pools[i] != pools[j]:
            assert (i, j) not in proto.interchangeable
            continue
        other = encode_structures([swapped(i, j)], settings=IDENTIFY)["candidate_id"][0]
        assert (other == base) == ((i, j) in proto.interchangeable), (i, j)


def test_ionic_candidates_are_charge_balanced_and_the_order_is_seeded():
    first = [i for i, _ in generate_candidates(max_count=300, seed=5, crystals=False)]
    assert first == [i for i, _ in generate_candidates(max_count=300, seed=5, crystals=False)]
    assert first != [i for i, _ in generate_candidates(max_count=300, seed=6, crystals=False)]
    assert len({i.split(":")[0] for i in first}) >= 3  # a prefix mixes prototypes
    assert charge_balanced(["Cs", "Na", "Bi", "Cl"], [2, 1, 1, 6])
    assert not charge_balanced(["Cs", "Na", "Bi", "Cl"], [2, 1, 1, 4])
    for ident, crystal in generate_candidates(["elpasolite", "kesterite"], max_count=50, seed=1):
        amounts = crystal.element_amounts()
        elements = ident.split(":")[1].split("-")
        assert charge_balanced(elements, [round(amounts[e]) for e in elements]), ident


def test_generating_candidates_imports_no_pymatgen():
    """The charge-balance filter reads the shipped oxidation-state table (pymatgen's, checked in test_scope)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cloud_core.prototypes import generate_candidates\n"
        "print(sum(1 for _ in generate_candidates(max_count=2000, seed=1)))\n"
        "print('pymatgen' in {m.split('.')[0] for m in sys.modules})\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["2000", "False"], result.stderr


def test_element_pool_restriction_and_unknown_prototypes():
    from cloud_core.prototypes import POOLS

    for name, pool in POOLS.items():
        assert len(set(pool)) == len(pool), name  # a repeated element would make the same candidate twice
    allowed = {"Li", "Na", "K", "Mg", "O", "S", "Cl", "Bi", "Sb"}
    for ident, _ in generate_candidates(max_count=10_000, elements=sorted(allowed), crystals=False):
        assert set(ident.split(":")[1].split("-")) <= allowed
    with pytest.raises(ValueError, match="unknown prototypes"):
        list(generate_candidates(["garnet"]))


def test_generated_json_reads_back_the_same_with_or_without_pymatgen():
    """Plain ordered Structure JSON is read without pymatgen (structures._plain_crystal_from_json); anything
    else still goes through pymatgen. Both must give the same crystal."""
    import json

    import numpy as np
    from pymatgen.core import Structure

    from cloud_core.structures import (
        _plain_crystal_from_json,
        crystal_from_pymatgen,
        crystal_from_text,
        crystal_to_json,
    )

    for _, crystal in generate_candidates(max_count=200, seed=4):
        text = crystal_to_json(crystal)
        fast = crystal_from_text(text, "json")
        slow = crystal_from_pymatgen(Structure.from_dict(json.loads(text)))
        assert np.array_equal(fast.lattice, slow.lattice) and np.array_equal(fast.frac_coords, slow.frac_coords)
        assert fast.site_species == slow.site_species and fast.site_kinds == slow.site_kinds
    data = json.loads(text)
    data["sites"][0]["species"][0]["oxidation_state"] = 2
    assert _plain_crystal_from_json(data) is None  # a species with an oxidation state: pymatgen's path
    data["sites"][0]["species"] = [{"element": "Fe", "occu": 0.5}, {"element": "Co", "occu": 0.5}]
    assert _plain_crystal_from_json(data) is None
    assert crystal_from_text(json.dumps(data), "json").site_species[0] == (("Fe", 0.5), ("Co", 0.5))


@pytest.mark.parametrize("name", list(PROTOTYPES))
def test_prototype_cells_match_pymatgen(name):
    """Our orbit expansion (spglib's operations, primitive cell of the centring) against pymatgen's
    from_spacegroup + get_primitive_structure: same sites, same volume, the same candidate."""
    import numpy as np
    from pymatgen.core import Lattice, Structure

    from cloud_core.prototypes import PLACEHOLDERS, _prototype_cell
    from cloud_core.structures import crystal_from_pymatgen

    proto = PROTOTYPES[name]
    ours, roles = _prototype_cell(name)
    family, a, c = proto.lattice
    lattice = {"cubic": Lattice.cubic, "hexagonal": Lattice.hexagonal, "tetragonal": Lattice.tetragonal}[family]
    placeholders = [PLACEHOLDERS[role] for role, _ in proto.sites]
    cell = lattice(a) if family == "cubic" else lattice(a, c * a)
    positions = [x for _, x in proto.sites]
    reference = Structure.from_spacegroup(proto.spacegroup, cell, placeholders, positions).get_primitive_structure()
    assert ours.nsites == len(reference) == len(roles)
    assert abs(abs(np.linalg.det(ours.lattice)) - reference.volume) < 1e-9
    frame = encode_structures([ours, crystal_from_pymatgen(reference)], settings=IDENTIFY)
    assert frame["error"].null_count() == 2 and frame["candidate_id"][0] == frame["candidate_id"][1]


def test_a_demo_source_that_runs_out_of_candidates_says_how_many_it_has():
    from flows.sources import SourceSpec, iter_raw, shortfall

    spec = SourceSpec(kind="demo", count=1_000, prototypes=["rocksalt"], elements=["Li", "Na", "K", "F", "Cl"])
    produced = sum(1 for _ in iter_raw(spec))
    assert produced == 6  # 3 cations x 2 anions
    assert shortfall(spec, produced) == (
        "the generator has 6 distinct candidates for these prototypes and elements, fewer than the 1,000 asked "
        "for: all of them were screened"
    )
    assert shortfall(spec.model_copy(update={"count": 6}), produced) is None
    assert shortfall(SourceSpec(kind="demo", count=10**6), 438_150).endswith(
        "all of them were screened (add the opt-in double-double-perovskite with `--prototypes all`)"
    )  # the default selection leaves it out
    assert shortfall(SourceSpec(kind="files", paths=["x.cif"]), 0) is None


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 65_537, 262_145])
def test_the_shuffled_order_visits_every_index_once(n):
    import numpy as np

    from cloud_core.prototypes import shuffled_range

    order = np.concatenate(list(shuffled_range(n, seed=3, block=4096)))
    assert np.array_equal(np.sort(order), np.arange(n))
    if n >= 1000:
        assert not np.array_equal(order, np.arange(n))
        assert abs(np.corrcoef(order, np.arange(n))[0, 1]) < 0.1  # scrambled, not a shifted or strided count


def test_the_opt_in_prototype_is_asked_for_by_name_or_with_all():
    from cloud_core.prototypes import DEFAULT_PROTOTYPES, select_prototypes

    assert "double-double-perovskite" not in DEFAULT_PROTOTYPES and select_prototypes([]) == list(DEFAULT_PROTOTYPES)
    assert select_prototypes(["all"]) == list(PROTOTYPES)
    names = {i.split(":")[0] for i, _ in generate_candidates(["all"], max_count=2000, crystals=False)}
    assert "double-double-perovskite" in names and len(names) >= 4
    (ident, crystal), *_ = generate_candidates(["double-double-perovskite"], max_count=1, seed=4)
    a, a2, b, b2, x = ident.split(":")[1].split("-")
    assert a < a2 and b < b2  # each interchangeable pair in one order
    assert charge_balanced([a, a2, b, b2, x], [1, 1, 1, 1, 6]) and crystal.nsites == 10
    assert encode_structures([crystal], settings=IDENTIFY)["spacegroup"].item() == 216  # F-43m
    with pytest.raises(ValueError, match=r"unknown prototypes \['garnet'\]; known: .* \(or all\)"):
        select_prototypes(["garnet"])

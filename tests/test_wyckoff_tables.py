"""The shipped Wyckoff tables: agreement with the CLOUD reference, sanity of the normalizer permutations, and
reproducibility of the derivation in `cloud_core.wyckoff_tables`."""

import json
from pathlib import Path

import pytest

from cloud_core import wyckoff_tables as wt

REFERENCE = Path(__file__).parents[1] / ".." / "shared" / "data" / "cloud_reference"
GROUPS = range(1, 231)


def _shipped() -> dict:
    return json.loads(wt.DEFAULT_OUT.read_text())


@pytest.mark.shared_data
def test_letters_and_multiplicities_match_reference():
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE}")
    reference = json.loads((REFERENCE / "wyckoff-position-multiplicities.json").read_text())
    for number in GROUPS:
        expected = {letter: int(m) for letter, m in reference[str(number)].items()}
        assert {letter: wt.multiplicity(number, letter) for letter in wt.letters(number)} == expected, number


def test_letters_follow_ita_order():
    for number in GROUPS:
        letters = wt.letters(number)
        assert letters == wt.ALPHABET[: len(letters)]
        assert [wt.letter_index(number, letter) for letter in letters] == list(range(len(letters)))
    assert wt.letters(47).endswith("zA")  # Pmmm: 27 positions, alpha written 'A'


def test_permutations_are_a_multiplicity_preserving_group():
    for number in GROUPS:
        letters = wt.letters(number)
        size = len(letters)
        permutations = wt.letter_permutations(number)
        assert permutations[0] == tuple(range(size)), number
        assert len(set(permutations)) == len(permutations), number
        for permutation in permutations:
            assert sorted(permutation) == list(range(size)), number
            assert all(
                wt.multiplicity(number, letters[i]) == wt.multiplicity(number, letters[j])
                for i, j in enumerate(permutation)
            ), number
        # Closed under composition: the image of the normalizer is a group, which canonicalization relies on.
        known = set(permutations)
        assert all(tuple(p[i] for i in q) in known for p in permutations for q in permutations), number


def test_known_normalizer_actions():
    assert wt.letter_permutations(1) == [(0,)]
    # Fm-3m: shifting the origin by (1/2, 0, 0) swaps 4a and 4b (rock salt Na/Cl).
    a, b = wt.letter_index(225, "a"), wt.letter_index(225, "b")
    assert any(p[a] == b and p[b] == a for p in wt.letter_permutations(225))
    # P-1: the eight inversion centres 1a..1h are one orbit of the normalizer; 2i stays put.
    assert {p[0] for p in wt.letter_permutations(2)} == set(range(8))
    assert all(p[8] == 8 for p in wt.letter_permutations(2))


def test_lookup_errors():
    with pytest.raises(ValueError):
        wt.letters(231)
    with pytest.raises(ValueError):
        wt.multiplicity(1, "b")


def test_build_reproduces_shipped_entries():
    shipped = _shipped()
    for number in (1, 2, 14, 47, 62, 166, 194, 225, 227, 230):
        assert wt.build_table(number) == shipped[str(number)], number


@pytest.mark.slow
def test_full_rebuild_matches_shipped_table():
    shipped = _shipped()
    rebuilt = wt.build_all()
    assert {k: v for k, v in rebuilt.items() if k != "_about"} == {k: v for k, v in shipped.items() if k != "_about"}

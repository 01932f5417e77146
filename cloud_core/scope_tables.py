"""The pymatgen tables SCOPE strings and the candidate generator need, shipped as JSON so that encoding and
generating never import pymatgen.

- generator codes: space group number -> pymatgen's generator code (`SYMM_DATA["space_group_encoding"]`, the
  first entry of each number, as `cloud_core.scope.generator_codes` used to read them);
- elements: symbol -> (Pauling electronegativity or null where pymatgen has none, atomic number), for the
  118 elements;
- common oxidation states: symbol -> pymatgen's `Element.common_oxidation_states` (the candidate generator's
  charge-balance filter, `cloud_core.prototypes`).

Importing pymatgen costs about 0.1 s of every `cloud-screen encode` start-up; reading this table costs about a
millisecond. Derived by our own code from pymatgen and checked against it by `tests/test_scope.py`:

    python -m cloud_core.scope_tables [--out PATH]
"""

from __future__ import annotations

import argparse
import functools
import json
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).parent / "data" / "scope_tables.json"


def build() -> dict[str, Any]:
    """The table, from pymatgen."""
    from pymatgen.core.periodic_table import Element
    from pymatgen.symmetry.groups import SYMM_DATA

    codes: dict[int, str] = {}
    for entry in SYMM_DATA["space_group_encoding"].values():
        codes.setdefault(int(entry["int_number"]), entry["enc"])
    elements: dict[str, list] = {}
    oxidation_states: dict[str, list[int]] = {}
    for z in range(1, 119):
        element = Element.from_Z(z)
        with warnings.catch_warnings():  # pymatgen warns that noble gases have no Pauling value (NaN)
            warnings.simplefilter("ignore")
            x = float(element.X)
        elements[element.symbol] = [x if x == x else None, int(element.Z)]
        oxidation_states[element.symbol] = [int(q) for q in element.common_oxidation_states]
    return {
        "generator_codes": {str(n): codes[n] for n in sorted(codes)},
        "elements": elements,
        "common_oxidation_states": oxidation_states,
    }


def dumps(table: dict[str, Any]) -> str:
    """The shipped text: one group or element per line, so that diffs stay readable."""
    parts = []
    for name, entries in table.items():
        lines = [f"    {json.dumps(key)}: {json.dumps(value)}" for key, value in entries.items()]
        parts.append(f"  {json.dumps(name)}: {{\n" + ",\n".join(lines) + "\n  }")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the generator-code and element table from pymatgen.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    args.out.write_text(dumps(build()))
    print(f"wrote {args.out}")


@functools.cache
def shipped() -> dict[str, Any]:
    """The shipped table (as written by `main`)."""
    return json.loads(resources.files("cloud_core").joinpath("data").joinpath("scope_tables.json").read_text())


def generator_codes() -> dict[int, str]:
    """Space group number -> pymatgen's generator code."""
    return {int(n): code for n, code in shipped()["generator_codes"].items()}


def element_data(symbol: str) -> tuple[float, int] | None:
    """(Pauling electronegativity, NaN where pymatgen has none; atomic number), or None for an unknown symbol."""
    entry = shipped()["elements"].get(symbol)
    if entry is None:
        return None
    x, z = entry
    return (float("nan") if x is None else float(x), int(z))


def common_oxidation_states(symbol: str) -> tuple[int, ...] | None:
    """pymatgen's common oxidation states of an element, or None for an unknown symbol."""
    states = shipped()["common_oxidation_states"].get(symbol)
    return None if states is None else tuple(states)


if __name__ == "__main__":
    main()

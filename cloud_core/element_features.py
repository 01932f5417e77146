"""Fixed descriptors of the elements, a chemistry prior a model can add to its element-token embeddings.

A model that learns each element's embedding from scratch sees rare elements a few dozen times in 30,000
labelled structures; giving it the periodic table (period, group, electronegativity, radius, ionisation
energy, ...) lets what it learns about one element carry over to its neighbours, as Roost's and CrabNet's
pretrained element embeddings do. The table is built from pymatgen at training time and saved with the model
weights (a buffer of the model), so prediction never imports pymatgen and a bundle always reads the
descriptors it was trained with.

Each column is standardised over the 118 elements (mean 0, standard deviation 1); a value pymatgen does not
have (noble-gas electronegativity, radii of superheavy elements) is the column mean, i.e. 0. Tokens that are
not elements get a row of zeros.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

FEATURES = (
    "atomic_number",
    "period",
    "group",
    "electronegativity",  # Pauling
    "atomic_radius",  # empirical, Å
    "atomic_mass",
    "mendeleev_number",
    "ionization_energy",  # first, eV
    "electron_affinity",  # eV
    "molar_volume",  # cm^3/mol, of the element's solid
    "lowest_common_oxidation_state",
    "highest_common_oxidation_state",
    "is_metal",
    "block_s",
    "block_p",
    "block_d",
    "block_f",
)


def _number(element, name: str) -> float:
    """pymatgen's value of one property as a float; NaN where it has none (a missing key, None or NaN)."""
    try:
        number = float(getattr(element, name))
    except (AttributeError, KeyError, TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def raw_table() -> dict[str, list[float]]:
    """Element symbol -> the FEATURES in pymatgen's units, NaN where pymatgen has no value (118 elements)."""
    from pymatgen.core.periodic_table import Element

    table = {}
    with warnings.catch_warnings():  # pymatgen warns for every property it lacks
        warnings.simplefilter("ignore")
        for z in range(1, 119):
            e = Element.from_Z(z)
            states = e.common_oxidation_states
            table[e.symbol] = [
                float(e.Z),
                float(e.row),
                float(e.group),
                _number(e, "X"),
                _number(e, "atomic_radius"),
                _number(e, "atomic_mass"),
                _number(e, "mendeleev_no"),
                _number(e, "ionization_energy"),
                _number(e, "electron_affinity"),
                _number(e, "molar_volume"),
                float(min(states)) if states else math.nan,
                float(max(states)) if states else math.nan,
                float(e.is_metal),
                *(float(e.block == block) for block in "spdf"),
            ]
    return table


def feature_matrix(vocabulary: Sequence[str]) -> np.ndarray:
    """(len(vocabulary), len(FEATURES)) float32: standardised descriptors on element tokens, zeros elsewhere."""
    table = raw_table()
    values = np.array(list(table.values()), dtype=np.float64)  # (118, F)
    mean = np.nanmean(values, axis=0)
    std = np.nanstd(values, axis=0)
    standardised = np.nan_to_num((values - mean) / np.where(std > 0, std, 1.0), nan=0.0)
    row = dict(zip(table, standardised, strict=True))
    matrix = np.zeros((len(vocabulary), len(FEATURES)), dtype=np.float32)
    for i, token in enumerate(vocabulary):
        if token in row:
            matrix[i] = row[token]
    return matrix

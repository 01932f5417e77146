"""Training and evaluation data from the shared tables (`../shared/data`), encoded to SCOPE strings.

Every table carries a fixed `split` column (sha1 of material_id), the same for a material in every table,
so multi-task training on the union never leaks a test material. Labels, per atom where it applies:

| task | table | label | unit |
|---|---|---|---|
| formation_energy_per_atom | mp37k | formation_energy_per_atom | eV/atom |
| band_gap | mp37k | band_gap | eV |
| log10_k_vrh, log10_g_vrh | mp_elastic3k | log10(K_VRH), log10(G_VRH) | log10 GPa |
| cv_{25,305,705}K, u_*, s_*, f_* | phonon_thermo1k | same, converted | J/(K mol atoms), J/(mol atoms) |

Encoded strings are cached per table, variant and encoder version in the user cache folder, because
encoding the 53 thousand structures takes a minute or two; the cache is derived data and safe to delete.
"""

from __future__ import annotations

import hashlib
import os
from functools import cache
from pathlib import Path

import polars as pl

from cloud_core import __version__
from cloud_core.debye import MEV_PER_ATOM_TO_J_PER_MOL
from cloud_core.encode import EncodeSettings, default_workers, encode_table

TABLES = ("mp37k", "mp_elastic3k", "phonon_thermo1k", "perov5_partial", "carbon24_partial")
LABELLED_TABLES = ("mp37k", "mp_elastic3k", "phonon_thermo1k")
TEMPERATURES = (25, 305, 705)
THERMO_QUANTITIES = ("cv", "u", "s", "f")  # per mole of atoms, as debye.debye_thermo returns them
THERMO = tuple(f"{q}_{t}K" for q in THERMO_QUANTITIES for t in TEMPERATURES)
# Which table's test split scores which task.
TASK_TABLE = {
    "formation_energy_per_atom": "mp37k",
    "band_gap": "mp37k",
    "log10_k_vrh": "mp_elastic3k",
    "log10_g_vrh": "mp_elastic3k",
    **{name: "phonon_thermo1k" for name in THERMO},
}


def default_data_dir() -> Path:
    """`../shared/data` next to the project checkout, or $CLOUD_SCREEN_DATA."""
    if "CLOUD_SCREEN_DATA" in os.environ:
        return Path(os.environ["CLOUD_SCREEN_DATA"])
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    path = base / "cloud-screen" / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


@cache
def encoder_fingerprint() -> str:
    """Hash of the code and tables that decide a SCOPE string: a cached encoding is reused only while equal."""
    package = Path(__file__).parent
    digest = hashlib.sha1(__version__.encode())
    for name in (
        "structures.py",
        "symmetry.py",
        "scope.py",
        "wyckoff_tables.py",
        "data/wyckoff_tables.json",
        "data/scope_tables.json",
    ):
        digest.update((package / name).read_bytes())
    return digest.hexdigest()[:16]


def labels(table: str, frame: pl.DataFrame) -> pl.DataFrame:
    """The label columns of one table in the model's units, keyed by material_id."""
    if table == "mp37k":
        return frame.select("material_id", "formation_energy_per_atom", "band_gap")
    if table == "mp_elastic3k":
        return frame.select(
            "material_id",
            pl.col("K_VRH").log10().alias("log10_k_vrh"),
            pl.col("G_VRH").log10().alias("log10_g_vrh"),
        )
    if table == "phonon_thermo1k":
        # meV/K per atom and meV per atom -> J/(K mol atoms) and J/(mol atoms)
        return frame.select("material_id", *(pl.col(c) * MEV_PER_ATOM_TO_J_PER_MOL for c in THERMO))
    return frame.select("material_id")


def encoded_table(
    table: str, variant: str, data_dir: Path | None = None, workers: int | None = None, split: str | None = None
) -> pl.DataFrame:
    """One shared table (or one split of it) encoded: material_id, split, scope, error, nsites, labels. Cached."""
    path = (data_dir or default_data_dir()) / f"{table}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: point --data (or CLOUD_SCREEN_DATA) at the shared data folder")
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{variant}|{encoder_fingerprint()}".encode())
    cached = cache_dir() / f"{table}-{variant}-{key.hexdigest()[:12]}.parquet"
    if cached.exists():
        frame = pl.read_parquet(cached)
        return frame if split is None else frame.filter(pl.col("split") == split)
    if split is not None:  # one split only: encode just that (and cache it under its own name)
        cached = cached.with_name(f"{table}-{variant}-{split}-{key.hexdigest()[:12]}.parquet")
        if cached.exists():
            return pl.read_parquet(cached)
    frame = pl.read_parquet(path)
    if split is not None:
        frame = frame.filter(pl.col("split") == split)
    encoded = encode_table(
        frame.select("material_id", "cif"), EncodeSettings(variant=variant), workers or default_workers()
    )
    result = pl.concat(
        [
            frame.select("material_id", "split"),
            encoded.select("scope", "nsites", "spacegroup", "error"),
        ],
        how="horizontal",
    ).join(labels(table, frame), on="material_id", how="left")
    result.write_parquet(cached)
    return result


def training_frame(variant: str, data_dir: Path | None = None) -> pl.DataFrame:
    """One row per (table, material) with every label column (null where the table lacks it)."""
    frames = []
    for table in LABELLED_TABLES:
        frame = encoded_table(table, variant, data_dir).with_columns(table=pl.lit(table))
        frames.append(frame.filter(pl.col("scope").is_not_null()))
    return pl.concat(frames, how="diagonal_relaxed")


def pretraining_strings(variant: str, data_dir: Path | None = None) -> list[str]:
    """Masked-LM corpus: every train-split string of the shared tables + the reference 10k corpus.

    The reference strings are in the official format; the tokenizer reads both, and the model sees the
    official dialect only here (they teach co-occurrence of symmetry and composition). The reference corpus
    may hold our val/test materials (it samples all of MP), so any reference string equal to the official
    string of a val/test material of any table is dropped."""
    data_dir = data_dir or default_data_dir()
    strings: list[str] = []
    held_out: set[str] = set()
    for table in TABLES:
        frame = encoded_table(table, variant, data_dir)
        strings += frame.filter((pl.col("split") == "train") & pl.col("scope").is_not_null())["scope"].to_list()
        official = encoded_table(table, "official", data_dir).filter(pl.col("split") != "train")
        held_out.update(official["scope"].drop_nulls().to_list())
    reference = data_dir / "cloud_reference" / "pretrain_cloud_10k.csv"
    if reference.exists():
        strings += [s for s in pl.read_csv(reference)["cloud"].to_list() if s not in held_out]
    return strings

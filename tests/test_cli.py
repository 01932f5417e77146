"""The `cloud-screen encode` command, run as users run it: the installed console script in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from pymatgen.io.cif import CifWriter
from pymatgen.io.vasp import Poscar

NACL = "1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4a 4b | Na 0.5 Cl 0.5"


def cloud_screen(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    exe = shutil.which("cloud-screen") or str(Path(sys.executable).parent / "cloud-screen")
    result = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture()
def input_dir(tmp_path, rocksalt, corundum):
    """One structure in every supported format, plus two broken files, with awkward names."""
    folder = tmp_path / "in put ü"
    folder.mkdir()
    CifWriter(rocksalt).write_file(folder / "nacl cif.cif")
    Poscar(corundum).write_file(folder / "POSCAR")
    (folder / "nacl.json").write_text(json.dumps(rocksalt.as_dict()))
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    write(folder / "nacl.extxyz", AseAtomsAdaptor.get_atoms(rocksalt), format="extxyz")
    cif = str(CifWriter(rocksalt))
    pl.DataFrame({"material_id": ["t-1", "t-2"], "cif": [cif, "garbage"]}).write_parquet(folder / "table.parquet")
    pl.DataFrame({"cif": [cif]}).write_csv(folder / "rows.csv")
    pl.DataFrame({"id": ["j-1"], "cif": [cif]}).write_ndjson(folder / "rows.jsonl")
    (folder / "broken.cif").write_text(cif[: len(cif) // 2])
    (folder / "binary.cif").write_bytes(bytes(range(256)) * 8)
    (folder / "notes.txt").write_text("not a structure file: ignored in directories")
    return folder


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_encode_directory_every_format(input_dir, tmp_path, suffix):
    out = tmp_path / f"out{suffix}"
    result = cloud_screen("encode", str(input_dir), "--out", str(out), "--workers", "2")
    table = {".parquet": pl.read_parquet, ".csv": pl.read_csv, ".jsonl": pl.read_ndjson}[suffix](out)
    rows = {r["id"]: r for r in table.iter_rows(named=True)}
    assert set(rows) == {"nacl cif", "POSCAR", "nacl", "t-1", "t-2", "0", "j-1", "broken", "binary"}
    for ident in ("nacl cif", "t-1", "0", "j-1"):
        assert rows[ident]["scope"] == NACL and rows[ident]["error"] is None
    assert rows["POSCAR"]["scope"] == "1 3 a E C C n O O O e O O D 0 | 12c 18e | Al 0.4 O 0.6"
    assert rows["POSCAR"]["spacegroup"] == 167 and rows["POSCAR"]["formula"] == "Al2O3"
    assert rows["POSCAR"]["z_conventional"] == pytest.approx(6)
    for ident in ("t-2", "broken", "binary"):
        assert rows[ident]["scope"] is None and rows[ident]["error"], rows[ident]
    assert "binary" in rows["binary"]["error"]
    assert "encoded 7 of 10 structures (3 errors)" in result.stderr.replace("\n", " ") or "encoded" in result.stderr
    assert not list(tmp_path.glob(".*partial"))


def test_encode_official_and_single_worker_agree_with_parallel(input_dir, tmp_path):
    one = tmp_path / "one.parquet"
    two = tmp_path / "two.parquet"
    cloud_screen(
        "encode",
        str(input_dir / "POSCAR"),
        str(input_dir / "table.parquet"),
        "--out",
        str(one),
        "--variant",
        "official",
        "--workers",
        "1",
    )
    cloud_screen(
        "encode",
        str(input_dir / "POSCAR"),
        str(input_dir / "table.parquet"),
        "--out",
        str(two),
        "--variant",
        "official",
        "--workers",
        "2",
    )
    a, b = pl.read_parquet(one), pl.read_parquet(two)
    assert a.drop("symprec").equals(b.drop("symprec"))
    assert a["id"].to_list() == ["POSCAR", "t-1", "t-2"]
    assert a["variant"].unique().to_list() == ["official"] and a["backend"].drop_nulls().unique().to_list() == [
        "spglib"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["encode", "no-such-file.cif", "--out", "x.parquet"], "input not found"),
        (["encode", "{dir}", "--out", "x.xlsx"], "cannot tell the table format"),
        (["encode", "{dir}", "--out", "x.csv", "--variant", "fancy"], "unknown --variant"),
    ],
)
def test_encode_refuses_with_one_line(input_dir, tmp_path, args, message):
    args = [a.replace("{dir}", str(input_dir)) for a in args]
    result = cloud_screen(*args, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_demo_runs(tmp_path):
    out = tmp_path / "demo.parquet"
    result = cloud_screen("demo", "--out", str(out), "--count", "60")
    table = pl.read_parquet(out)
    assert table.height == 60 and table["error"].null_count() == 60
    assert table["scope"].n_unique() > 10
    assert "candidates encoded" in result.stdout


# --------------------------------------------------------------------------------------------------
# predict

PREDICT_COLUMNS = {
    "id",
    "scope",
    "formation_energy_per_atom",
    "band_gap",
    "log10_k_vrh",
    "log10_g_vrh",
    "debye_temperature",
    "cv_300K",
    "error",
}


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A small untrained bundle: predict's plumbing does not depend on how good the weights are."""
    import torch

    from cloud_core.bundle import save_bundle
    from cloud_core.model import CloudModel, ModelConfig
    from cloud_core.tokenizer import vocabulary

    torch.manual_seed(0)
    model = CloudModel(ModelConfig(vocab_size=len(vocabulary()), n_layer=1, n_head=2, d_model=16))
    return save_bundle(
        tmp_path_factory.mktemp("bundle") / "tiny", model, {"name": "tiny", "settings": {"variant": "detailed"}}
    )


def test_predict_directory_rows_columns_and_errors(input_dir, tmp_path, tiny_bundle):
    out = tmp_path / "pred.parquet"
    cloud_screen("predict", str(input_dir), "--out", str(out), "--model", str(tiny_bundle), "--device", "cpu")
    table = pl.read_parquet(out)
    assert set(table.columns) >= PREDICT_COLUMNS
    rows = {r["id"]: r for r in table.iter_rows(named=True)}
    assert set(rows) == {"nacl cif", "POSCAR", "nacl", "t-1", "t-2", "0", "j-1", "broken", "binary"}
    for ident in ("broken", "binary", "t-2"):
        assert rows[ident]["error"] and rows[ident]["formation_energy_per_atom"] is None
    nacl = rows["nacl cif"]
    assert (
        nacl["error"] is None
        and nacl["scope"] == "1 6 a O D D a D O D b O O O c O O O d O O O e O O O 0 | 4a:Na 4b:Cl | Na 0.5 Cl 0.5"
    )
    assert nacl["debye_temperature"] > 0 and 0 < nacl["cv_300K"] < 25
    assert rows["t-1"]["band_gap"] == pytest.approx(nacl["band_gap"])  # same structure, same prediction


def test_predict_refuses_in_one_line(input_dir, tmp_path, tiny_bundle):
    cases = [
        (["--model", str(tmp_path / "nope")], "no model bundle"),
        (["--model", str(tiny_bundle), "--device", "tpu"], "--device must be"),
        (["--model", str(tiny_bundle), "--out", str(tmp_path / "x.xlsx")], "table format"),
    ]
    for extra, message in cases:
        args = ["predict", str(input_dir), "--out", str(tmp_path / "p.parquet"), *extra]
        result = cloud_screen(*args, check=False)
        assert result.returncode == 1 and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


TEARDOWN_PROBE = """
import atexit, sys
atexit.register(print, "TEARDOWN RAN", flush=True)
from flows.cli import run
sys.argv = ["cloud-screen", *sys.argv[1:]]
run()
"""


@pytest.mark.parametrize("command", ["encode", "predict"])
def test_successful_encode_and_predict_skip_the_teardown_and_lose_nothing(input_dir, tmp_path, tiny_bundle, command):
    """The console script ends a successful `encode` / `predict` with os._exit (no interpreter teardown: an
    atexit handler does not run), after the output file is complete and the summary line written; a failing
    command exits 1 through the normal teardown."""
    out = tmp_path / f"{command}.parquet"
    extra = ["--model", str(tiny_bundle), "--device", "cpu"] if command == "predict" else []
    args = [sys.executable, "-c", TEARDOWN_PROBE, command, str(input_dir), "--out", str(out), "--workers", "1", *extra]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "TEARDOWN RAN" not in done.stdout
    assert pl.read_parquet(out).height == 10 and "10 structures" in done.stderr  # every input, and the summary
    failed = subprocess.run(
        [*args[:3], command, str(input_dir), "--out", str(tmp_path / "x.xlsx"), *extra],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert failed.returncode == 1 and "TEARDOWN RAN" in failed.stdout

"""Security: model bundles load from safetensors only, `query` cannot change the catalog or touch other files,
names made from catalog values stay inside the output folder, servers bind 127.0.0.1, CI audits dependencies.

Bundle refusals of test_model.py use a small model saved by the test; here the shipped bundle is copied and
tampered with, and the loader must refuse each copy before anything is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
from pathlib import Path

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from catalogs.catalog import Catalog
from catalogs.export import export_cifs, path_inside, safe_file_name
from cloud_core.bundle import BundleError, load_bundle, sha256_file, shipped_models_dir
from cloud_core.structures import Crystal, crystal_to_json
from flows.cli import app

ROOT = Path(__file__).resolve().parents[1]

MARKER = "cloud_screen_pickle_ran"


class _Payload:
    """Unpickling this creates a marker file: the proof that a loader ran code from a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture()
def bundle(tmp_path) -> Path:
    """A copy of the shipped default bundle."""
    folder = tmp_path / "bundle"
    shutil.copytree(shipped_models_dir() / "default", folder)
    return folder


def _card(folder: Path) -> dict:
    return json.loads((folder / "card.json").read_text())


def _rehash(folder: Path) -> None:
    """Update the card's weights hash, as an attacker who replaces the weights would."""
    card = _card(folder)
    card["weights_sha256"] = sha256_file(folder / "model.safetensors")
    (folder / "card.json").write_text(json.dumps(card))


def _pickle_in_place(folder: Path, marker: Path) -> None:
    (folder / "model.safetensors").write_bytes(pickle.dumps({"weights": _Payload(marker)}, protocol=4))
    _rehash(folder)


def _torch_save_in_place(folder: Path, marker: Path) -> None:
    torch.save({"weights": _Payload(marker)}, folder / "model.safetensors")  # a zip holding a pickle
    _rehash(folder)


def _pickle_beside(folder: Path, marker: Path) -> None:
    torch.save({"weights": _Payload(marker)}, folder / "model.pt")


def _pickle_only(folder: Path, marker: Path) -> None:
    (folder / "model.safetensors").unlink()
    _pickle_beside(folder, marker)


def _flip_a_byte(folder: Path, marker: Path) -> None:
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / "model.safetensors").write_bytes(bytes(data))


def _other_vocabulary(folder: Path, marker: Path) -> None:
    card = _card(folder)
    card["vocabulary_hash"] = hashlib.sha256(b"another vocabulary").hexdigest()
    (folder / "card.json").write_text(json.dumps(card))


def _pickle_format_in_card(folder: Path, marker: Path) -> None:
    card = _card(folder)
    card["weights_format"] = "pickle"
    (folder / "card.json").write_text(json.dumps(card))


def _card_not_an_object(folder: Path, marker: Path) -> None:
    (folder / "card.json").write_text("[1, 2, 3]")


TAMPERING = {
    "pickle renamed to model.safetensors, hash updated": (_pickle_in_place, "is a pickle, not safetensors"),
    "torch.save file as model.safetensors, hash updated": (_torch_save_in_place, "is a zip archive"),
    "pickle beside the safetensors weights": (_pickle_beside, "holds pickled weights (model.pt)"),
    "pickle instead of the safetensors weights": (_pickle_only, "holds pickled weights (model.pt)"),
    "one weight byte changed": (_flip_a_byte, "does not match the hash in card.json"),
    "another vocabulary": (_other_vocabulary, "another SCOPE vocabulary"),
    "card asks for pickle weights": (_pickle_format_in_card, "only safetensors is loaded"),
    "card is not an object": (_card_not_an_object, "not a model card"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampered_bundle_is_refused_and_nothing_is_unpickled(bundle, tmp_path, case):
    tamper, reason = TAMPERING[case]
    marker = tmp_path / MARKER
    tamper(bundle, marker)
    with pytest.raises(BundleError) as refused:
        load_bundle(bundle)
    assert reason in str(refused.value)
    assert not marker.exists()


def test_untampered_copy_loads(bundle):
    assert load_bundle(bundle).id == "cloud-screen-default"


def test_predict_with_a_tampered_bundle_fails_in_one_line(bundle, tmp_path, rocksalt):
    from pymatgen.io.cif import CifWriter

    _pickle_in_place(bundle, tmp_path / MARKER)
    CifWriter(rocksalt).write_file(tmp_path / "nacl.cif")
    out = tmp_path / "p.parquet"
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "nacl.cif"), "--out", str(out), "--model", str(bundle)])
    assert result.exit_code == 1 and "is a pickle" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / MARKER).exists()


# ------------------------------------------------------------------------------------------------ query

WRITES = [
    ("DROP TABLE predictions", "read-only"),
    ("INSERT INTO runs (run_id, flow, status, started_at) VALUES ('x', 'screen', 'completed', now())", "read-only"),
    ("UPDATE runs SET status = 'failed'", "read-only"),
    ("CREATE TABLE mine AS SELECT 1 AS a", "read-only"),
    ("SELECT 1; DELETE FROM runs", "read-only"),
    ("COPY runs TO '{dir}/leak.csv'", "disabled by configuration"),
    ("EXPORT DATABASE '{dir}/dump'", "disabled by configuration"),
    ("SELECT * FROM read_csv('{dir}/secret.csv')", "disabled by configuration"),
    ("ATTACH '{dir}/other.duckdb' AS other", "disabled by configuration"),
    ("INSTALL httpfs", "disabled by configuration"),
]


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("catalog") / "c.duckdb"
    Catalog(path).start_run(flow="screen", source="test")
    return path


@pytest.mark.parametrize(("sql", "reason"), WRITES)
def test_query_cannot_change_the_catalog_or_touch_other_files(small_catalog, tmp_path, sql, reason):
    """DELETE is tested in test_catalog.py; these are the other ways SQL could write, or read another file."""
    (tmp_path / "secret.csv").write_text("a\n1\n")
    before = sha256_file(small_catalog)
    result = CliRunner().invoke(app, ["query", "--catalog", str(small_catalog), sql.format(dir=tmp_path)])
    assert result.exit_code == 1, result.stdout
    assert reason in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sha256_file(small_catalog) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.csv"]


def test_query_still_reads(small_catalog):
    result = CliRunner().invoke(app, ["query", "--catalog", str(small_catalog), "SELECT source FROM runs", "-f", "csv"])
    assert result.exit_code == 0 and result.stdout.splitlines() == ["source", "test"]


# ------------------------------------------------------------------------------------------------ output paths

HOSTILE_NAMES = ["../../etc/x", "/tmp/absolute", "..", ".hidden", "a\\..\\b", "nul\x00l", "x" * 500, "日本\n語", ""]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_safe_file_name_is_one_harmless_component(tmp_path, name):
    safe = safe_file_name(name)
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}", safe), safe
    assert path_inside(tmp_path, safe).parent == tmp_path
    with pytest.raises(ValueError, match="outside"):
        path_inside(tmp_path, "../escape.cif")


def test_cif_export_names_from_catalog_values_stay_in_the_folder(tmp_path):
    """Formulas, candidate ids and run ids come from the catalog: hostile ones still name files in the folder."""
    import numpy as np

    crystal = Crystal(np.eye(3) * 5.64, np.array([[0, 0, 0], [0.5, 0.5, 0.5]]), [(("Na", 1.0),), (("Cl", 1.0),)])
    n = len(HOSTILE_NAMES)
    ranked = pl.DataFrame(
        {
            "rank": [*range(1, n), None],  # a Pareto member past the top k has no rank
            "run_id": ["run\n_cell_length_a 1"] * n,
            "score": [0.5] * (n - 1) + [None],
            "formula": HOSTILE_NAMES,
            "candidate_id": list(reversed(HOSTILE_NAMES)),
            "structure": [crystal_to_json(crystal)] * n,
            "structure_format": ["json"] * n,
            "model_id": ["m"] * n,
            "model_hash": ["h"] * n,
            "code_version": ["v"] * n,
        },
        schema_overrides={"rank": pl.Int32, "score": pl.Float64},
    )
    out = tmp_path / "export" / "cifs"
    index = export_cifs(ranked, out)
    assert index["error"].null_count() == n, index["error"].to_list()
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(Path("export/cifs") / name for name in [*index["file"], "index.csv"])
    for name in index["file"]:
        text = (out / name).read_text()
        assert text.startswith("# cloud-screen run run _cell_length_a 1")  # the header stays one comment line
        assert sum(line.startswith("_cell_length_a") for line in text.splitlines()) == 1


def test_report_path_keeps_run_ids_in_the_reports_folder(tmp_path):
    from flows.screen import report_path_for

    catalog = tmp_path / "c.duckdb"
    for run_id in ("../../etc/passwd", "/abs/run", "ok-run_1"):
        path = report_path_for(str(catalog), run_id)
        assert path.parent == tmp_path / "c_reports" and path.suffix == ".html"
    assert report_path_for(str(catalog), "ok-run_1").name == "ok-run_1.html"


# ------------------------------------------------------------------------------------------------ services


def test_servers_bind_loopback_by_default(monkeypatch):
    """Prefect's server (`prefect server start`, and the ephemeral one a flow run starts) binds 127.0.0.1 unless
    told otherwise, and nothing in this project tells it otherwise. The one exception is docs/cluster.md, where
    the head node's servers must answer the GPU nodes: it binds a private cluster address, never all interfaces."""
    from prefect.settings.models.server.api import ServerAPISettings

    from flows.deployments import START_SERVER_HINT

    monkeypatch.delenv("PREFECT_SERVER_API_HOST", raising=False)
    assert ServerAPISettings().host == "127.0.0.1"
    assert "--host 127.0.0.1" in START_SERVER_HINT
    files = [ROOT / name for name in ("README.md", "prefect.yaml", "pyproject.toml", ".ci/run")]
    for folder in ("cloud_core", "catalogs", "flows", "bench", "tests", "docs"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in {".py", ".yaml", ".yml", ".toml", ".md"}]
    for path in files:
        text = path.read_text(errors="replace")
        if path.name == "test_security.py":
            continue
        assert "0.0.0.0" not in text, path
        cluster_docs = path == ROOT / "docs" / "cluster.md"
        for host in re.findall(r"--host[ =]+[\"']?([^\s\"'`,)]+)", text):
            assert host in {"127.0.0.1", "localhost"} or (cluster_docs and _private_address(host)), (path, host)
        for host in re.findall(r"API_HOST\s*[=:]\s*[\"']?([^\s\"'`,)]+)", text):
            assert host in {"127.0.0.1", "localhost"}, (path, host)


def _private_address(host: str) -> bool:
    import ipaddress

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_private and not address.is_loopback and not address.is_unspecified


def test_ci_audits_dependencies_without_blocking():
    script = (ROOT / ".ci" / "run").read_text()
    tests_at, audit_at = script.index('bash -c "$test_command"'), script.index('"$audit"')
    assert tests_at < audit_at  # after the tests
    audit_line = next(line for line in script.splitlines() if '"$audit"' in line and "timeout" in line)
    assert "timeout " in audit_line and "||" in audit_line  # bounded without network, never fails CI
    assert script.rstrip().endswith('exit "$status"')  # CI's status is the tests'
    assert "pip-audit" in (ROOT / "pyproject.toml").read_text()

"""The predict pipeline: encoder processes beside the model, overlapped, with the same rows as one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import ROOT

# Run in a fresh interpreter (this one has torch imported already): every encoder task records whether its
# process had torch loaded, then predict_files runs with the shipped model.
SPY = r"""
import os, sys
from pathlib import Path
import cloud_core.encode as encode

spy_dir = Path(sys.argv[1])
real = encode.encode_chunk

def encode_chunk(raws, settings):  # replaces the module's function before the pool forks its workers
    (spy_dir / f"{os.getpid()}-{raws[0].id}").write_text(str("torch" in sys.modules))
    return real(raws, settings)

encode.encode_chunk = encode_chunk
from cloud_core.pipeline import predict_files
from cloud_core.encode import EncodeSettings
counts = predict_files([Path(sys.argv[2])], Path(sys.argv[3]), "default", "cpu", EncodeSettings(variant="detailed"),
                       workers=int(sys.argv[4]), chunk_size=16)
print(os.getpid(), "torch" in sys.modules, counts)
"""


@pytest.fixture(scope="module")
def demo_inputs(tmp_path_factory) -> Path:
    """60 generated candidates as pymatgen-JSON files, plus one broken file."""
    from cloud_core.prototypes import generate_candidates
    from cloud_core.structures import crystal_to_json

    folder = tmp_path_factory.mktemp("inputs")
    for i, (_, crystal) in enumerate(generate_candidates(max_count=60, seed=3)):
        (folder / f"c{i:03d}.json").write_text(crystal_to_json(crystal))
    (folder / "zz-broken.cif").write_text("data_x\n_cell_length_a 3\n")
    return folder


@pytest.mark.parametrize("workers", [1, 2])
def test_encoder_workers_run_without_torch_and_rows_equal_one_process(demo_inputs, tmp_path, workers):
    from cloud_core.bundle import load_bundle
    from cloud_core.encode import EncodeSettings, encode_stream
    from cloud_core.pipeline import predict_frame
    from cloud_core.structures import expand_inputs, iter_raw_inputs

    spy, out = tmp_path / "spy", tmp_path / "predicted.parquet"
    spy.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", SPY, str(spy), str(demo_inputs), str(out), str(workers)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    parent_pid, parent_has_torch = run.stdout.split()[:2]
    records = {p.name: p.read_text() for p in spy.iterdir()}
    worker_pids = {name.split("-")[0] for name in records}
    assert len(records) == 4  # 61 inputs in chunks of 16
    assert parent_pid not in worker_pids and 1 <= len(worker_pids) <= workers  # encoded beside the model
    assert set(records.values()) == {"False"} and parent_has_torch == "True"

    # The same rows as encoding and predicting in this one process.
    settings = EncodeSettings(variant="detailed")
    encoded = pl.concat(list(encode_stream(iter_raw_inputs(expand_inputs([demo_inputs])), settings, workers=1)))
    expected = predict_frame(load_bundle("default"), encoded, "cpu")
    got = pl.read_parquet(out)
    assert got.height == 61 and got["id"].to_list() == expected["id"].to_list()
    assert got["error"].is_not_null().sum() == 1 and got.filter(pl.col("id") == "zz-broken")["error"][0]
    for column in expected.columns:
        if expected[column].dtype == pl.Float64:
            assert (got[column] - expected[column]).abs().max() < 1e-4 * max(1.0, expected[column].abs().max())
        else:
            assert got[column].to_list() == expected[column].to_list(), column


def test_a_model_that_cannot_load_stops_before_any_output(demo_inputs, tmp_path):
    """The weights load beside encoding: a bad bundle must still end the command in one line, with no file."""
    bundle = tmp_path / "bad"
    bundle.mkdir()
    card = json.loads((ROOT / "cloud_core" / "models" / "default" / "card.json").read_text())
    (bundle / "card.json").write_text(json.dumps({**card, "vocabulary_hash": "0" * 64}))
    (bundle / "model.safetensors").write_bytes((ROOT / "cloud_core/models/default/model.safetensors").read_bytes())
    out = tmp_path / "p.parquet"
    exe = Path(sys.executable).parent / "cloud-screen"
    run = subprocess.run(
        [str(exe), "predict", str(demo_inputs), "--out", str(out), "--model", str(bundle), "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 1 and "another SCOPE vocabulary" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert list(tmp_path.glob("*.parquet")) == [] and list(tmp_path.glob(".*partial")) == []

"""The predict pipeline: encoder processes beside the model, overlapped, with the same rows as one process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import ROOT, process_running

# Run in a fresh interpreter (this one has torch imported already): every encoder task records whether its
# process had torch loaded, then predict_files runs with the shipped model.
SPY = r"""
import os, sys
from pathlib import Path
import cloud_core.encode as encode

spy_dir = Path(sys.argv[1])
real = encode._encode_on_board

def encode_on_board(ticket, raws, settings):  # replaces what a worker runs, before the pool forks its workers
    (spy_dir / f"{os.getpid()}-{raws[0].id}").write_text(str("torch" in sys.modules))
    return real(ticket, raws, settings)

encode._encode_on_board = encode_on_board
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
    assert len(records) == 4  # 61 inputs in chunks of 16
    by_workers = {name: had_torch for name, had_torch in records.items() if name.split("-")[0] != parent_pid}
    by_parent = {name: had_torch for name, had_torch in records.items() if name.split("-")[0] == parent_pid}
    worker_pids = {name.split("-")[0] for name in by_workers}
    assert 1 <= len(worker_pids) <= workers and set(by_workers.values()) == {"False"}  # small workers, no torch
    assert set(by_parent.values()) <= {"True"} and parent_has_torch == "True"  # the parent helps once loaded

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


_ENCODED_IN_PARENT: list[str] = []


def _slow_in_workers(ticket, chunk, settings):
    """What a worker runs, half a second slower."""
    import time

    import cloud_core.encode as encode

    time.sleep(0.5)
    return encode.real_encode_on_board(ticket, chunk, settings)


def _counted_in_parent(chunk, settings):
    """encode_chunk (what the consuming process runs when it helps), noting each chunk."""
    import cloud_core.encode as encode

    _ENCODED_IN_PARENT.append(chunk[0].id)
    return encode.real_encode_chunk(chunk, settings)


def test_the_consumer_encodes_while_the_workers_are_slow(monkeypatch):
    """encode_stream(help_while_waiting=...): the consuming process encodes chunks itself rather than wait, and
    the frames still come in input order, equal to encoding everything in one process."""
    import cloud_core.encode as encode
    from cloud_core.prototypes import generate_candidates
    from cloud_core.structures import RawInput, crystal_to_json

    raws = [RawInput(i, "demo", "json", crystal_to_json(c)) for i, c in generate_candidates(max_count=40, seed=5)]
    settings = encode.EncodeSettings(variant="detailed")
    expected = pl.concat(list(encode.encode_stream(raws, settings, workers=1, chunk_size=4)))

    monkeypatch.setattr(encode, "real_encode_on_board", encode._encode_on_board, raising=False)
    monkeypatch.setattr(encode, "_encode_on_board", _slow_in_workers)  # before the pool forks its worker
    monkeypatch.setattr(encode, "real_encode_chunk", encode.encode_chunk, raising=False)
    monkeypatch.setattr(encode, "encode_chunk", _counted_in_parent)
    for helping in (True, False):
        _ENCODED_IN_PARENT.clear()
        with encode.encoder_pool(1) as pool:
            frames = list(encode.encode_stream(raws, settings, 1, 4, pool=pool, help_while_waiting=lambda h=helping: h))
        assert pl.concat(frames).equals(expected)
        if helping:  # of 10 chunks, while the one worker (2 queued at a time) sleeps through each of its own
            assert len(_ENCODED_IN_PARENT) >= 3
        else:
            assert _ENCODED_IN_PARENT == []


def _poisoned(record, settings):  # replaces encode_record before the pool forks its workers
    import os
    import signal
    import time

    import cloud_core.encode as encode

    if record.crystal is not None and record.id == "kills":
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
    if record.crystal is not None and record.id == "hangs":
        time.sleep(3600)  # as a library looping for ever would
    return encode.real_encode_record(record, settings)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("own_pool", [False, True])
@pytest.mark.parametrize("poison", ["kills", "hangs"])
def test_a_structure_that_kills_or_hangs_its_worker_costs_one_error_row_not_a_stuck_batch(
    monkeypatch, poison, own_pool
):
    """A structure that kills its encoder worker (a segfault in native code, the out-of-memory killer) or
    keeps it busy for ever: the worker never sends its chunk back, and the stream used to wait for it for ever.
    Now the consumer sees the worker gone (or stops it past the hang limit: here 2 x 0.5 + 1 s) and encodes the
    chunk again in forked children, halving it down to the structure that kills its process again: that one
    is an error row; every other row equals one-process encoding, in input order; the pool has replaced the
    worker and goes on encoding; a stream with a pool of its own ends (close + join would wait for the lost
    result)."""
    import cloud_core.encode as encode
    from cloud_core.prototypes import generate_candidates
    from cloud_core.structures import RawInput, crystal_to_json

    raws = [RawInput(i, "demo", "json", crystal_to_json(c)) for i, c in generate_candidates(max_count=40, seed=5)]
    settings = encode.EncodeSettings(variant="detailed", time_limit=0.5)
    expected = pl.concat(list(encode.encode_stream(raws, settings, workers=1, chunk_size=4)))
    poisoned = [*raws[:13], RawInput(poison, "demo", "json", raws[13].text), *raws[13:]]

    monkeypatch.setattr(encode, "HANG_SLACK_S", 1.0)
    monkeypatch.setattr(encode, "real_encode_record", encode.encode_record, raising=False)
    monkeypatch.setattr(encode, "encode_record", _poisoned)
    with encode.encoder_pool(2) as pool:
        workers = {p.pid for p in pool._pool}
        got = pl.concat(list(encode.encode_stream(poisoned, settings, 2, 4, pool=None if own_pool else pool)))
        if not own_pool:
            assert len(workers - {p.pid for p in pool._pool}) == 1  # one worker ended and was replaced
            again = pl.concat(list(encode.encode_stream(raws[:8], settings, 2, 4, pool=pool)))
            assert again.equals(expected.head(8))

    assert got["id"].to_list() == [raw.id for raw in poisoned]
    row = got.filter(pl.col("id") == poison).row(0, named=True)
    reason = {
        "kills": "the encoder process died (signal SIGKILL) on this structure",
        "hangs": "encoding this structure did not finish within 2 s",
    }
    assert row["scope"] is None and reason[poison] in row["error"], row["error"]
    assert got.filter(pl.col("id") != poison).equals(expected)


@pytest.mark.timeout(120)
def test_encoding_again_in_forked_children_finds_each_structure_that_kills_or_hangs(monkeypatch):
    """encode_isolated (for a chunk whose worker died): a child that dies or passes the hang limit has its part
    halved and tried again, so in one chunk both culprits are found, each an error row with its reason, and
    the rest encode as in one process."""
    import cloud_core.encode as encode
    from cloud_core.prototypes import generate_candidates
    from cloud_core.structures import RawInput, crystal_to_json

    raws = [RawInput(i, "demo", "json", crystal_to_json(c)) for i, c in generate_candidates(max_count=6, seed=5)]
    settings = encode.EncodeSettings(variant="detailed", time_limit=0.5)
    expected = encode.encode_chunk(raws, settings)
    chunk = [*raws[:2], RawInput("hangs", "demo", "json", raws[0].text), *raws[2:5]]
    chunk += [RawInput("kills", "demo", "json", raws[1].text), raws[5]]

    monkeypatch.setattr(encode, "HANG_SLACK_S", 1.0)
    monkeypatch.setattr(encode, "real_encode_record", encode.encode_record, raising=False)
    monkeypatch.setattr(encode, "encode_record", _poisoned)
    got = encode.encode_isolated(chunk, settings)

    assert got["id"].to_list() == [raw.id for raw in chunk]
    errors = dict(got.filter(pl.col("error").is_not_null()).select("id", "error").iter_rows())
    assert errors.keys() == {"hangs", "kills"}
    assert "did not finish within 2 s" in errors["hangs"] and "died (signal SIGKILL)" in errors["kills"]
    assert got.filter(~pl.col("id").is_in(["hangs", "kills"])).equals(expected)


def test_the_workers_are_topped_up_before_a_frame_is_handed_over():
    """encode_stream keeps 2 chunks per worker queued while the consumer holds a frame: the reader has taken
    the yielded chunk plus two more before the consumer gets it (so one slow consumer step never leaves a
    worker idle), and never more than 4 chunks per worker ahead of the consumer."""
    import cloud_core.encode as encode
    from cloud_core.prototypes import generate_candidates
    from cloud_core.structures import RawInput, crystal_to_json

    raws = [RawInput(i, "demo", "json", crystal_to_json(c)) for i, c in generate_candidates(max_count=40, seed=5)]
    taken = 0

    def reader():
        nonlocal taken
        for raw in raws:
            taken += 1
            yield raw

    ahead = []
    with encode.encoder_pool(1) as pool:
        for frames, frame in enumerate(encode.encode_stream(reader(), encode.EncodeSettings(), 1, 4, pool=pool), 1):
            assert frame.height == 4
            ahead.append(taken // 4 - frames)  # chunks read but not yet handed over
    assert ahead[0] >= 2  # the frame's chunk was followed by 2 more before it was handed over
    assert max(ahead) <= 4 and ahead[-1] == 0


def test_frames_are_gathered_into_calls_of_at_least_the_asked_rows():
    """On a GPU the pipeline predicts several encoded chunks per call; rows and their order are kept."""
    from cloud_core.pipeline import _gathered

    rows = {i: [f"{i}:{j}" for j in range(n)] for i, n in enumerate((3, 3, 3, 1, 0, 2))}
    frames = [pl.DataFrame({"id": ids}, schema={"id": pl.String}) for ids in rows.values()]
    gathered = list(_gathered(iter(frames), 5))
    assert [f.height for f in gathered] == [6, 6]
    assert pl.concat(gathered).equals(pl.concat(frames))
    assert [f.height for f in _gathered(iter(frames), 1)] == [3, 3, 3, 1, 2]  # the CPU: one call per chunk, as read


def test_shared_encoder_pool_is_one_pool_per_process_and_encodes_as_one_process():
    """shared_encoder_pool: the same pool (the same worker processes) for every call in this process, batch
    after batch, from several threads at once; a forked child gets a pool of its own; and the frames equal
    encoding in one process."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import cloud_core.encode as encode
    from cloud_core.prototypes import generate_candidates
    from cloud_core.structures import RawInput, crystal_to_json

    raws = [RawInput(i, "demo", "json", crystal_to_json(c)) for i, c in generate_candidates(max_count=48, seed=7)]
    settings = encode.EncodeSettings(variant="detailed", identify=True)
    expected = pl.concat(list(encode.encode_stream(raws, settings, workers=1, chunk_size=8)))

    pool = encode.shared_encoder_pool(2)
    workers = {p.pid for p in pool._pool}

    def batch(part: int) -> pl.DataFrame:
        shared = encode.shared_encoder_pool(2)
        assert shared is pool
        return pl.concat(list(encode.encode_stream(raws[part::2], settings, 2, 8, pool=shared)))

    with ThreadPoolExecutor(2) as threads:
        for _ in range(2):
            halves = list(threads.map(batch, (0, 1)))
            assert pl.concat(halves).sort("id").equals(expected.sort("id"))
    assert {p.pid for p in pool._pool} == workers  # no worker was replaced between batches
    assert encode.shared_encoder_pool(3) is not pool

    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # a forked child must not reuse its parent's pool (its workers are not the child's)
        try:
            own = encode.shared_encoder_pool(2)
            ok = own is not pool and {p.pid for p in own._pool}.isdisjoint(workers)
            os.write(write_end, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write_end)
    assert os.read(read_end, 1) == b"1"
    os.waitpid(child, 0)


_ORPHANED_POOL = """
import os, sys, time
import cloud_core.encode as encode
pool = encode.shared_encoder_pool(2)
print(" ".join(str(p.pid) for p in pool._pool), flush=True)
time.sleep(600)
"""


def test_encoder_workers_end_when_their_process_is_killed():
    """A process killed outright runs no exit handler: its shared pool's workers, which live as long as it does,
    must still end (they see their task queue close) rather than wait for tasks for ever, holding the parent's
    stdout open (a Dask nanny stops its worker that way)."""
    import signal
    import time

    parent = subprocess.Popen([sys.executable, "-c", _ORPHANED_POOL], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in parent.stdout.readline().split()]
    assert len(workers) == 2 and all(process_running(pid) for pid in workers)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 15
    while any(process_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(process_running(pid) for pid in workers)

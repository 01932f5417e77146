"""The `screen` flow end to end on real parts: generated candidates, real spglib/moyopy, the shipped model,
a real DuckDB catalog and a real (test) Prefect server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from catalogs.ranking import RankingSpec
from flows.sources import SourceSpec, iter_batches, parse_source


def test_sources_parse_and_batch(tmp_path):
    assert parse_source("demo", 50) == SourceSpec(kind="demo", count=50)
    assert parse_source("mp:Li-Fe-O").mp_query == "Li-Fe-O"
    assert parse_source("a.cif,b/").paths == ["a.cif", "b/"]
    batches = list(iter_batches(SourceSpec(count=45), batch_size=20))
    assert [len(b) for b in batches] == [20, 20, 5]
    assert len({r.id for b in batches for r in b}) == 45  # distinct substitutions
    (tmp_path / "bad.cif").write_text("not a cif")
    (raw,) = next(iter_batches(SourceSpec(kind="files", paths=[str(tmp_path)]), 10))
    assert raw.id == "bad" and raw.fmt == "cif"
    with pytest.raises(ValueError, match="needs at least one path"):
        SourceSpec(kind="files")


def test_screen_flow_stores_ranks_reports_and_caches(tmp_path, prefect_harness):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.screen import screen, screen_progress

    catalog = tmp_path / "screen.duckdb"
    ranking = RankingSpec.parse({"filters": {"ranges": {"formation_energy_per_atom": {"max": 0}}}, "top_k": 8})
    progress: list[tuple[int, int | None]] = []
    with screen_progress(lambda done, total: progress.append((done, total))):
        first = screen(catalog=str(catalog), source=SourceSpec(count=120), ranking=ranking, batch_size=50)
    assert first.counts["candidates"] == 120 and first.counts["batches_written"] == 3
    assert first.counts["appends"] == 1 and first.counts["batches_reused"] == 0  # 3 shards, one catalog append
    assert progress == [(0, 120), (50, 120), (100, 120), (120, 120), (120, 120)]  # start, each batch, the end
    con = duckdb.connect(str(catalog), read_only=True)
    try:
        stored = con.execute(
            "SELECT count(*), count(DISTINCT candidate_id) FROM predictions WHERE run_id = ?", [first.run_id]
        ).fetchall()[0]
        run = con.execute(
            "SELECT status, model_hash, code_version, grid_id FROM runs WHERE run_id = ?", [first.run_id]
        ).fetchall()[0]
        top = con.execute("SELECT count(*) FROM rankings WHERE run_id = ? AND rank <= 8", [first.run_id]).fetchall()
    finally:
        con.close()
    assert stored == (first.counts["predicted"], first.counts["predicted"]) and stored[0] >= 115
    assert run[0] == "completed" and len(run[1]) == 64 and run[2] and run[3]
    assert top[0][0] == 8 and len(first.top) == 8
    assert all(row["formation_energy_per_atom"] <= 0 for row in first.top)
    assert Path(first.report).exists() and Path(first.report).stat().st_size > 100_000

    # the same candidates again: their shards come from the cache beside the catalog, stored under the new run only
    second = screen(catalog=str(catalog), source=SourceSpec(count=120), ranking=ranking, batch_size=50)
    assert second.counts["candidates_new"] == 0 and second.counts["predictions_new"] == first.counts["predicted"]
    assert second.counts["batches_reused"] == 3
    assert second.timings["encode_s"] == first.timings["encode_s"]  # cached shards carry the first timings
    shards = catalog.parent / "screen.duckdb.shards"
    assert not list((shards / "runs").iterdir()) and len(list((shards / "cache").iterdir())) == 3  # runs: removed

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["screen-top", "screen-summary"]))
            )

    import asyncio

    kinds = {(a.key, a.type) for a in asyncio.run(artifacts())}
    assert {("screen-top", "table"), ("screen-summary", "markdown")} <= kinds


def test_flow_parameters_have_ui_descriptions():
    """Every top-level parameter of the flows has a description in the schema the UI builds its form from."""
    from flows.model_flows import evaluate, train
    from flows.screen import screen

    for flow in (screen, train, evaluate):
        properties = flow.parameters.properties
        assert properties and all(p.get("description") for p in properties.values()), flow.name
    assert screen.parameters.properties["batch_size"]["description"] == "Candidates per task."


def test_progress_bar_only_on_a_terminal(monkeypatch):
    from flows.console import progress_bar

    with progress_bar(True, "screening") as bar:  # pytest captures stderr: not a terminal, so no bar
        bar.update(5, 10)
        bar.advance(1)
        assert bar._bar is None
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with progress_bar(True, "screening") as bar:
        bar.update(50, None)
        bar.update(100, 120, "ranking")
        bar.advance(20)
        (task,) = bar._bar.tasks
        assert (task.completed, task.total, task.description) == (120, 120, "ranking")
    with progress_bar(False, "screening") as bar:  # --no-progress
        assert bar._bar is None


@pytest.mark.slow
def test_screen_command_prints_ranked_table(tmp_path):
    """What README's first command runs, in a fresh Prefect home (ephemeral server, no key, no network)."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    cli = [sys.executable, "-m", "flows.cli", "screen", "--catalog", str(tmp_path / "demo.duckdb")]
    done = subprocess.run([*cli, "--count", "200", "--top", "5"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "200 candidates: " in done.stderr and "rank" in done.stdout
    ranked = pl.read_database("SELECT * FROM ranked", duckdb.connect(str(tmp_path / "demo.duckdb"), read_only=True))
    assert ranked.filter(pl.col("rank") <= 5).height == 5
    # a broken spec is one line, before any work starts
    (tmp_path / "bad.yaml").write_text("objectives: [{property: nope, direction: up}]\n")
    bad = subprocess.run([*cli, "--rank", str(tmp_path / "bad.yaml")], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "objectives.0" in bad.stderr
    # no key for the Materials Project: one line that says how to get one
    env.pop("MP_API_KEY", None)
    nokey = subprocess.run([*cli, "--source", "mp:Li-Fe-O"], capture_output=True, text=True, env=env)
    assert nokey.returncode == 1 and "MP_API_KEY" in nokey.stderr and nokey.stderr.count("\n") == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_the_writer_hands_freed_heap_memory_back_to_the_system():
    """What the flow's writer calls after each append: freed blocks of a few MB that glibc keeps in its heap (as
    it does once its mmap threshold has risen past them, the pattern of appends and inference) leave the RSS."""
    script = """
import ctypes
def rss_mb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
from flows.screen import release_free_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
libc.mallopt(-3, 64 << 20)  # M_MMAP_THRESHOLD: 4 MB blocks come from the heap, as after glibc raised it itself
blocks = [libc.malloc(4 << 20) for _ in range(100)]
for block in blocks:
    ctypes.memset(block, 1, 4 << 20)
for block in blocks[:-1]:  # the topmost stays in use, so the heap cannot simply shrink from its end
    libc.free(block)
before = rss_mb()
release_free_memory()
print(before - rss_mb())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout) > 300  # of the 396 MB freed

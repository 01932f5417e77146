"""Load: ten `cloud-screen screen` runs started at once against one catalog (docs/reliability.md, Load).

Half screen the same candidates (seed 0), half their own (seeds 1-5). The catalog's one-writer-at-a-time lock
serialises them; every run completes, no row is lost or duplicated, shared candidates are stored once, and
each run's total wait for the lock is in its `timings` (`lock_wait_s`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import duckdb
import pytest

from tests.test_faults import ROOT, harness_env

RUNS = 10
COUNT = 300


@pytest.mark.slow
def test_ten_screen_runs_at_once_against_one_catalog(tmp_path, prefect_harness):
    catalog = tmp_path / "shared.duckdb"
    env = harness_env(tmp_path)
    seeds = [0] * (RUNS // 2) + list(range(1, RUNS - RUNS // 2 + 1))
    processes = []
    started = time.monotonic()
    for i, seed in enumerate(seeds):
        args = ["screen", "--catalog", str(catalog), "--count", str(COUNT), "--seed", str(seed), "--batch-size", "50"]
        log = (tmp_path / f"run-{i}.log").open("w")
        command = [sys.executable, "-m", "flows.cli", *args, "--no-report", "--top", "3", "--no-progress"]
        processes.append((subprocess.Popen(command, stdout=log, stderr=log, env=env, cwd=ROOT), log))
    walls: dict[int, float] = {}
    while len(walls) < RUNS and time.monotonic() - started < 900:
        for i, (process, log) in enumerate(processes):
            if i not in walls and process.poll() is not None:
                walls[i] = time.monotonic() - started
                log.close()
        time.sleep(0.2)
    for i, (process, _) in enumerate(processes):
        assert process.returncode == 0, (tmp_path / f"run-{i}.log").read_text()[-3000:]

    with duckdb.connect(str(catalog), read_only=True) as con:
        runs = con.execute(
            "SELECT run_id, status, parameters, counts, timings FROM runs ORDER BY started_at"
        ).fetchall()
        stored = dict(con.execute("SELECT run_id, count(*) FROM predictions GROUP BY run_id").fetchall())
        distinct = dict(
            con.execute("SELECT run_id, count(DISTINCT candidate_id) FROM predictions GROUP BY ALL").fetchall()
        )
        failed = dict(con.execute("SELECT run_id, count(*) FROM failures GROUP BY run_id").fetchall())
        candidates = con.execute("SELECT count(*), count(DISTINCT candidate_id) FROM candidates").fetchall()[0]
        in_predictions = con.execute("SELECT count(DISTINCT candidate_id) FROM predictions").fetchall()[0][0]
        per_seed = con.execute(
            "SELECT r.parameters->>'$.source.seed' AS seed, count(DISTINCT list_sort(ids)) FROM runs r JOIN "
            "(SELECT run_id, list(candidate_id) ids FROM predictions GROUP BY run_id) p USING (run_id) GROUP BY seed"
        ).fetchall()
    assert len(runs) == RUNS and {status for _, status, *_ in runs} == {"completed"}
    waits, longest = [], []
    for run_id, _, _, counts, timings in runs:
        counts, timings = json.loads(counts), json.loads(timings)
        assert counts["candidates"] == COUNT
        assert stored[run_id] == distinct[run_id] == counts["candidates"] - failed.get(run_id, 0)  # none lost or twice
        waits.append(timings["lock_wait_s"])
        longest.append(timings["lock_wait_max_s"])
    assert candidates[0] == candidates[1] == in_predictions  # each candidate stored once, shared by the runs
    assert dict(per_seed)["0"] == 1  # the five seed-0 runs predicted the very same candidates
    print(
        f"\n{RUNS} runs of {COUNT} at once: each took {min(walls.values()):.1f}-{max(walls.values()):.1f} s; "
        f"total lock wait per run: {', '.join(f'{w:.1f}' for w in sorted(waits))} s; "
        f"longest single wait {max(longest):.1f} s"
    )
    assert max(longest) < 30  # well inside the screen flow's catalog wait (`catalog_wait`, 600 s by default)

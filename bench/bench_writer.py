"""The screen flow's catalog writer at scale: peak memory per append as the catalog grows to millions of rows.

The writer is the only part of a screen run whose work grows with the run (the source streams, at most a few
batches are in flight), so this drives it alone, far past what the 2-core machine can score in a session:
scored rows as workers write them (Parquet shards of 2,048 rows; structures as the generator's ~1 kB JSON,
predictions synthetic) are appended 122,880 rows at a time, each append timed and its peak RSS sampled every
10 ms. Two writers, each in a fresh child process with torch imported (as the flow process has it):

- `ours`: what `flows/screen.py` runs: `Catalog.append(run, read_shards(paths))` (the shards read ~16,000
  rows at a time into one transaction), then `release_free_memory()` (glibc's malloc_trim);
- `one-frame`: the writer before that change: all of an append's shards concatenated into one frame, no trim.

    python bench/bench_writer.py [--rows 2000000] [--writers ours,one-frame] [--report-every 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARD_ROWS, APPEND_SHARDS = 2_048, 60  # the flow's batch size and the shards of one 122,880-row append


def child(writer: str, rows: int, folder: Path) -> None:
    """Append `rows` rows through `writer`; one JSON line per append on stdout."""
    import numpy as np
    import polars as pl
    import psutil
    import torch  # noqa: F401  (the flow process has it; its allocations shape the heap)

    sys.path.insert(0, str(ROOT / "bench"))
    from bench_catalog import _compositions, synthetic_batch

    from catalogs.catalog import Catalog
    from catalogs.shards import read_shards
    from cloud_core.prototypes import generate_candidates
    from cloud_core.structures import crystal_to_json
    from flows.screen import release_free_memory

    structures = pl.Series([crystal_to_json(c) for _, c in generate_candidates(max_count=20_000, seed=1)])
    pool = _compositions(np.random.default_rng(0))
    catalog = Catalog(folder / "catalog.duckdb")
    run = catalog.start_run(flow="screen", run_id="bench-writer", source="synthetic")
    process, peak = psutil.Process(), [0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.01)

    threading.Thread(target=sample, daemon=True).start()
    append_rows = SHARD_ROWS * APPEND_SHARDS
    for number in range(-(-rows // append_rows)):
        batch = synthetic_batch(pool, 0, number, append_rows)
        pick = np.random.default_rng(number).integers(0, len(structures), append_rows)
        batch = batch.with_columns(structure=structures.gather(pick), structure_format=pl.lit("json"))
        paths = []
        for i in range(APPEND_SHARDS):
            paths.append(folder / f"shard-{number}-{i}.parquet")
            batch.slice(i * SHARD_ROWS, SHARD_ROWS).write_parquet(paths[-1])
        del batch, pick
        base = process.memory_info().rss
        peak[0] = 0
        started = time.perf_counter()
        if writer == "ours":
            catalog.append(run, read_shards(paths))
            release_free_memory()
        else:
            catalog.append(run, pl.concat(list(read_shards(paths, part_rows=append_rows)), how="diagonal_relaxed"))
        seconds = time.perf_counter() - started
        for path in paths:
            path.unlink()
        mb = 2**20
        print(json.dumps({"append": number + 1, "rows": (number + 1) * append_rows, "s": round(seconds, 2),
                          "base_mb": round(base / mb), "peak_mb": round(peak[0] / mb),
                          "after_mb": round(process.memory_info().rss / mb)}), flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--writers", default="ours,one-frame")
    parser.add_argument("--report-every", type=int, default=10, help="print every n-th append (and the last)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.rows, Path(args.folder))
        return
    summary = {"load_average_start": os.getloadavg(), "rows": args.rows}
    for writer in args.writers.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, __file__, "--child", writer, "--rows", str(args.rows), "--folder", tmp]
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
            if done.returncode != 0:
                raise SystemExit(f"{writer} failed: {done.stderr[-3000:]}")
            appends = [json.loads(line) for line in done.stdout.splitlines()]
        for entry in appends:
            if entry["append"] % args.report_every == 0 or entry is appends[-1] or entry["append"] == 1:
                print(json.dumps({"writer": writer, **entry}), flush=True)
        peaks = [a["peak_mb"] for a in appends]
        tenth = max(1, len(peaks) // 10)
        summary[writer] = {
            "appends": len(appends),
            "peak_mb_first_tenth": max(peaks[:tenth]),
            "peak_mb_last_tenth": max(peaks[-tenth:]),
            "peak_mb": max(peaks),
            "append_s_median": sorted(a["s"] for a in appends)[len(appends) // 2],
        }
    summary["load_average_end"] = os.getloadavg()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()

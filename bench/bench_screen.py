"""End to end: generated candidates -> SCOPE -> CLOUD predictions -> DuckDB catalog -> ranking, at growing sizes.

Each size runs the whole command a user runs, `cloud-screen screen --count N` (the built-in generator, in-process
Prefect flow, a fresh catalog), as a child process; its memory is sampled every 0.2 s (RSS of the flow process,
PSS summed over its process tree: the flow process and its encoder workers). Reported per size: wall time,
structures/s, the flow's own timings from the catalog's `runs` table, and the peak memory of the flow process
and of the whole tree. Time should grow linearly and memory stay flat.

Beside it, in the same run, the reference path's parse + symmetry (pymatgen builds each structure from the same
JSON text, SpacegroupAnalyzer finds its symmetry) on the first `--reference` candidates, for the ratio.

    python bench/bench_screen.py [--sizes 10000,100000,400000] [--reference 2000] [--batch-size 2048] [--append-rows N]
                                 [--prototypes all]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil


def sample_memory(pid: int, stop: threading.Event, peaks: dict[str, float]) -> None:
    """Keep the largest memory of process `pid` (RSS) and of its whole tree (MB) in `peaks` until `stop` is set.

    The tree's figure adds proportional set sizes (PSS): forked encoder workers share most of their pages with
    the flow process, and adding their RSS would count those pages once per process."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        try:
            main = root.memory_info().rss
            tree = _pss(root) + sum(_pss(child) for child in root.children(recursive=True))
        except psutil.NoSuchProcess:
            return
        peaks["main_mb"] = max(peaks.get("main_mb", 0.0), main / 2**20)
        peaks["tree_mb"] = max(peaks.get("tree_mb", 0.0), tree / 2**20)
        stop.wait(0.2)


def _pss(process: psutil.Process) -> int:
    try:
        return process.memory_full_info().pss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0


def screen_once(
    exe: str, catalog: Path, count: int, batch_size: int, append_rows: int | None, prototypes: str | None
) -> dict[str, object]:
    """One `cloud-screen screen` run of `count` generated candidates; wall time, memory, the run's timings."""
    command = [exe, "screen", "--catalog", str(catalog), "--count", str(count), "--batch-size", str(batch_size)]
    command += ["--append-rows", str(append_rows)] if append_rows else []
    command += ["--prototypes", prototypes] if prototypes else []
    command += ["--no-report", "--no-progress", "--top", "20"]
    peaks: dict[str, float] = {}
    stop = threading.Event()
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = threading.Thread(target=sample_memory, args=(child.pid, stop, peaks), daemon=True)
    sampler.start()
    _, err = child.communicate()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"screen of {count} failed ({child.returncode}): {err[-2000:]}")
    import duckdb

    with duckdb.connect(str(catalog), read_only=True) as con:
        ((counts, timings),) = con.execute("SELECT counts, timings FROM runs").fetchall()  # one run per catalog
        ((stored,),) = con.execute("SELECT count(*) FROM predictions").fetchall()
    timings = json.loads(timings) if isinstance(timings, str) else timings
    counts = json.loads(counts) if isinstance(counts, str) else counts
    return {
        "candidates": count,
        "predictions_stored": stored,
        "wall_s": round(wall, 1),
        "structures_per_s": round(count / wall, 1),
        "flow_total_s": round(float(timings["total_s"]), 1),
        "structures_per_s_flow": round(count / float(timings["total_s"]), 1),
        "timings": {k: round(float(v), 1) for k, v in timings.items()},
        "failed": counts.get("failed"),
        "peak_main_mb": round(peaks.get("main_mb", 0.0)),
        "peak_tree_mb": round(peaks.get("tree_mb", 0.0)),
        "catalog_mb": round(catalog.stat().st_size / 2**20, 1),
    }


def reference_rate(count: int, prototypes: str | None) -> dict[str, float]:
    """Structures/s of pymatgen (structure from the generator's JSON) + SpacegroupAnalyzer on `count` candidates."""
    import warnings

    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from cloud_core.prototypes import generate_candidates
    from cloud_core.structures import crystal_to_json

    warnings.filterwarnings("ignore")
    names = prototypes.split(",") if prototypes else None
    texts = [crystal_to_json(crystal) for _, crystal in generate_candidates(names, max_count=count, seed=0)]
    started = time.perf_counter()
    for text in texts:
        SpacegroupAnalyzer(Structure.from_str(text, fmt="json")).get_symmetry_dataset()
    elapsed = time.perf_counter() - started
    return {"structures": count, "seconds": round(elapsed, 2), "structures_per_s": round(count / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,400000", help="comma-separated candidate counts")
    parser.add_argument("--reference", type=int, default=2000, help="candidates for the reference path's rate")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--append-rows", type=int, default=None, help="rows per catalog append (default: the flow's)")
    parser.add_argument(
        "--prototypes", default=None, help="the generator's prototypes (`all` adds the opt-in one: over 438,150)"
    )
    args = parser.parse_args()
    exe = shutil.which("cloud-screen") or str(Path(sys.executable).parent / "cloud-screen")
    results: dict[str, object] = {"load_average_start": os.getloadavg(), "cores": os.cpu_count()}
    results["reference"] = reference_rate(args.reference, args.prototypes) if args.reference else None
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            catalog = Path(tmp) / f"screen-{size}.duckdb"
            runs.append(screen_once(exe, catalog, size, args.batch_size, args.append_rows, args.prototypes))
            print(json.dumps(runs[-1]), flush=True)
    results["runs"] = runs
    if results["reference"]:
        reference = results["reference"]["structures_per_s"]
        results["speedup_vs_reference_parse_symmetry"] = [round(r["structures_per_s"] / reference, 2) for r in runs]
    results["load_average_end"] = os.getloadavg()
    print(json.dumps(results))


if __name__ == "__main__":
    main()

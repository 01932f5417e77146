"""Encoding speed: `cloud-screen encode --workers 1` against the reference path, whole commands side by side.

The reference path is what the CLOUD code runs: pymatgen parses each CIF, SpacegroupAnalyzer finds the
symmetry (one process, one core). Both run as fresh processes over the same CIF files, start-up included.
`cloud-screen predict --workers 1` (parse, encode, model, output table) runs over the same files too: the
issue's end-to-end target compares it with the reference path's parse + symmetry alone.

    python bench/bench_encode.py [--n 4000] [--seed 0] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mp37k.parquet"

REFERENCE = """
import sys, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
for path in sorted(Path(sys.argv[1]).glob("*.cif")):
    SpacegroupAnalyzer(Structure.from_file(path)).get_symmetry_dataset()
"""


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all commands, interleaved; medians")
    args = parser.parse_args()
    frame = pl.read_parquet(DATA).sample(args.n, seed=args.seed)
    exe = shutil.which("cloud-screen") or str(Path(sys.executable).parent / "cloud-screen")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cifs"
        folder.mkdir()
        for material_id, cif in frame.select("material_id", "cif").iter_rows():
            (folder / f"{material_id}.cif").write_text(cif)
        common = [str(folder), "--workers", "1", "--no-progress"]
        commands = {
            f"encode_{v}": [exe, "encode", *common, "--out", f"{tmp}/{v}.parquet", "--variant", v]
            for v in ("canonical", "official")
        }
        commands["predict"] = [exe, "predict", *common, "--out", f"{tmp}/predicted.parquet"]
        commands["reference"] = [sys.executable, "-c", REFERENCE, str(folder)]
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, command in commands.items():
                times[name].append(timed(command))
    median = {name: statistics.median(t) for name, t in times.items()}
    reference = median.pop("reference")
    result = {
        "structures": args.n,
        "reference_s": round(reference, 2),
        **{f"{name}_s": round(t, 2) for name, t in median.items()},
        **{f"speedup_{name}": round(reference / t, 2) for name, t in median.items()},
        "all_s": {name: [round(x, 2) for x in t] for name, t in times.items()},
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

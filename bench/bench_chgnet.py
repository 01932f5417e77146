"""Screening speed: CLOUD (ours) against a universal interatomic potential (CHGNet), the same structures, one process.

What a user would run instead of `cloud-screen predict` to screen crystals: the pretrained CHGNet (weights in
its wheel, nothing downloaded) computing an energy for every structure. The same seeded sample of
`../shared/data/mp37k.parquet` (CIF text) goes to both sides, and both are timed from CIF text to predictions:

- ours: what `cloud-screen predict` runs: `cloud_core.encode.encode_table` (gemmi parse, validation, symmetry,
  SCOPE in the variant the shipped model reads, one process) then `cloud_core.pipeline.predict_frame`
  (tokenize, batch, forward, heads, Debye Cv) with `load_bundle("default", "cpu")`;
- CHGNet: pymatgen parses each CIF (`Structure.from_str`), then `CHGNet.predict_structure(structures,
  task="e", batch_size=...)` under `torch.no_grad()`: graph construction (its C converter) and a single-point
  energy per atom on the coordinates as given (no relaxation).

Same device (CPU), same threads (`torch.set_num_threads`, default 2, for both), model loads reported separately,
warm-up excluded. The sample is timed in slices, each slice run by both sides back to back (the order alternating)
so that load from other processes on a shared machine falls on both alike; the totals give structures/s, and the
median of the per-slice ratios is reported beside the ratio of totals. Then `--relax` structures are relaxed
with CHGNet's `StructOptimizer` (FIRE, cell relaxed, fmax 0.1 eV/Å, at most `--relax-steps` steps), counting
model evaluations: once from the Materials Project coordinates (already DFT-relaxed: a lower bound) and once from
the same structures perturbed (lattice scaled by `1 + --strain`, every Cartesian coordinate moved by a normal
`--rattle` Å, seeded), as a stand-in for a candidate whose coordinates were guessed; passes of ours over the
sample just before and after give the ratio under the same load. Last, as whole fresh processes over the same
structures written as CIF files (start-up, imports and model load included): `cloud-screen predict DIR
--workers 1` (before and after the CHGNet script, mean used) and a script doing the CHGNet side.

CHGNet's energy is the total energy per atom (MPtrj-compatible, eV/atom), not a formation energy; ours predicts
the formation energy per atom (and band gap, moduli, Debye temperature). What is compared is speed to a
screening-relevant energy, not the quantities.

    python bench/bench_chgnet.py [--n 1000] [--seed 0] [--relax 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "mp37k.parquet"

# The CHGNet side as a whole fresh process (what a user's screening script would be): argv = folder, threads,
# batch size; prints a JSON line with the structure count and failures.
CHGNET_SCRIPT = """
import json, sys, warnings
from pathlib import Path
import numpy as np
import torch
warnings.filterwarnings("ignore")
torch.set_num_threads(int(sys.argv[2]))
from pymatgen.core import Structure
from chgnet.model import CHGNet
model = CHGNet.load(use_device="cpu", verbose=False)
structures, failed = [], 0
for path in sorted(Path(sys.argv[1]).glob("*.cif")):
    try:
        structures.append(Structure.from_str(path.read_text(), fmt="cif"))
    except Exception:
        failed += 1
with torch.no_grad():
    out = model.predict_structure(structures, task="e", batch_size=int(sys.argv[3]))
out = [out] if isinstance(out, dict) else out
energies = np.array([float(p["e"]) for p in out])
print(json.dumps({"structures": len(energies), "parse_failed": failed,
                  "not_finite": int((~np.isfinite(energies)).sum())}))
"""


def quiet():
    """pymatgen's CIF parser and CHGNet warn about every rounding of occupancies; none of it matters here."""
    warnings.filterwarnings("ignore")


# ----------------------------------------------------------------------------------------------- the two sides


def ours_predict(bundle, settings, frame: pl.DataFrame, device: torch.device) -> pl.DataFrame:
    """CIF text to predictions, as `cloud-screen predict --workers 1` runs it."""
    from cloud_core.encode import encode_table
    from cloud_core.pipeline import predict_frame

    return predict_frame(bundle, encode_table(frame, settings, workers=1), device)


def ours_failures(frame: pl.DataFrame) -> int:
    """Rows with an error or a non-finite prediction."""
    values = frame.select("formation_energy_per_atom", "band_gap", "debye_temperature", "cv_300K").to_numpy()
    return int((frame["error"].is_not_null().to_numpy() | ~np.isfinite(values).all(axis=1)).sum())


def chgnet_predict(model, cifs: list[str], batch_size: int) -> tuple[np.ndarray, int]:
    """CIF text to CHGNet energies per atom (eV/atom; NaN where it failed) and how many failed to parse."""
    from pymatgen.core import Structure

    structures, where, parse_failed = [], [], 0
    for i, cif in enumerate(cifs):
        try:
            structures.append(Structure.from_str(cif, fmt="cif"))
            where.append(i)
        except Exception:
            parse_failed += 1
    energies = np.full(len(cifs), np.nan)
    if not structures:
        return energies, parse_failed
    with torch.no_grad():
        try:
            out = model.predict_structure(structures, task="e", batch_size=batch_size)
            out = [out] if isinstance(out, dict) else out
            energies[where] = [float(p["e"]) for p in out]
        except Exception:  # one bad structure fails its batch: then structure by structure
            for i, structure in zip(where, structures, strict=True):
                try:
                    energies[i] = float(model.predict_structure(structure, task="e")["e"])
                except Exception:
                    continue
    return energies, parse_failed


# ----------------------------------------------------------------------------------------------- relaxation


def perturbed(structure, rng: np.random.Generator, strain: float, rattle: float):
    from pymatgen.core import Lattice, Structure

    lattice = Lattice(structure.lattice.matrix * (1.0 + strain))
    cart = lattice.get_cartesian_coords(structure.frac_coords) + rng.normal(0.0, rattle, (len(structure), 3))
    return Structure(lattice, structure.species, cart, coords_are_cartesian=True)


def relax_all(model, structures: list, fmax: float, steps: int) -> dict:
    """Relax each structure with StructOptimizer; model evaluations (energy + forces + stress) counted."""
    from chgnet.model import StructOptimizer

    with contextlib.redirect_stdout(sys.stderr):  # it prints the device; stdout is for the JSON line
        optimizer = StructOptimizer(model=model, use_device="cpu")
    calculator = optimizer.calculator
    calls = [0]
    calculate = calculator.calculate

    def counted(*args, **kwargs):
        calls[0] += 1
        return calculate(*args, **kwargs)

    calculator.calculate = counted
    rows = []
    for structure in structures:
        calls[0] = 0
        started = time.perf_counter()
        try:
            result = optimizer.relax(structure, fmax=fmax, steps=steps, verbose=False)
            energy = float(result["trajectory"].energies[-1]) / len(structure)
        except Exception:
            energy = float("nan")
        rows.append(
            {
                "seconds": time.perf_counter() - started,
                "evaluations": calls[0],
                "sites": len(structure),
                "energy_per_atom": energy,
            }
        )
    seconds = sum(r["seconds"] for r in rows)
    evaluations = sum(r["evaluations"] for r in rows)
    return {
        "structures": len(rows),
        "seconds": round(seconds, 2),
        "per_structure_s": round(seconds / max(1, len(rows)), 3),
        "structures_per_s": round(len(rows) / seconds, 3) if seconds else None,
        "evaluations": evaluations,
        "evaluations_per_structure": round(evaluations / max(1, len(rows)), 1),
        "evaluations_min_max": [min(r["evaluations"] for r in rows), max(r["evaluations"] for r in rows)]
        if rows
        else None,
        "ms_per_evaluation": round(1000 * seconds / max(1, evaluations), 1),
        "not_finite": int(sum(not np.isfinite(r["energy_per_atom"]) for r in rows)),
        "hit_step_limit": int(sum(r["evaluations"] > steps for r in rows)),
        "mean_sites": round(float(np.mean([r["sites"] for r in rows])), 1) if rows else None,
    }


# ----------------------------------------------------------------------------------------------- main


def run_command(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return time.perf_counter() - started, done.stdout + done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="structures, the same for both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--relax", type=int, default=10, help="structures relaxed with CHGNet (0: none)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    parser.add_argument("--slice", type=int, default=100, help="structures per interleaved slice")
    parser.add_argument("--batch-size", type=int, default=16, help="CHGNet structures per batch (its default)")
    parser.add_argument("--warmup", type=int, default=32, help="structures of the untimed warm-up, each side")
    parser.add_argument("--relax-steps", type=int, default=500, help="StructOptimizer step limit (its default)")
    parser.add_argument("--fmax", type=float, default=0.1, help="StructOptimizer force criterion (its default)")
    parser.add_argument("--strain", type=float, default=0.03, help="perturbed start: lattice scaled by 1 + strain")
    parser.add_argument("--rattle", type=float, default=0.05, help="perturbed start: coordinate noise sigma, Å")
    parser.add_argument("--skip-commands", action="store_true", help="no whole-command (fresh process) runs")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    quiet()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    load_at_start = os.getloadavg()
    started = time.perf_counter()
    from cloud_core.bundle import load_bundle
    from cloud_core.encode import EncodeSettings

    ours_import_s = time.perf_counter() - started
    started = time.perf_counter()
    bundle = load_bundle("default", device)
    ours_load_s = time.perf_counter() - started
    settings = EncodeSettings(variant=bundle.card.get("settings", {}).get("variant", "detailed"))

    started = time.perf_counter()
    import chgnet
    from chgnet.model import CHGNet

    chgnet_import_s = time.perf_counter() - started
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        model = CHGNet.load(use_device="cpu", verbose=False)
    chgnet_load_s = time.perf_counter() - started
    weights = Path(chgnet.__file__).parent / "pretrained"
    quiet()  # chgnet's import resets the warning filters

    frame = pl.read_parquet(DATA, columns=["material_id", "cif"]).sample(args.n, seed=args.seed)
    cifs = frame["cif"].to_list()

    # Warm-up (not timed): both sides on the first structures.
    ours_predict(bundle, settings, frame.head(args.warmup), device)
    chgnet_predict(model, cifs[: args.warmup], args.batch_size)

    ours_s, chgnet_s, ratios, ours_frames, energies, parse_failed = [], [], [], [], [], 0
    cpu_ours = cpu_chgnet = 0.0
    for k, start in enumerate(range(0, args.n, args.slice)):
        part = frame.slice(start, args.slice)
        results = {}
        for side in ("ours", "chgnet") if k % 2 == 0 else ("chgnet", "ours"):
            t0, c0 = time.perf_counter(), time.process_time()
            if side == "ours":
                results[side] = ours_predict(bundle, settings, part, device)
            else:
                results[side] = chgnet_predict(model, part["cif"].to_list(), args.batch_size)
            results[side + "_s"] = time.perf_counter() - t0
            results[side + "_cpu"] = time.process_time() - c0
        ours_s.append(results["ours_s"])
        chgnet_s.append(results["chgnet_s"])
        cpu_ours += results["ours_cpu"]
        cpu_chgnet += results["chgnet_cpu"]
        ratios.append(results["chgnet_s"] / results["ours_s"])
        ours_frames.append(results["ours"])
        energies.append(results["chgnet"][0])
        parse_failed += results["chgnet"][1]
        print(
            f"slice {k + 1}: ours {results['ours_s']:.2f} s, CHGNet {results['chgnet_s']:.2f} s, "
            f"load {os.getloadavg()[0]:.2f}",
            file=sys.stderr,
            flush=True,
        )
    ours_all = pl.concat(ours_frames)
    chgnet_energies = np.concatenate(energies)

    # Ours over the whole sample in one call (as predict runs a chunk), for comparison with the slices.
    t0 = time.perf_counter()
    whole = ours_predict(bundle, settings, frame, device)
    ours_whole_s = time.perf_counter() - t0
    assert ours_failures(whole) == ours_failures(ours_all)

    nsites = np.array([n for n in ours_all["nsites"].to_list() if n is not None])
    result = {
        "command": "python bench/bench_chgnet.py " + " ".join(sys.argv[1:]),
        "machine": platform.node(),
        "structures": args.n,
        "seed": args.seed,
        "mean_sites": round(float(nsites.mean()), 1),
        "max_sites": int(nsites.max()),
        "threads": args.threads,
        "torch": torch.__version__,
        "chgnet": chgnet.__version__,
        "chgnet_model": model.version,
        "chgnet_weights_in_wheel": sorted(p.name for p in weights.glob("*/*.pth.tar")),
        "chgnet_batch_size": args.batch_size,
        "ours_variant": settings.variant,
        "ours_import_s": round(ours_import_s, 2),
        "ours_load_s": round(ours_load_s, 3),
        "chgnet_import_s": round(chgnet_import_s, 2),
        "chgnet_load_s": round(chgnet_load_s, 3),
        "ours_s": round(sum(ours_s), 2),
        "chgnet_s": round(sum(chgnet_s), 2),
        "ours_per_s": round(args.n / sum(ours_s), 1),
        "chgnet_per_s": round(args.n / sum(chgnet_s), 2),
        "ratio": round(sum(chgnet_s) / sum(ours_s), 1),
        "ratio_median_slice": round(statistics.median(ratios), 1),
        "ratio_slices_min_max": [round(min(ratios), 1), round(max(ratios), 1)],
        "ratio_cpu_time": round(cpu_chgnet / cpu_ours, 1),
        "slices_s": [[round(a, 2), round(b, 2)] for a, b in zip(ours_s, chgnet_s, strict=True)],
        "ours_whole_s": round(ours_whole_s, 2),
        "ours_whole_per_s": round(args.n / ours_whole_s, 1),
        "ours_failed": ours_failures(ours_all),
        "ours_errors": sorted(set(ours_all["error"].drop_nulls().to_list()))[:5],
        "chgnet_failed": int((~np.isfinite(chgnet_energies)).sum()),
        "chgnet_parse_failed": parse_failed,
        "chgnet_energy_per_atom_range": [
            round(float(np.nanmin(chgnet_energies)), 3),
            round(float(np.nanmax(chgnet_energies)), 3),
        ],
    }

    if args.relax:
        # Bracketed by passes of ours over the whole sample, so that the ratio compares the relaxation with ours
        # under the same load; a CHGNet single point on the same structures gives the cost of a relaxation in
        # single points.
        from pymatgen.core import Structure

        rng = np.random.default_rng(args.seed)
        start_structures = [Structure.from_str(c, fmt="cif") for c in cifs[: args.relax]]
        shaken = [perturbed(s, rng, args.strain, args.rattle) for s in start_structures]
        t0 = time.perf_counter()
        chgnet_predict(model, cifs[: args.relax], args.batch_size)
        single_point_s = (time.perf_counter() - t0) / args.relax
        result["relax_single_point_s"] = round(single_point_s, 4)
        result["relax_from_mp"] = relax_all(model, start_structures, args.fmax, args.relax_steps)
        result["relax_from_perturbed"] = relax_all(model, shaken, args.fmax, args.relax_steps)
        t0 = time.perf_counter()
        ours_predict(bundle, settings, frame, device)
        ours_after_s = time.perf_counter() - t0
        ours_bracket_per_s = 2 * args.n / (ours_whole_s + ours_after_s)
        result["relax_ours_per_s"] = round(ours_bracket_per_s, 1)
        for key in ("relax_from_mp", "relax_from_perturbed"):
            relax = result[key]
            # Screening with relax + energy per structure: how many times ours' time per structure, and how many
            # single points on the same structures.
            relax["ratio_vs_ours"] = round(relax["per_structure_s"] * ours_bracket_per_s)
            relax["single_points"] = round(relax["per_structure_s"] / single_point_s, 1)

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    if not args.skip_commands:
        # Ours runs before and after the CHGNet script (which takes far longer), and their mean is compared.
        exe = shutil.which("cloud-screen") or str(Path(sys.executable).parent / "cloud-screen")
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "cifs"
            folder.mkdir()
            for material_id, cif in frame.select("material_id", "cif").iter_rows():
                (folder / f"{material_id}.cif").write_text(cif)
            out = Path(tmp) / "predictions.parquet"
            predict = [exe, "predict", str(folder), "--out", str(out), "--workers", "1"]
            script = [sys.executable, "-c", CHGNET_SCRIPT, str(folder), str(args.threads), str(args.batch_size)]
            ours_before, _ = run_command(predict, env)
            chgnet_command_s, output = run_command(script, env)
            ours_after, _ = run_command(predict, env)
            predicted = pl.read_parquet(out)
            assert predicted.height == args.n
            counts = json.loads(output.strip().splitlines()[-1])
            ours_command_s = (ours_before + ours_after) / 2
            result["ours_command_s"] = [round(ours_before, 2), round(ours_after, 2)]
            result["ours_command_per_s"] = round(args.n / ours_command_s, 1)
            result["ours_command_failed"] = ours_failures(predicted)
            result["chgnet_command_s"] = round(chgnet_command_s, 2)
            result["chgnet_command_per_s"] = round(args.n / chgnet_command_s, 2)
            result["chgnet_command_failed"] = counts["parse_failed"] + counts["not_finite"]
            result["ratio_command"] = round(chgnet_command_s / ours_command_s, 1)

    load = os.getloadavg()
    result["load_at_start"] = round(load_at_start[0], 2)
    result["load_at_end"] = [round(x, 2) for x in load]
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""GPU throughput of the shipped model: inference alone, encoding alone, and the two overlapped end to end.

Three measurements, each against the issue's targets for one H100/H200 with 16 cores:
- `infer`: `predict_strings` (tokenize, length-sorted batches, bf16 forward, heads, Debye Cv; what `predict`
  runs after encoding) on N detailed SCOPE strings of real materials, for a grid of batch sizes and
  MIN_BATCH_TOKENS, 3 timed passes each (median), CUDA synchronized around each pass. Target 200,000 /s.
  Tokenization alone (CPU) is timed on the same strings, since it is the part the GPU cannot speed up.
- `encode`: the encoder pool alone (`encode_stream`, W workers) on N pre-parsed structures (crystal JSON,
  what the screen flow hands its workers): the rate the end-to-end run cannot exceed.
- `e2e`: `cloud_core.pipeline.predict_raw` (the `predict` command's pipeline: encoder pool started first, model
  loaded beside it, frames predicted on the GPU and written to Parquet as they come) on the same structures,
  as a fresh child process per size, so each run pays the command's own start-up. Two sizes; the marginal rate
  (difference of rows over difference of wall time) leaves the start-up out. Target 20,000 /s; the GPU is not
  the bottleneck when the end-to-end rate is the encode-only rate.

Inputs come from `--prepare` (run where `../shared/data` is; no network needed): mp37k's CIFs parsed once,
written as crystal JSON with their official and detailed SCOPE strings, so the GPU machine needs neither the
CIF parser's time nor the shared data.

    python bench/bench_gpu.py --prepare .gpu/inputs.parquet
    python bench/bench_gpu.py --inputs .gpu/inputs.parquet [--n 262144] [--sizes 50000,300000] [--workers 15]
                              [--batch-sizes 1024,4096,16384] [--min-tokens 8192,32768,131072] [--json out.json]
                              [--candidates]

`--candidates` runs `e2e` and `encode` on the screen's generated candidates instead (made on the spot, no
inputs needed): prototypes with elements substituted, whose symmetry searches the encoder's cache shares.
mp37k structures are all distinct geometries (repeats get a shifted origin), the encoder's worst case.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cloud_core.encode import EncodeSettings, encode_stream, encode_table  # noqa: E402
from cloud_core.structures import RawInput, crystal_to_json, parse_raw  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def prepare(out: Path, workers: int) -> None:
    """mp37k -> (id, official, detailed, crystal JSON); rows that fail to parse or encode are left out."""
    frame = pl.read_parquet(DATA / "mp37k.parquet", columns=["material_id", "cif"])
    scopes = {
        v: encode_table(frame, EncodeSettings(variant=v), workers=workers).select("id", pl.col("scope").alias(v))
        for v in ("official", "detailed")
    }
    crystals = []
    for ident, cif in zip(frame["material_id"], frame["cif"], strict=True):
        record = parse_raw(RawInput(ident, "mp37k", "cif", cif))
        crystals.append(crystal_to_json(record.crystal) if record.crystal is not None else None)
    table = frame.select(pl.col("material_id").alias("id"), pl.Series("crystal", crystals, dtype=pl.String))
    table = table.join(scopes["official"], on="id").join(scopes["detailed"], on="id").drop_nulls()
    table.write_parquet(out, compression="zstd", compression_level=19)
    print(f"wrote {out}: {table.height} materials, {out.stat().st_size / 2**20:.1f} MiB")


def tiled(values: list[str], n: int, seed: int) -> list[str]:
    """`values` repeated and shuffled up to n items (seeded)."""
    reps = -(-n // len(values))
    order = np.random.default_rng(seed).permutation(len(values) * reps)[:n]
    return [values[i % len(values)] for i in order]


def raw_inputs(crystals: list[str], n: int) -> list[RawInput]:
    """n structures from `crystals`, repeated as needed, each repeat with its origin shifted: no two inputs
    share a geometry, so the encoder's cache of recent symmetry searches (which serves candidates generated
    from one prototype) never answers here and every structure costs a full search."""
    raws = []
    for i in range(n):
        repeat, index = divmod(i, len(crystals))
        text = crystals[index] if not repeat else shifted_origin(crystals[index], repeat)
        raws.append(RawInput(f"s{i}", "bench", "json", text))
    return raws


def candidate_inputs(n: int) -> list[RawInput]:
    """n candidates of the screen's built-in generator as crystal JSON (what the screen flow hands its encoder
    workers): prototypes with elements substituted, so geometries repeat and the encoder's search cache serves
    most of them, as it does in a screen."""
    from cloud_core.prototypes import generate_candidates

    return [RawInput(ident, "generated", "json", crystal_to_json(c)) for ident, c in generate_candidates(max_count=n)]


def shifted_origin(crystal_json: str, repeat: int) -> str:
    """The same crystal with every fractional coordinate shifted by a vector that differs per repeat."""
    data = json.loads(crystal_json)
    shift = [(repeat * step) % 1.0 for step in (0.1234567, 0.2718282, 0.3141593)]
    for site in data["sites"]:
        site["abc"] = [round((x + s) % 1.0, 10) for x, s in zip(site["abc"], shift, strict=True)]
    return json.dumps(data)


# ----------------------------------------------------------------------------------------------- infer


def bench_infer(
    strings: list[str], batch_sizes: list[int], min_tokens: list[int], passes: int, device_name: str
) -> list[dict]:
    import torch

    from cloud_core.bundle import load_bundle
    from cloud_core.inference import predict_strings
    from cloud_core.tokenizer import token_table

    device = torch.device(device_name)
    model = load_bundle("default", device).model
    rows = []
    started = time.perf_counter()
    token_table(strings, max_length=model.config.max_length)
    rows.append(
        {"what": "token_table alone (CPU, one thread)", "n": len(strings), "seconds": time.perf_counter() - started}
    )
    for batch_size in batch_sizes:
        for tokens in min_tokens:
            predict_strings(model, strings[:20000], device, batch_size, tokens)  # warm-up (kernels, allocator)
            times = []
            for _ in range(passes):
                synchronize(device)
                started = time.perf_counter()
                frame = predict_strings(model, strings, device, batch_size, tokens)
                synchronize(device)
                times.append(time.perf_counter() - started)
            errors = int(frame["error"].is_not_null().sum())
            row = {"what": "predict_strings", "batch_size": batch_size, "min_batch_tokens": tokens}
            row |= {"n": len(strings), "times": times, "seconds": statistics.median(times), "errors": errors}
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
            rows.append(row)
            print(f"infer batch {batch_size} min tokens {tokens}: {len(strings) / row['seconds']:,.0f} /s", flush=True)
    rows += bench_fresh_shapes(model, strings, device, batch_sizes[-1], min_tokens[-1])
    return rows


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA), so a host clock times it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_fresh_shapes(model, strings: list[str], device, batch_size: int, tokens: int) -> list[dict]:
    """predict_strings on slices of 8,192 strings never seen before, so every batch has a new shape (as in a
    pipeline): with the attention kernels inference picks (CUDA_ATTENTION), and with torch's own choice."""

    import cloud_core.inference as inference

    chosen, rows, slices = inference.CUDA_ATTENTION, [], 8
    for k, (name, kernels) in enumerate((("torch's own choice", None), ("inference.CUDA_ATTENTION", chosen))):
        inference.CUDA_ATTENTION = kernels
        part = strings[k * slices * 8192 : (k + 1) * slices * 8192]  # disjoint from the other setting's
        synchronize(device)
        started = time.perf_counter()
        for i in range(0, len(part), 8192):
            inference.predict_strings(model, part[i : i + 8192], device, batch_size, tokens)
        synchronize(device)
        seconds = time.perf_counter() - started
        rows.append(
            {
                "what": f"predict_strings on fresh 8,192-string slices, attention: {name}",
                "n": len(part),
                "seconds": seconds,
            }
        )
        print(f"fresh shapes, {name}: {len(part) / seconds:,.0f} /s", flush=True)
    inference.CUDA_ATTENTION = chosen
    return rows


# ----------------------------------------------------------------------------------------------- encode, e2e


def bench_encode(raws: list[RawInput], workers: int, variant: str) -> dict:
    n = len(raws)
    started = time.perf_counter()
    rows = errors = 0
    for frame in encode_stream(raws, EncodeSettings(variant=variant), workers, chunk_size=512):  # type: ignore[arg-type]
        rows += frame.height
        errors += int(frame["error"].is_not_null().sum())
    seconds = time.perf_counter() - started
    print(f"encode {n} with {workers} workers: {n / seconds:,.0f} /s", flush=True)
    what = f"encode_stream, {workers} workers, {raws[0].source} structures"
    return {"what": what, "n": rows, "errors": errors, "seconds": seconds}


def e2e_child(inputs: Path, n: int, workers: int, out: Path, device: str, candidates: bool) -> None:
    """One end-to-end run (this is the child process): prints a JSON line with rows and wall time."""
    started = time.perf_counter()
    import cloud_core.pipeline as pipeline
    from cloud_core.bundle import read_card
    from cloud_core.pipeline import predict_raw
    from cloud_core.tables import TableWriter

    if candidates:
        raws = candidate_inputs(n)
    else:
        raws = raw_inputs(pl.read_parquet(inputs, columns=["crystal"])["crystal"].to_list(), n)
    ready = time.perf_counter()
    _, card = read_card("default")
    settings = EncodeSettings(variant=card.get("settings", {}).get("variant", "detailed"))
    # Where this process's time goes: predicting (model) and writing, timed around the pipeline's own calls.
    spent = {"predict": 0.0, "write": 0.0, "first_prediction": None}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            spent["first_prediction"] = spent["first_prediction"] or began - ready
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - began

        return wrapper

    pipeline.predict_frame = timed("predict", pipeline.predict_frame)
    TableWriter.write = timed("write", TableWriter.write)
    counts = predict_raw(raws, out, "default", device, settings, workers=workers)
    done = time.perf_counter()
    written = pl.scan_parquet(out).select(pl.len()).collect().item()
    print(json.dumps({**counts, "written": written, "seconds": done - ready, "setup": ready - started, **spent}))


def bench_e2e(inputs: Path, sizes: list[int], workers: int, device: str, candidates: bool) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            out = Path(tmp) / f"e2e_{n}.parquet"
            command = [sys.executable, __file__, "--e2e-child", str(n), "--inputs", str(inputs)]
            command += ["--workers", str(workers), "--out", str(out), "--device", device]
            command += ["--candidates"] if candidates else []
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise SystemExit(f"end-to-end run of {n} failed:\n{result.stderr[-3000:]}")
            row = json.loads(result.stdout.strip().splitlines()[-1])
            what = f"predict_raw end to end, {workers} workers, {'generated' if candidates else 'mp37k'} structures"
            rows.append({"what": what, "n": n, **row})
            print(f"e2e {n}: {n / row['seconds']:,.0f} /s (start-up included)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepare", type=Path, help="write the inputs table here and stop")
    parser.add_argument("--inputs", type=Path, default=ROOT / ".gpu" / "inputs.parquet")
    parser.add_argument("--n", type=int, default=262_144, help="strings for the inference grid")
    parser.add_argument("--sizes", default="50000,300000", help="end-to-end sizes")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--batch-sizes", default="1024,4096,16384")
    parser.add_argument("--min-tokens", default="8192,32768,131072")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: infer, encode, e2e")
    parser.add_argument("--device", default="cuda", help="cpu for a dry run of the script")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--candidates", action="store_true", help="end to end and encode-only on generated candidates, not mp37k"
    )
    parser.add_argument("--e2e-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.prepare, max(1, (os.cpu_count() or 2)))
        return
    if args.e2e_child:
        e2e_child(args.inputs, args.e2e_child, args.workers, args.out, args.device, args.candidates)
        return
    skip = set(filter(None, args.skip.split(",")))
    sizes = [int(x) for x in args.sizes.split(",")]
    needs_inputs = "infer" not in skip or not args.candidates  # generated candidates are made on the spot
    table = pl.read_parquet(args.inputs) if needs_inputs else None
    results: dict[str, object] = {"command": "python bench/bench_gpu.py " + " ".join(sys.argv[1:])}
    results["machine"] = f"{platform.node()}, {os.cpu_count()} CPUs"
    if "e2e" not in skip:  # first: the encoder pool forks before this process has touched CUDA
        results["e2e"] = bench_e2e(args.inputs, sizes, args.workers, args.device, args.candidates)
    if "encode" not in skip:
        raws = candidate_inputs(sizes[-1]) if args.candidates else raw_inputs(table["crystal"].to_list(), sizes[-1])
        results["encode"] = bench_encode(raws, args.workers, "detailed")
    if "infer" not in skip:
        strings = tiled(table["detailed"].to_list(), args.n, seed=0)
        batch_sizes = [int(x) for x in args.batch_sizes.split(",")]
        min_tokens = [int(x) for x in args.min_tokens.split(",")]
        results["infer"] = bench_infer(strings, batch_sizes, min_tokens, args.passes, args.device)
        import torch

        gpu = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
        results["machine"] += f", {gpu}, torch {torch.__version__}"
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))

    print()
    print(f"{results['machine']}; command: {results['command']}")
    print()
    print("| measurement | structures | seconds | structures/s | notes |")
    print("|---|---|---|---|---|")
    for row in results.get("e2e", []):
        note = (
            f"{row['errors']} error rows, {row['written']} written; "
            f"first prediction at {row['first_prediction']:.1f} s,"
            f" main process predicting {row['predict']:.1f} s, writing {row['write']:.1f} s"
        )
        print(f"| {row['what']} | {row['n']:,} | {row['seconds']:.2f} | {row['n'] / row['seconds']:,.0f} | {note} |")
    e2e = results.get("e2e", [])
    if len(e2e) >= 2:
        a, b = e2e[0], e2e[-1]
        marginal = (b["n"] - a["n"]) / (b["seconds"] - a["seconds"])
        print(
            f"| end to end, marginal ({a['n']:,} -> {b['n']:,}) | {b['n'] - a['n']:,} | "
            f"{b['seconds'] - a['seconds']:.2f} | {marginal:,.0f} | start-up left out |"
        )
    if "encode" in results:
        row = results["encode"]
        print(
            f"| {row['what']} | {row['n']:,} | {row['seconds']:.2f} | {row['n'] / row['seconds']:,.0f} | "
            f"{row['errors']} error rows |"
        )
    for row in results.get("infer", []):
        if row["what"] != "predict_strings":
            print(f"| {row['what']} | {row['n']:,} | {row['seconds']:.2f} | {row['n'] / row['seconds']:,.0f} | |")
            continue
        times = " / ".join(f"{t:.2f}" for t in row["times"])
        print(
            f"| predict_strings, batch {row['batch_size']}, min batch tokens {row['min_batch_tokens']} | "
            f"{row['n']:,} | {row['seconds']:.2f} ({times}) | {row['n'] / row['seconds']:,.0f} | "
            f"{row['errors']} errors, peak {row['peak_gib']:.1f} GiB |"
        )


if __name__ == "__main__":
    main()

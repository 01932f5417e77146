"""Files in, predictions out: read -> encode (worker processes) -> infer (one model) -> write, overlapped.

The encoder pool starts before torch is imported, so its workers stay small and begin encoding while this
process imports torch and loads the model; from then on the workers encode the next chunks while this process
predicts the last one (a producer/consumer pair whose queue is the pool's bounded set of chunks in flight,
see encode.encode_stream), and every chunk is written as soon as it is predicted, so memory stays flat for any
number of inputs. Once the model is loaded, this process also encodes the next chunk itself whenever the
workers have none ready for it, so a model faster than the encoders lends them its core instead of idling. On
the CPU the model gets the cores the encoders leave free (at least one thread): more threads than cores make
both sides wait on each other.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from cloud_core.encode import IDENTITY_SCHEMA, EncodeSettings, default_workers, encode_stream, encoder_pool
from cloud_core.structures import RawInput, expand_inputs, iter_raw_inputs
from cloud_core.tables import TableWriter

if TYPE_CHECKING:
    import torch

    from cloud_core.bundle import Bundle

KEEP_FROM_ENCODING = ("id", "source", "scope", "spacegroup", "formula", "nsites")
PREDICT_CHUNK = 512  # structures per encoder task: small enough that the last chunk's inference is a short tail
# On a GPU, encoded chunks are predicted together up to this many rows: one call's fixed host cost (tokenizer
# set-up, synchronisations) is a few milliseconds, the model's time per 512 rows well under one.
GPU_PREDICT_ROWS = 8192


def predict_frame(
    bundle: Bundle, encoded: pl.DataFrame, device: torch.device, batch_size: int | None = None
) -> pl.DataFrame:
    """Predictions for one encoded chunk; an encoding error is kept, an inference error is added."""
    from cloud_core.inference import predict_strings

    predicted = predict_strings(bundle.model, encoded["scope"].to_list(), device, batch_size)
    error = pl.coalesce(encoded["error"], predicted["error"]).alias("error")
    keep = [*KEEP_FROM_ENCODING, *(c for c in IDENTITY_SCHEMA if c in encoded.columns)]
    return pl.concat([encoded.select(keep), predicted.drop("error")], how="horizontal").with_columns(error)


def empty_encoded() -> pl.DataFrame:
    """An encoded chunk with no rows (so an empty input still gets a table with every column)."""
    schema = {c: pl.String for c in (*KEEP_FROM_ENCODING, "error")}
    return pl.DataFrame(schema=schema).cast({"spacegroup": pl.Int16, "nsites": pl.Int32})


def load_for_inference(model: str | Path, device: str, encoder_workers: int) -> tuple[Bundle, torch.device]:
    """Import torch, load the bundle on `device` ("auto", "cpu", "cuda") and size the CPU thread pool."""
    import torch

    from cloud_core.bundle import load_bundle
    from cloud_core.device import pick_device

    torch_device = pick_device(device)
    bundle = load_bundle(model, torch_device)
    # The cores the encoders leave free; on CUDA too, where torch's host threads (one per core by default)
    # would otherwise wait on cores the encoders hold.
    torch.set_num_threads(max(1, default_workers() - encoder_workers))
    return bundle, torch_device


def predict_files(
    inputs: list[Path],
    out: Path,
    model: str | Path,
    device: str,
    settings: EncodeSettings,
    workers: int = 1,
    batch_size: int | None = None,
    progress: bool = False,
    chunk_size: int = PREDICT_CHUNK,
) -> dict[str, int]:
    """Predict every structure in `inputs` (files, folders, tables) into the table `out`; returns row counts.

    `workers` encoder processes (at least one, so encoding always overlaps inference) run beside this process,
    which loads the model and predicts. A model that cannot be loaded raises (BundleError; RuntimeError for a
    missing CUDA device) before an output file is started.
    """
    raws = iter_raw_inputs(expand_inputs(inputs))
    return predict_raw(raws, out, model, device, settings, workers, batch_size, progress, chunk_size)


def predict_raw(
    raws: Iterable[RawInput],
    out: Path,
    model: str | Path,
    device: str,
    settings: EncodeSettings,
    workers: int = 1,
    batch_size: int | None = None,
    progress: bool = False,
    chunk_size: int = PREDICT_CHUNK,
) -> dict[str, int]:
    """`predict_files` for structures already read (or made) in this process: the pipeline itself."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    raws = iter(raws)
    workers = max(1, workers)
    counts = {"rows": 0, "predicted": 0, "errors": 0}
    bar = Progress(
        TextColumn("predicting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        disable=not progress,
    )
    task = bar.add_task("predict", total=None)
    # The workers' first chunks are read before torch's import starts: the import holds the interpreter lock
    # for long stretches, and reading the files beside it took ~0.4 s instead of ~0.03 s.
    first = list(itertools.islice(raws, 2 * workers * chunk_size))
    with bar, encoder_pool(workers) as pool, ThreadPoolExecutor(1, thread_name_prefix="model-loader") as loader:
        loading = loader.submit(load_for_inference, model, device, workers)  # torch imports while workers encode
        # Once the model is loaded, this process encodes too whenever the workers have no chunk ready for it.
        frames = encode_stream(
            itertools.chain(first, raws),
            settings,
            workers,
            chunk_size,
            lambda n: bar.advance(task, n),
            pool=pool,
            help_while_waiting=loading.done,
        )
        # While the model loads, take the chunks as the workers finish them, so they go on encoding (the stream
        # keeps at most 2 per worker in flight) instead of waiting for a consumer that is still importing torch.
        ready: list[pl.DataFrame] = []
        for encoded in frames:
            ready.append(encoded)
            if loading.done():
                break
        bundle, torch_device = loading.result()
        rows_per_call = GPU_PREDICT_ROWS if torch_device.type == "cuda" else 1
        with TableWriter(out) as writer:
            for encoded in _gathered(itertools.chain(ready, frames), rows_per_call):
                frame = predict_frame(bundle, encoded, torch_device, batch_size)
                writer.write(frame)
                counts["rows"] += frame.height
                counts["errors"] += int(frame["error"].is_not_null().sum())
            if writer.rows == 0:
                writer.write(predict_frame(bundle, empty_encoded(), torch_device))
    counts["predicted"] = counts["rows"] - counts["errors"]
    return counts


def _gathered(frames: Iterable[pl.DataFrame], rows: int) -> Iterator[pl.DataFrame]:
    """Consecutive frames concatenated until each has at least `rows` rows (the last may have fewer)."""
    held: list[pl.DataFrame] = []
    count = 0
    for frame in frames:
        held.append(frame)
        count += frame.height
        if count >= rows:
            yield pl.concat(held)
            held, count = [], 0
    if held:
        yield pl.concat(held)

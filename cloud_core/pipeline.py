"""Files in, predictions out: read -> encode (process pool) -> infer (one model) -> write, chunk by chunk.

The encoder pool keeps a bounded number of chunks in flight (encode.encode_stream), and every chunk is
predicted and written as soon as it is encoded, so memory stays flat for any number of inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import polars as pl
import torch

from cloud_core.bundle import Bundle
from cloud_core.encode import IDENTITY_SCHEMA, EncodeSettings, encode_stream
from cloud_core.inference import predict_strings
from cloud_core.structures import expand_inputs, iter_raw_inputs
from cloud_core.tables import TableWriter

KEEP_FROM_ENCODING = ("id", "source", "scope", "spacegroup", "formula", "nsites")


def predict_frame(bundle: Bundle, encoded: pl.DataFrame, device: torch.device, batch_size: int = 2048) -> pl.DataFrame:
    """Predictions for one encoded chunk; an encoding error is kept, an inference error is added."""
    predicted = predict_strings(bundle.model, encoded["scope"].to_list(), device, batch_size)
    error = pl.coalesce(encoded["error"], predicted["error"]).alias("error")
    keep = [*KEEP_FROM_ENCODING, *(c for c in IDENTITY_SCHEMA if c in encoded.columns)]
    return pl.concat([encoded.select(keep), predicted.drop("error")], how="horizontal").with_columns(error)


def predict_stream(
    inputs: Iterable[Path],
    bundle: Bundle,
    settings: EncodeSettings,
    device: torch.device,
    workers: int = 1,
    batch_size: int = 2048,
    chunk_size: int = 1024,
    on_chunk: Callable[[int], None] | None = None,
):
    """Yield prediction frames chunk by chunk, in input order."""
    for encoded in encode_stream(iter_raw_inputs(inputs), settings, workers, chunk_size=chunk_size, on_chunk=on_chunk):
        yield predict_frame(bundle, encoded, device, batch_size)


def predict_files(
    inputs: list[Path],
    out: Path,
    bundle: Bundle,
    settings: EncodeSettings,
    device: torch.device,
    workers: int = 1,
    batch_size: int = 2048,
    progress: bool = False,
) -> dict[str, int]:
    """Predict every structure in `inputs` into the table `out`; returns row counts."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    paths = expand_inputs(inputs)
    counts = {"rows": 0, "predicted": 0, "errors": 0}
    bar = Progress(
        TextColumn("predicting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
        disable=not progress,
    )
    with bar, TableWriter(out) as writer:
        task = bar.add_task("predict", total=None)
        for frame in predict_stream(
            paths, bundle, settings, device, workers, batch_size, on_chunk=lambda n: bar.advance(task, n)
        ):
            writer.write(frame)
            counts["rows"] += frame.height
            counts["errors"] += int(frame["error"].is_not_null().sum())
        if writer.rows == 0:
            writer.write(
                predict_frame(
                    bundle,
                    pl.DataFrame(schema={c: pl.String for c in (*KEEP_FROM_ENCODING, "error")}).cast(
                        {"spacegroup": pl.Int16, "nsites": pl.Int32}
                    ),
                    device,
                )
            )
    counts["predicted"] = counts["rows"] - counts["errors"]
    return counts

"""Batched inference: SCOPE strings in, property predictions with uncertainties out (a polars table).

Strings are sorted by token count and cut into batches, so each batch pads only to its own longest string;
the output keeps the input order. A string the model cannot take (tokens outside the vocabulary, longer
than the model's context) gets a null prediction and an `error` reason; the batch goes on.

Out of memory (CUDA's `torch.OutOfMemoryError`, or an allocator's "out of memory" error): the batch is halved
and tried again, and the rest of the call keeps the smaller size (strings come longest last); a string that does
not fit even alone is an error row. Outputs that are NaN or inf are error rows too, never predictions.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import polars as pl
import torch

from cloud_core.debye import debye_cv
from cloud_core.model import CloudModel
from cloud_core.tokenizer import tokenize

CV_REPORT_TEMPERATURE = 300.0  # K: `cv_300K`, the heat capacity every prediction table carries

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's (or another device's) out-of-memory error, whatever class this torch version raises."""
    kinds = tuple(k for k in (getattr(torch, "OutOfMemoryError", None), torch.cuda.OutOfMemoryError) if k)
    text = str(exc).lower()
    return isinstance(exc, kinds) or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
    )


def prediction_columns(model: CloudModel) -> list[str]:
    columns = []
    for name in model.config.properties:
        columns += [name, f"{name}_std"]
    return [*columns, "debye_temperature", "cv_300K", "cv_300K_std"]


@torch.no_grad()
def predict_strings(
    model: CloudModel, scopes: Sequence[str | None], device: torch.device | str = "cpu", batch_size: int = 2048
) -> pl.DataFrame:
    """One row per input string: prediction columns (physical units) and `error` (null when predicted)."""
    device = torch.device(device)
    model.eval()
    n = len(scopes)
    present = np.array([s is not None for s in scopes], dtype=bool)
    strings = [s if s is not None else "" for s in scopes]
    tokens = tokenize(strings, max_length=model.config.max_length)
    errors: list[str | None] = [None] * n
    for i in np.flatnonzero(~present):
        errors[i] = "no SCOPE string"
    for i in tokens.too_long:
        errors[i] = f"SCOPE string longer than the model's {model.config.max_length} tokens"
    bad_vocab = tokens.unknown > 0
    for i in np.flatnonzero(bad_vocab):
        errors[i] = f"SCOPE string has {tokens.unknown[i]} token(s) outside the model vocabulary"

    usable = present[tokens.rows] & ~bad_vocab[tokens.rows]  # batch rows worth running
    order = np.flatnonzero(usable)
    order = order[np.argsort(tokens.mask[order].sum(1).numpy(), kind="stable")]
    columns = prediction_columns(model)
    out = {c: np.full(n, np.nan, dtype=np.float64) for c in columns}
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    start, size = 0, max(1, batch_size)
    while start < len(order):
        rows = order[start : start + size]  # rows of `tokens`
        out_of_memory = False
        try:
            batch = tokens.select(torch.from_numpy(rows), device)
            with autocast:
                result = model.predict(batch)
            theta = result["debye_temperature"].float()
            result["cv_300K"] = debye_cv(theta, torch.tensor(CV_REPORT_TEMPERATURE, device=theta.device))
            result["cv_300K_std"] = result["cv_305K_std"]
            values = {c: result[c].float().cpu().numpy() for c in columns}
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            out_of_memory = True
        if out_of_memory:  # here, not in the except block, whose traceback still holds the batch's tensors
            batch = result = theta = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if len(rows) == 1:
                length = int(tokens.mask[rows[0]].sum())
                errors[int(tokens.rows[rows[0]])] = f"out of memory on a batch of one ({length} tokens) on {device}"
                start += 1
                continue
            size = max(1, len(rows) // 2)
            log.warning("out of memory on %s with a batch of %d strings; halving it to %d", device, len(rows), size)
            continue
        for c in columns:
            out[c][batch.rows] = values[c]
        start += len(rows)
    finite = np.all([np.isfinite(out[c]) for c in columns], axis=0)
    for i in np.flatnonzero(~finite):  # never stored as a valid prediction
        errors[i] = errors[i] or "model output not finite"
        for c in columns:
            out[c][i] = np.nan
    frame = pl.DataFrame({c: pl.Series(c, v, dtype=pl.Float64).fill_nan(None) for c, v in out.items()})
    return frame.with_columns(pl.Series("error", errors, dtype=pl.String))

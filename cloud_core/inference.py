"""Batched inference: SCOPE strings in, property predictions with uncertainties out (a polars table).

Strings are sorted by the length the model sees (tokens after the generator code is pooled into one) and cut
into batches that pad only to their own longest string: a batch takes at most `batch_size` strings and grows
only while its padded tokens stay within `PADDING_SLACK` of its real ones (or below `min_batch_tokens`), so
the long tail of SCOPE strings (detailed strings of large cells run to ~190 tokens, the median is ~20) gets
batches of its own instead of widening a batch of short strings. The output keeps the input order. A string
the model cannot take (tokens outside the vocabulary, longer than the model's context) gets a null prediction
and an `error` reason; the batch goes on.

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
from cloud_core.model import CloudModel, slot_layout
from cloud_core.tokenizer import Batch, tokenize

CV_REPORT_TEMPERATURE = 300.0  # K: `cv_300K`, the heat capacity every prediction table carries
# Batching (see the module docstring): padded tokens at most (1 + PADDING_SLACK) x real tokens, unless the batch
# is below MIN_BATCH_TOKENS padded tokens (where per-batch overhead matters more than padding). Measured on the
# 2-core CPU (bench/bench_inference.py); the CUDA value keeps the common strings in one large batch and is a
# guess until measured on a GPU.
PADDING_SLACK = 0.1
MIN_BATCH_TOKENS = {"cpu": 2048, "cuda": 32768}

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


def model_lengths(model: CloudModel, tokens: Batch) -> np.ndarray:
    """Sequence length each row of `tokens` has inside the model, after the pooling of the generator code (and
    with `pool_pairs`, of Wyckoff:element and element:amount pairs) into single slots (see model.slot_layout)."""
    return slot_layout(tokens, model.config)[2].numpy()


def batch_end(lengths: np.ndarray, start: int, size: int, min_tokens: int) -> int:
    """End of the batch of sorted (ascending) `lengths` that begins at `start`: at most `size` rows, at least
    one; it grows while its padded tokens stay within PADDING_SLACK of its real tokens or below `min_tokens`."""
    part = lengths[start : start + size]
    padded = part * np.arange(1, len(part) + 1)  # tokens of the batch [start, start + k], padded to its last
    fits = (padded <= min_tokens) | (padded <= (1 + PADDING_SLACK) * np.cumsum(part))
    return start + max(1, int(np.argmin(fits)) if not fits.all() else len(part))


@torch.no_grad()
def predict_strings(
    model: CloudModel,
    scopes: Sequence[str | None],
    device: torch.device | str = "cpu",
    batch_size: int = 2048,
    min_batch_tokens: int | None = None,
) -> pl.DataFrame:
    """One row per input string: prediction columns (physical units) and `error` (null when predicted).

    `min_batch_tokens`: below this many padded tokens a batch grows whatever its padding (default by device
    type, MIN_BATCH_TOKENS); `batch_size` caps the strings per batch."""
    device = torch.device(device)
    if min_batch_tokens is None:
        min_batch_tokens = MIN_BATCH_TOKENS.get(device.type, MIN_BATCH_TOKENS["cuda"])
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
    lengths = model_lengths(model, tokens)
    order = order[np.argsort(lengths[order], kind="stable")]
    lengths = lengths[order]  # aligned with `order`, ascending
    columns = prediction_columns(model)
    out = {c: np.full(n, np.nan, dtype=np.float64) for c in columns}
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    )
    start, size = 0, max(1, batch_size)
    while start < len(order):
        rows = order[start : batch_end(lengths, start, size, min_batch_tokens)]  # rows of `tokens`
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

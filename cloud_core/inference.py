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
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import torch

from cloud_core.debye import debye_cv
from cloud_core.model import CloudModel, slot_counts, slot_layout
from cloud_core.tokenizer import Batch, TokenTable, token_table

CV_REPORT_TEMPERATURE = 300.0  # K: `cv_300K`, the heat capacity every prediction table carries
# Batching (see the module docstring): padded tokens at most (1 + PADDING_SLACK) x real tokens, unless the batch
# is below MIN_BATCH_TOKENS padded tokens (where per-batch overhead matters more than padding). Measured on the
# 2-core CPU (bench/bench_inference.py); the CUDA value keeps the common strings in one large batch and is a
# guess until measured on a GPU.
PADDING_SLACK = 0.1
MIN_BATCH_TOKENS = {"cpu": 2048, "cuda": 32768}
# Strings tokenized (and sorted by length) together, and the threads that tokenize pieces ahead of the model:
# a piece of 65,536 detailed strings takes ~0.4 s on one core, so the model of a GPU outruns one thread.
TOKENIZE_CHUNK = 65536
TOKENIZE_THREADS = 4

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
    type, MIN_BATCH_TOKENS); `batch_size` caps the strings per batch.

    Strings are tokenized in pieces of TOKENIZE_CHUNK by a few threads (polars and numpy release the
    interpreter lock) while the model runs on the pieces before; each piece is sorted by length and cut into
    batches on its own. On CUDA, a batch's outputs are fetched only once the next batch is queued, so the GPU
    is not left waiting while the host builds a batch."""
    device = torch.device(device)
    if min_batch_tokens is None:
        min_batch_tokens = MIN_BATCH_TOKENS.get(device.type, MIN_BATCH_TOKENS["cuda"])
    model.eval()
    n = len(scopes)
    strings = pl.Series("scope", scopes, dtype=pl.String)
    run = _Run(model, device, batch_size, min_batch_tokens, n)
    run.errors = ["no SCOPE string" if s is None else None for s in scopes]
    pieces = [(lo, min(lo + TOKENIZE_CHUNK, n)) for lo in range(0, n, TOKENIZE_CHUNK)]
    with ThreadPoolExecutor(max(1, min(len(pieces), TOKENIZE_THREADS)), thread_name_prefix="tokenize") as pool:
        tables = pool.map(lambda piece: token_table(strings[piece[0] : piece[1]], model.config.max_length), pieces)
        for (lo, _), table in zip(pieces, tables, strict=True):
            run.piece(lo, table)
    run.fetch()
    out, errors = run.out, run.errors
    finite = np.isfinite(out).all(axis=1)
    for i in np.flatnonzero(~finite):  # never stored as a valid prediction
        errors[i] = errors[i] or "model output not finite"
        out[i] = np.nan
    columns = run.columns
    frame = pl.DataFrame({c: pl.Series(c, out[:, j], dtype=pl.Float64).fill_nan(None) for j, c in enumerate(columns)})
    return frame.with_columns(pl.Series("error", errors, dtype=pl.String))


class _Run:
    """The state of one predict_strings call: outputs, errors, the batch size (halved on out-of-memory) and the
    batches whose outputs are still on the device."""

    def __init__(self, model: CloudModel, device: torch.device, batch_size: int, min_batch_tokens: int, n: int):
        self.model, self.device, self.size, self.min_batch_tokens = model, device, max(1, batch_size), min_batch_tokens
        self.columns = prediction_columns(model)
        self.out = np.full((n, len(self.columns)), np.nan, dtype=np.float64)
        self.errors: list[str | None] = [None] * n
        self.pending: list[tuple[np.ndarray, torch.Tensor]] = []  # (input rows, outputs on the device)
        self.in_flight = 1 if device.type == "cuda" else 0  # batches left running while the next one is built
        cuda = device.type == "cuda"
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def fetch(self, keep: int = 0) -> None:
        """Copy the outputs of all but the newest `keep` pending batches into `out`."""
        while len(self.pending) > keep:
            rows, values = self.pending.pop(0)
            self.out[rows] = values.cpu().numpy()

    def piece(self, lo: int, table: TokenTable) -> None:
        """Predict the strings of one tokenized piece (input rows lo, lo + 1, ...)."""
        max_length = self.model.config.max_length
        for i in table.too_long:
            self.errors[lo + i] = self.errors[lo + i] or f"SCOPE string longer than the model's {max_length} tokens"
        for i in np.flatnonzero(table.unknown):
            reason = f"SCOPE string has {table.unknown[i]} token(s) outside the model vocabulary"
            self.errors[lo + i] = self.errors[lo + i] or reason
        usable = np.flatnonzero([self.errors[lo + i] is None for i in table.rows])
        lengths = slot_counts(table, self.model.config)[usable]
        order = usable[np.argsort(lengths, kind="stable")]  # rows of `table`, ascending length
        lengths = np.sort(lengths, kind="stable")
        start = 0
        while start < len(order):
            rows = order[start : batch_end(lengths, start, self.size, self.min_batch_tokens)]
            start += self.batch(lo, table, rows)

    def batch(self, lo: int, table: TokenTable, rows: np.ndarray) -> int:
        """Run rows `rows` of `table`; returns how many rows are done (0: out of memory, retry smaller)."""
        try:
            self.launch(lo, table, rows)
            self.fetch(keep=self.in_flight)
            return len(rows)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        # Out of memory. Here, after the except block: its traceback held launch()'s frame and tensors.
        self.fetch()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(rows) == 1:
            where = lo + int(table.rows[rows[0]])
            self.errors[where] = f"out of memory on a batch of one ({table.lengths[rows[0]]} tokens) on {self.device}"
            return 1
        self.size = max(1, len(rows) // 2)
        log.warning(
            "out of memory on %s with %d strings in a batch; halving it to %d", self.device, len(rows), self.size
        )
        return 0

    def launch(self, lo: int, table: TokenTable, rows: np.ndarray) -> None:
        """Queue the model on rows `rows` of `table`; the outputs join `pending`."""
        batch = table.padded(rows, self.device)
        with self.autocast:
            result = self.model.predict(batch)
        theta = result["debye_temperature"].float()
        result["cv_300K"] = debye_cv(theta, torch.tensor(CV_REPORT_TEMPERATURE, device=theta.device))
        result["cv_300K_std"] = result["cv_305K_std"]
        self.pending.append((lo + batch.rows, torch.stack([result[c].float() for c in self.columns], 1)))

"""Batched inference: SCOPE strings in, property predictions with uncertainties out (a polars table).

Strings are sorted by the length the model sees (tokens after the generator code is pooled into one; within
pieces of TOKENIZE_CHUNK strings, prepared on threads ahead of the model) and cut into batches that pad only
to their own longest string: a batch takes at most `batch_size` strings and grows only while its padded
tokens stay within `PADDING_SLACK` of its real ones (or below `min_batch_tokens`), so the long tail of SCOPE
strings (detailed strings of large cells run to ~190 tokens, the median is ~20) gets batches of its own
instead of widening a batch of short strings. The output keeps the input order. A string the model cannot take
(tokens outside the vocabulary, longer than the model's context) gets a null prediction and an `error` reason;
the batch goes on.

Out of memory (CUDA's `torch.OutOfMemoryError`, or an allocator's "out of memory" error): the batch is halved
and tried again, and the rest of the call keeps the smaller size (strings come longest last); a string that does
not fit even alone is an error row. Outputs that are NaN or inf are error rows too, never predictions.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from cloud_core.debye import debye_cv
from cloud_core.model import CloudModel, slot_counts, slot_layout
from cloud_core.tokenizer import Batch, TokenTable, token_table

CV_REPORT_TEMPERATURE = 300.0  # K: `cv_300K`, the heat capacity every prediction table carries
# Batching (see the module docstring): padded tokens at most (1 + PADDING_SLACK) x real tokens, unless the batch
# is below MIN_BATCH_TOKENS padded tokens (where per-batch overhead matters more than padding). Measured on the
# 2-core CPU (bench/bench_inference.py) and on an H200 (bench/bench_gpu.py).
PADDING_SLACK = 0.1
MIN_BATCH_TOKENS = {"cpu": 2048, "cuda": 524288}
# Strings per batch at most, unless the caller says: on the H200, 16,384 strings with 524,288 minimum tokens
# ran 203,000-209,000 strings/s against 151,000-168,000 for 2,048-4,096 with 32,768-131,072 (bench/bench_gpu.py).
DEFAULT_BATCH_SIZE = {"cpu": 2048, "cuda": 16384}
# Attention kernels on CUDA: cuDNN's (which torch may pick) builds a plan for every new (batch, length) shape,
# and inference batches rarely repeat a shape; the flash and memory-efficient kernels need no plan (H200, fresh
# shapes: 10,238 strings/s with torch's choice, 62,972 with these; bench/bench_gpu.py).
CUDA_ATTENTION: tuple[str, ...] | None = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")
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
    batch_size: int | None = None,
    min_batch_tokens: int | None = None,
) -> pl.DataFrame:
    """One row per input string: prediction columns (physical units) and `error` (null when predicted).

    `min_batch_tokens`: below this many padded tokens a batch grows whatever its padding (default by device
    type, MIN_BATCH_TOKENS); `batch_size` caps the strings per batch (default by device type, DEFAULT_BATCH_SIZE).

    The host work runs ahead of the model on a few threads (polars and numpy release the interpreter lock):
    pieces of TOKENIZE_CHUNK strings are tokenized, sorted by length, cut into batches and padded there, at
    most one piece per thread ahead; this thread only launches the model. On CUDA, a batch's outputs are
    fetched once the next batch is queued, so the GPU is not left waiting for the host."""
    device = torch.device(device)
    if min_batch_tokens is None:
        min_batch_tokens = MIN_BATCH_TOKENS.get(device.type, MIN_BATCH_TOKENS["cuda"])
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE.get(device.type, DEFAULT_BATCH_SIZE["cuda"])
    model.eval()
    n = len(scopes)
    strings = pl.Series("scope", scopes, dtype=pl.String)
    run = _Run(model, device, batch_size, min_batch_tokens, scopes)
    present = strings.is_not_null().to_numpy()
    pieces = iter(range(0, n, TOKENIZE_CHUNK))
    threads = max(1, min(-(-n // TOKENIZE_CHUNK), TOKENIZE_THREADS))
    with ThreadPoolExecutor(threads, thread_name_prefix="predict-prepare") as pool:

        def submit(lo: int) -> Future:
            hi = min(lo + TOKENIZE_CHUNK, n)
            return pool.submit(run.prepare, lo, strings[lo:hi], present[lo:hi])

        ahead = deque(submit(lo) for lo in itertools.islice(pieces, threads + 1))
        while ahead:
            piece = ahead.popleft().result()
            if (lo := next(pieces, None)) is not None:
                ahead.append(submit(lo))
            run.piece(piece)
    run.fetch()
    out, errors = run.out, run.errors
    finite = np.isfinite(out).all(axis=1)
    for i in np.flatnonzero(~finite):  # never stored as a valid prediction
        errors[i] = errors[i] or "model output not finite"
        out[i] = np.nan
    columns = run.columns
    frame = pl.DataFrame({c: pl.Series(c, out[:, j], dtype=pl.Float64).fill_nan(None) for j, c in enumerate(columns)})
    return frame.with_columns(pl.Series("error", errors, dtype=pl.String))


@dataclass
class _Piece:
    """TOKENIZE_CHUNK strings made ready for the model: input rows lo, lo + 1, ... ."""

    lo: int
    table: TokenTable
    usable: np.ndarray  # rows of `table` to predict, ascending length
    lengths: np.ndarray  # their lengths inside the model
    size: int  # the batch size the batches below were cut with
    batches: list[tuple[np.ndarray, Batch]]  # (rows of `table`, padded on the host) covering `usable` in order


class _Run:
    """The state of one predict_strings call: outputs, errors, the batch size (halved on out-of-memory) and the
    batches whose outputs are still on the device."""

    def __init__(
        self, model: CloudModel, device: torch.device, batch_size: int, min_batch_tokens: int, scopes: Sequence
    ):
        self.model, self.device, self.size, self.min_batch_tokens = model, device, max(1, batch_size), min_batch_tokens
        self.columns = prediction_columns(model)
        self.out = np.full((len(scopes), len(self.columns)), np.nan, dtype=np.float64)
        self.errors: list[str | None] = ["no SCOPE string" if s is None else None for s in scopes]
        self.pending: list[tuple[np.ndarray, torch.Tensor]] = []  # (input rows, outputs on the device)
        cuda = device.type == "cuda"
        self.in_flight = 1 if cuda else 0  # batches left running while the next one is built
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
        self.attention = contextlib.nullcontext
        if cuda and CUDA_ATTENTION:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            self.attention = functools.partial(sdpa_kernel, [getattr(SDPBackend, name) for name in CUDA_ATTENTION])

    def prepare(self, lo: int, strings: pl.Series, present: np.ndarray) -> _Piece:
        """Tokenize, sort and cut one piece into padded host batches (runs on a preparing thread)."""
        table = token_table(strings, self.model.config.max_length)
        fine = present[table.rows] & (table.unknown[table.rows] == 0)
        usable = np.flatnonzero(fine)
        lengths = slot_counts(table, self.model.config)[usable]
        order = np.argsort(lengths, kind="stable")
        usable, lengths = usable[order], lengths[order]
        size, batches = self.size, []
        pin = self.device.type == "cuda"
        for start, stop in self.cuts(lengths, size):
            rows = usable[start:stop]
            batches.append((rows, table.padded(rows, "cpu", pin=pin)))
        return _Piece(lo, table, usable, lengths, size, batches)

    def cuts(self, lengths: np.ndarray, size: int) -> Iterator[tuple[int, int]]:
        start = 0
        while start < len(lengths):
            stop = batch_end(lengths, start, size, self.min_batch_tokens)
            yield start, stop
            start = stop

    def fetch(self, keep: int = 0) -> None:
        """Copy the outputs of all but the newest `keep` pending batches into `out`."""
        while len(self.pending) > keep:
            rows, values = self.pending.pop(0)
            self.out[rows] = values.cpu().numpy()

    def piece(self, piece: _Piece) -> None:
        """Record the piece's refusals and predict the rest."""
        lo, table = piece.lo, piece.table
        max_length = self.model.config.max_length
        for i in table.too_long:
            self.errors[lo + i] = self.errors[lo + i] or f"SCOPE string longer than the model's {max_length} tokens"
        for i in np.flatnonzero(table.unknown):
            reason = f"SCOPE string has {table.unknown[i]} token(s) outside the model vocabulary"
            self.errors[lo + i] = self.errors[lo + i] or reason
        done = 0  # positions of piece.usable predicted (or refused) so far
        for rows, batch in piece.batches:
            if self.size < piece.size:  # an out-of-memory error shrank the batches: cut the rest here
                break
            if not self.run(lo, table, rows, batch):
                break
            done += len(rows)
        while done < len(piece.usable):  # after an out-of-memory error: smaller batches, cut and padded here
            stop = batch_end(piece.lengths, done, self.size, self.min_batch_tokens)
            rows = piece.usable[done:stop]
            if self.run(lo, table, rows, table.padded(rows, "cpu")):
                done = stop
            elif len(rows) == 1:
                where = lo + int(table.rows[rows[0]])
                length = int(table.lengths[rows[0]])
                self.errors[where] = f"out of memory on a batch of one ({length} tokens) on {self.device}"
                done = stop

    def run(self, lo: int, table: TokenTable, rows: np.ndarray, batch: Batch) -> bool:
        """Run one host batch; False on out-of-memory (the batch size is then halved, down to one)."""
        try:
            self.launch(lo, batch)
            self.fetch(keep=self.in_flight)
            return True
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        # Out of memory. Here, after the except block: its traceback held launch()'s frame and tensors.
        self.fetch()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(rows) > 1:
            self.size = max(1, len(rows) // 2)
            log.warning(
                "out of memory on %s with %d strings in a batch; halving it to %d", self.device, len(rows), self.size
            )
        return False

    def launch(self, lo: int, host: Batch) -> None:
        """Queue the model on a host batch; its outputs join `pending`."""
        batch = host.to(self.device)
        with self.autocast, self.attention():
            result = self.model.predict(batch)
        theta = result["debye_temperature"].float()
        result["cv_300K"] = debye_cv(theta, torch.tensor(CV_REPORT_TEMPERATURE, device=theta.device))
        result["cv_300K_std"] = result["cv_305K_std"]
        self.pending.append((lo + host.rows, torch.stack([result[c].float() for c in self.columns], 1)))

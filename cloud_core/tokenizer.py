"""A closed-vocabulary tokenizer for SCOPE strings, vectorised over batches with polars.

A SCOPE string is split on whitespace; detailed-variant tokens `4a:Na` and mixed occupants `Ba+Sr` are split
further into `4a Na` and `Ba + Sr`. Every token belongs to one segment: 0 for the generator code (and
[CLS]), 1 for the Wyckoff part, 2 for the composition; `|` starts the next segment. Generator characters get
their own namespace (`g:O` is the generator letter O, `O` is oxygen), because the reference WordPiece
vocabulary conflates them.

The vocabulary is closed and built from the code's own tables, so it is the same on every machine:
special tokens, `|`, `+`, the generator characters of all 230 space groups, every Wyckoff symbol
(multiplicity + letter) of every group, the 118 elements, and the amounts 0.0, 0.01, ..., 1.0 as the
encoder renders them. Its SHA-256 (`vocabulary_hash`) is stored in every model bundle; a bundle made
with another vocabulary is refused.

Unknown-token policy: a token outside the vocabulary becomes [UNK] and is counted per string
(`Batch.unknown`); callers decide (prediction refuses such strings with a reason, pre-training keeps them).
Strings longer than `max_length` tokens (with [CLS]) are never truncated silently: they are reported in
`Batch.too_long` and left out of the batch tensors.

Amounts are also kept as numbers (`Batch.values`, the amount's value on its token, 0 elsewhere), so a model
can embed the fraction numerically as well as by token.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import polars as pl
import torch

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[MASK]")
PAD, UNK, CLS, MASK = range(4)
SEPARATOR = "|"
MIXED = "+"
MIXED_ID = len(SPECIALS) + 1  # the vocabulary starts with the specials, then SEPARATOR, then MIXED
N_SEGMENTS = 3


@cache
def element_tokens() -> tuple[str, ...]:
    """The 118 element symbols, by atomic number."""
    import gemmi

    return tuple(gemmi.Element(z).name for z in range(1, 119))


@cache
def amount_tokens() -> tuple[str, ...]:
    """The amounts 0.0, 0.01, ..., 1.0 as the encoder renders them."""
    from cloud_core.scope import format_amount

    return tuple(dict.fromkeys(format_amount(k / 100) for k in range(101)))


@cache
def vocabulary() -> tuple[str, ...]:
    """Every token, in id order. Built from the code's tables, never from data."""
    from cloud_core import wyckoff_tables
    from cloud_core.scope import generator_codes

    generator_chars = sorted({ch for code in generator_codes().values() for ch in code})
    wyckoff = sorted(
        {
            f"{wyckoff_tables.multiplicity(n, letter)}{letter}"
            for n in range(1, 231)
            for letter in wyckoff_tables.letters(n)
        },
        key=lambda s: (int(s[:-1]), s[-1].lower(), s[-1]),
    )
    return (
        *SPECIALS,
        SEPARATOR,
        MIXED,
        *(f"g:{ch}" for ch in generator_chars),
        *wyckoff,
        *element_tokens(),
        *amount_tokens(),
    )


def _contiguous(ids: list[int]) -> tuple[int, int]:
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    return ids[0], len(ids)


@cache
def generator_id_range() -> tuple[int, int]:
    """(first id, count) of the generator-character tokens, which are contiguous in the vocabulary."""
    return _contiguous([i for i, token in enumerate(vocabulary()) if token.startswith("g:")])


@cache
def element_id_range() -> tuple[int, int]:
    """(first id, count) of the 118 element tokens, contiguous in the vocabulary."""
    return _contiguous([_token_ids()[token] for token in element_tokens()])


@cache
def amount_id_range() -> tuple[int, int]:
    """(first id, count) of the amount tokens 0.0 ... 1.0, contiguous (the end of the vocabulary)."""
    return _contiguous([_token_ids()[token] for token in amount_tokens()])


@cache
def vocabulary_hash() -> str:
    return hashlib.sha256(json.dumps(vocabulary()).encode()).hexdigest()


@cache
def _token_ids() -> dict[str, int]:
    return {token: i for i, token in enumerate(vocabulary())}


@dataclass
class Batch:
    """Padded token tensors for the strings that fit; index lists for those that did not."""

    ids: torch.Tensor  # (B, L) int64 token ids, PAD = 0
    segments: torch.Tensor  # (B, L) int64 segment of each token
    values: torch.Tensor  # (B, L) float32 amount value on composition-amount tokens, else 0
    mask: torch.Tensor  # (B, L) bool, True on real tokens
    rows: np.ndarray  # (B,) index into the input strings of each batch row
    # Set by tokenize() only (a selection of rows leaves them None):
    unknown: np.ndarray | None  # (N,) number of [UNK] tokens per input string
    too_long: np.ndarray | None  # indices of input strings longer than max_length (not in the batch)

    def __len__(self) -> int:
        return self.ids.shape[0]

    def select(self, index: torch.Tensor, device: torch.device | str = "cpu") -> Batch:
        """Rows `index` (a CPU tensor), trimmed to their longest member and moved to `device`.

        For CUDA the rows are gathered into page-locked memory, so the copies run asynchronously and the host
        goes on to the next batch while they travel."""
        width = int(self.mask[index].sum(1).max())
        pin = torch.device(device).type == "cuda"
        tensors = (
            (t[index, :width].pin_memory() if pin else t[index, :width]).to(device, non_blocking=True)
            for t in (self.ids, self.segments, self.values, self.mask)
        )
        return Batch(*tensors, self.rows[index.numpy()], None, None)


def tokenize(strings: Sequence[str] | pl.Series, max_length: int = 256) -> Batch:
    """Tokenize a batch of SCOPE strings into padded tensors (padded to the longest string in the batch)."""
    series = pl.Series("scope", strings, dtype=pl.String).fill_null("")
    n = len(series)
    vocab = _token_ids()
    tokens = (
        pl.DataFrame({"scope": series})
        .with_row_index("row")
        .select(
            "row",
            pl.col("scope").str.replace_all(":", " ").str.replace_all(r"\+", " + ").str.extract_all(r"\S+").alias("t"),
        )
        .explode("t")
        .drop_nulls("t")
        .with_columns(
            position=pl.int_range(pl.len()).over("row") + 1,  # 0 is [CLS]
            segment=(pl.col("t") == SEPARATOR).cum_sum().over("row").clip(upper_bound=N_SEGMENTS - 1),
        )
        .with_columns(
            key=pl.when((pl.col("segment") == 0) & (pl.col("t") != SEPARATOR))
            .then(pl.lit("g:") + pl.col("t"))
            .otherwise(pl.col("t"))
        )
        .with_columns(
            id=pl.col("key").replace_strict(vocab, default=UNK, return_dtype=pl.Int64),
            value=pl.when(pl.col("segment") == 2).then(pl.col("t").cast(pl.Float32, strict=False)).otherwise(0.0),
        )
    )
    lengths = np.zeros(n, dtype=np.int64)
    per_row = tokens.group_by("row").agg(pl.len(), (pl.col("id") == UNK).sum().alias("unk"))
    rows_with_tokens = per_row["row"].to_numpy()
    lengths[rows_with_tokens] = per_row["len"].to_numpy()
    unknown = np.zeros(n, dtype=np.int64)
    unknown[rows_with_tokens] = per_row["unk"].to_numpy()
    lengths += 1  # [CLS]
    too_long = np.flatnonzero(lengths > max_length)
    keep = np.flatnonzero(lengths <= max_length)
    slot = np.full(n, -1, dtype=np.int64)
    slot[keep] = np.arange(len(keep))
    width = int(lengths[keep].max()) if len(keep) else 1

    ids = np.zeros((len(keep), width), dtype=np.int64)
    segments = np.zeros((len(keep), width), dtype=np.int64)
    values = np.zeros((len(keep), width), dtype=np.float32)
    ids[:, 0] = CLS
    row = tokens["row"].to_numpy().astype(np.int64)
    fits = slot[row] >= 0
    r, p = slot[row][fits], tokens["position"].to_numpy()[fits]
    ids[r, p] = tokens["id"].to_numpy()[fits]
    segments[r, p] = tokens["segment"].to_numpy()[fits]
    values[r, p] = tokens["value"].fill_null(0.0).to_numpy()[fits]
    mask = np.arange(width)[None, :] < lengths[keep][:, None]
    return Batch(
        torch.from_numpy(ids),
        torch.from_numpy(segments),
        torch.from_numpy(values),
        torch.from_numpy(mask),
        keep,
        unknown,
        too_long,
    )


def decode(ids: Sequence[int]) -> list[str]:
    """Token strings for ids (PAD dropped); for debugging and tests."""
    vocab = vocabulary()
    return [vocab[i] for i in ids if i != PAD]

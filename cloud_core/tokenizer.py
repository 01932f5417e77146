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

    def to(self, device: torch.device | str) -> Batch:
        """This batch on `device` (itself when already there); copies from page-locked memory are asynchronous."""
        if self.ids.device == torch.device(device):
            return self
        tensors = (t.to(device, non_blocking=True) for t in (self.ids, self.segments, self.values, self.mask))
        return Batch(*tensors, self.rows, self.unknown, self.too_long)

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


# Unicode's White_Space characters but the space itself: what else the regex `\s` (polars') matches.
UNICODE_WHITESPACE = [
    *"\t\n\x0b\x0c\r\x85\xa0\u1680",
    *(chr(c) for c in range(0x2000, 0x200B)),
    *"\u2028\u2029\u202f\u205f\u3000",
]


@cache
def _vocabulary_enum() -> pl.Enum:
    """The vocabulary as a polars Enum: a token's physical code is its id."""
    return pl.Enum(vocabulary())


@cache
def _generator_enum() -> pl.Enum:
    """The generator characters (without their `g:`), in id order: code + generator_id_range()[0] is the id."""
    return pl.Enum([token[2:] for token in vocabulary() if token.startswith("g:")])


def _lookup(tokens: pl.Expr, enum: pl.Enum, missing: int = UNK) -> pl.Expr:
    """Each token's code in `enum` as Int16, `missing` for a token outside it (a cast to an Enum hashes only its
    few hundred categories, ~0.6x the time of replace_strict with a dict)."""
    return tokens.cast(enum, strict=False).to_physical().cast(pl.Int16).fill_null(missing)


@dataclass
class TokenTable:
    """Tokens of the strings that fit, unpadded: one flat array per field, row i at offsets[i]:offsets[i + 1].

    What batches are cut from: each batch is padded only to its own longest row (`padded`), so a few long
    strings never widen the whole table (detailed strings run from ~10 to ~190 tokens)."""

    ids: np.ndarray  # (T,) int16 token ids, [CLS] first in every row
    segments: np.ndarray  # (T,) int8
    values: np.ndarray  # (T,) float32 amount value on composition-amount tokens, else 0
    offsets: np.ndarray  # (B + 1,) int64
    rows: np.ndarray  # (B,) index into the input strings of each row
    unknown: np.ndarray  # (N,) number of [UNK] tokens per input string
    too_long: np.ndarray  # indices of input strings longer than max_length (not in the table)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> np.ndarray:
        """(B,) tokens per row, [CLS] included."""
        return np.diff(self.offsets)

    def padded(self, index: np.ndarray | None = None, device: torch.device | str = "cpu", pin: bool = False) -> Batch:
        """Rows `index` (all when None) as a Batch padded to their longest row, on `device`. `pin`: in page-locked
        host memory, so that a later `Batch.to("cuda")` copies asynchronously."""
        index = np.arange(len(self.rows)) if index is None else np.asarray(index, dtype=np.int64)
        lengths = self.lengths[index]
        b, width = len(index), int(lengths.max()) if len(index) else 1
        row_of = np.repeat(np.arange(b), lengths)  # (t,) batch row of each token
        position = np.arange(len(row_of)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        source = np.repeat(self.offsets[index], lengths) + position  # (t,) index into the flat arrays
        flat = row_of * width + position
        tensors = []
        for values, dtype in ((self.ids, np.int64), (self.segments, np.int64), (self.values, np.float32)):
            out = np.zeros(b * width, dtype=dtype)
            out[flat] = values[source]
            tensors.append(torch.from_numpy(out.reshape(b, width)))
        tensors.append(torch.from_numpy(np.arange(width)[None, :] < lengths[:, None]))
        if pin:
            tensors = [t.pin_memory() for t in tensors]
        return Batch(*tensors, self.rows[index], None, None).to(device)


def token_table(strings: Sequence[str] | pl.Series, max_length: int = 256) -> TokenTable:
    """Tokenize SCOPE strings into a TokenTable (see the module docstring for the rules).

    polars splits and looks up the tokens (vectorised, the interpreter lock released); the per-row bookkeeping
    (positions, segments, [CLS]) is numpy on flat arrays, never on a padded matrix."""
    series = pl.Series("scope", strings, dtype=pl.String).fill_null("")
    n = len(series)
    vocab = _token_ids()
    # Whitespace of any kind separates tokens (a literal scan first: the regex costs ~2 us a string, and the
    # encoder's own strings hold single spaces only); ':' (detailed `4a:Na`) too; '+' (mixed `Ba+Sr`) is a token.
    text = series
    if series.str.contains_any(UNICODE_WHITESPACE).any():
        text = series.str.replace_all(r"\s+", " ")
    text = text.str.replace_all(":", " ", literal=True).str.replace_all(MIXED, f" {MIXED} ", literal=True)
    tokens = (
        pl.DataFrame({"t": text.str.split(" ")})
        .with_row_index("row")
        .explode("t")
        .filter(pl.col("t") != "")
        .with_columns(id=_lookup(pl.col("t"), _vocabulary_enum()))
    )
    row = tokens["row"].to_numpy()
    ids = tokens["id"].to_numpy().copy()  # (T,) without [CLS]
    counts = np.bincount(row, minlength=n)  # tokens per string, [CLS] not counted
    starts = np.concatenate([[0], np.cumsum(counts)])  # flat offset of each string's first token
    separators = np.cumsum(ids == vocab[SEPARATOR], dtype=np.int32)
    before = np.concatenate([[0], separators])[starts[:-1]]  # separators before each string
    segments = np.minimum(separators - before[row], N_SEGMENTS - 1, dtype=np.int32).astype(np.int8)
    on_generator = np.flatnonzero(segments == 0)  # generator characters: their own namespace (`g:O`)
    if len(on_generator):
        picked = tokens["t"].gather(on_generator)
        first_generator = generator_id_range()[0]
        codes = pl.select(_lookup(pl.lit(picked), _generator_enum(), missing=-1)).to_series().to_numpy()
        ids[on_generator] = np.where(codes < 0, UNK, codes + first_generator)
    values = np.zeros(len(ids), dtype=np.float32)
    on_composition = np.flatnonzero(segments == 2)
    if len(on_composition):
        amounts = tokens["t"].gather(on_composition).cast(pl.Float32, strict=False).fill_null(0.0)
        values[on_composition] = amounts.to_numpy()
    unknown = np.bincount(row[ids == UNK], minlength=n)

    lengths = counts + 1  # [CLS]
    keep = np.flatnonzero(lengths <= max_length)
    too_long = np.flatnonzero(lengths > max_length)
    if len(too_long):  # their tokens leave the flat arrays
        take = np.repeat(lengths <= max_length, counts)
        ids, segments, values = ids[take], segments[take], values[take]
    offsets = np.concatenate([[0], np.cumsum(lengths[keep])])
    first = offsets[:-1] - np.arange(len(keep))  # each kept string's first token, before the [CLS] go in
    return TokenTable(
        np.insert(ids, first, CLS),
        np.insert(segments, first, 0),
        np.insert(values, first, 0.0),
        offsets,
        keep,
        unknown,
        too_long,
    )


def tokenize(strings: Sequence[str] | pl.Series, max_length: int = 256) -> Batch:
    """Tokenize a batch of SCOPE strings into padded tensors (padded to the longest string in the batch)."""
    table = token_table(strings, max_length)
    batch = table.padded()
    batch.unknown, batch.too_long = table.unknown, table.too_long
    return batch


def decode(ids: Sequence[int]) -> list[str]:
    """Token strings for ids (PAD dropped); for debugging and tests."""
    vocab = vocabulary()
    return [vocab[i] for i in ids if i != PAD]

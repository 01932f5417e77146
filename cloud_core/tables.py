"""Writing result tables in batches; the file name's ending (.parquet, .csv, .jsonl) picks the format."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import polars as pl

TABLE_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def table_format(path: Path) -> str:
    """The format a file name asks for; ValueError with the accepted endings otherwise."""
    fmt = TABLE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the table format of {path.name!r}: use .parquet, .csv or .jsonl")
    return fmt


class TableWriter:
    """Append polars frames to one file as they come, so a long run never holds all rows in memory.

    Writes go to a temporary file beside the target, moved into place on a clean close: a crashed run
    leaves no half-written table behind under the real name.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.format = table_format(self.path)
        self._partial = self.path.with_name(f".{self.path.name}.partial")
        self._parquet = None
        self._text = None
        self.rows = 0

    def __enter__(self) -> TableWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, frame: pl.DataFrame) -> None:
        if self.format == "parquet":
            import pyarrow.parquet as pq

            table = frame.to_arrow()
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self._partial, table.schema, compression="zstd")
            self._parquet.write_table(table)
        else:
            if self._text is None:
                self._text = open(self._partial, "wb")  # noqa: SIM115 - closed in close()
                if self.format == "csv":
                    frame.write_csv(self._text, include_header=True)
                    self.rows += frame.height
                    return
            if self.format == "csv":
                frame.write_csv(self._text, include_header=False)
            else:
                frame.write_ndjson(self._text)
        self.rows += frame.height

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._text is not None:
            self._text.close()
        if self._partial.exists():
            self._partial.replace(self.path)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            for handle in (self._parquet, self._text):
                if handle is not None:
                    handle.close()
            self._partial.unlink(missing_ok=True)

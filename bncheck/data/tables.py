"""Table files -> samples: ``.csv`` (pandas) and ``.parquet`` (pyarrow), one row a sample.

Columns: ``--columns a,b,c`` picks them in that order (each must exist and be numeric);
without it every numeric column is used in file order and the others are dropped and named
in the report. Empty cells become NaN (then the NaN policy applies). Files are read in
chunks of rows, never whole.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.data.loader import Task
from bncheck.data.reader import ManySamplesPerFile
from bncheck.data.shapes import ExpectedShape, Shape, fits, shape_text
from bncheck.data.spec import DataOptions
from bncheck.errors import DataError, first_line

#: rows read to decide which columns are numeric
SNIFF_ROWS = 1000


@dataclass
class TableSchema:
    """The columns that become the features of a sample."""

    columns: list[str]
    #: non-numeric columns left out (only when --columns was not given)
    dropped: list[str] = field(default_factory=list)
    #: file -> number of rows, filled by :func:`count_rows`
    rows: dict[Path, int] = field(default_factory=dict)


@dataclass
class TableChunk:
    path: Path
    start: int
    stop: int
    load: Callable[[], np.ndarray]


def _pandas():
    import pandas

    return pandas


def _pyarrow_parquet():
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DataError("reading .parquet needs pyarrow; install it (pip install 'bncheck[parquet]') or use .csv.") from exc
    return pq


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


def _read_error(path: Path, exc: BaseException) -> DataError:
    if isinstance(exc, PermissionError):
        return DataError(f"cannot read {path}: permission denied; check its permissions.")
    first = first_line(exc)
    kind = "Parquet" if _is_parquet(path) else "CSV"
    return DataError(f"cannot read {path} as {kind} ({first}); check the file.")


def _columns_of(path: Path) -> tuple[list[str], dict[str, bool], int | None]:
    """Column names, whether each is numeric, and the row count where it is cheap (parquet)."""
    if _is_parquet(path):
        pq = _pyarrow_parquet()
        import pyarrow as pa

        try:
            handle = pq.ParquetFile(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
            raise _read_error(path, exc) from exc
        schema = handle.schema_arrow
        numeric = {
            f.name: pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type)
            for f in schema
        }
        return list(schema.names), numeric, int(handle.metadata.num_rows)
    pd = _pandas()
    try:
        head = pd.read_csv(path, nrows=SNIFF_ROWS)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path} is empty (not even a header row); give one row per sample with a header.") from exc
    except Exception as exc:  # noqa: BLE001 - ParserError, UnicodeDecodeError, OSError
        raise _read_error(path, exc) from exc
    if len(head) == 0:  # header only: no evidence about the values, accept every column
        return [str(c) for c in head.columns], {str(c): True for c in head.columns}, 0
    numeric = {str(c): head[c].dtype.kind in "biuf" for c in head.columns}
    return [str(c) for c in head.columns], numeric, None


def inspect_tables(files: list[Path], requested: list[str] | None) -> TableSchema:
    """Choose the feature columns and check that every file has them, numeric."""
    schema: TableSchema | None = None
    for path in files:
        names, numeric, rows = _columns_of(path)
        if requested is not None:
            missing = [c for c in requested if c not in numeric]
            if missing:
                raise DataError(
                    f"--columns names {', '.join(repr(c) for c in missing)}, not in {path} "
                    f"(it has: {_listing(names)})."
                )
            bad = [c for c in requested if not numeric[c]]
            if bad:
                raise DataError(
                    f"column {bad[0]!r} of {path} is not numeric ({_example(path, bad[0])}); "
                    "leave it out of --columns."
                )
            columns, dropped = list(requested), []
        else:
            columns = [c for c in names if numeric[c]]
            dropped = [c for c in names if not numeric[c]]
            if not columns:
                raise DataError(f"{path} has no numeric columns (it has: {_listing(names)}); bncheck needs numbers.")
        if schema is None:
            schema = TableSchema(columns=columns, dropped=dropped)
        elif not set(schema.columns) <= set(names) or (
            requested is None and rows != 0 and columns != schema.columns
        ):
            raise DataError(
                f"{path} has numeric columns {_listing(columns)} but {files[0]} has "
                f"{_listing(schema.columns)}; make them agree or choose them with --columns."
            )
        schema.dropped += [c for c in dropped if c not in schema.dropped]
        if rows is not None:
            schema.rows[path] = rows
    if schema is None:
        raise DataError("no table files to read.")
    return schema


def _listing(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _example(path: Path, column: str) -> str:
    """The first value of ``column`` that is not a number, e.g. ``'abc' on row 3``."""
    pd = _pandas()
    try:
        head = pd.read_csv(path, nrows=SNIFF_ROWS, usecols=[column], dtype=str, keep_default_na=False)
    except Exception:  # noqa: BLE001 - only used for the message
        return "non-numeric values"
    for row, value in enumerate(head[column].tolist(), start=1):
        if value.strip() and pd.to_numeric(pd.Series([value]), errors="coerce").isna().all():
            return f"{value!r} on row {row}"
    return "non-numeric values"


def count_rows(path: Path) -> int:
    """Rows of one file (a streaming pass over its first column for CSV)."""
    if _is_parquet(path):
        return _columns_of(path)[2] or 0
    pd = _pandas()
    total = 0
    try:
        for chunk in pd.read_csv(path, usecols=[0], chunksize=1 << 16):
            total += len(chunk)
    except Exception as exc:  # noqa: BLE001
        raise _read_error(path, exc) from exc
    return total


def chunk_rows(columns: int) -> int:
    """Rows read in one go: about 4 MB of float64 cells, between 64 and 4096 rows."""
    return max(64, min(4096, (4 << 20) // (8 * max(1, columns))))


def iter_chunks(files: list[Path], schema: TableSchema, rows: int) -> Iterator[TableChunk]:
    """Chunks of rows of every file in order. Reading happens here (the producer thread);
    ``load`` (a worker) converts to float32 and checks for non-numbers."""
    for path in files:
        if _is_parquet(path):
            yield from _parquet_chunks(path, schema, rows)
        else:
            yield from _csv_chunks(path, schema, rows)


def _csv_chunks(path: Path, schema: TableSchema, rows: int) -> Iterator[TableChunk]:
    pd = _pandas()
    start = 0
    try:
        reader = pd.read_csv(path, usecols=schema.columns, chunksize=rows)
        for frame in reader:
            stop = start + len(frame)
            yield TableChunk(path, start, stop, lambda f=frame, s=start: _frame_to_array(f, schema.columns, path, s))
            start = stop
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - ParserError, OSError, ...
        raise _read_error(path, exc) from exc


def _frame_to_array(frame: Any, columns: list[str], path: Path, start: int) -> np.ndarray:
    pd = _pandas()
    frame = frame[columns]
    for column in columns:
        if frame[column].dtype.kind not in "biuf":
            values = frame[column]
            parsed = pd.to_numeric(values, errors="coerce")
            bad = parsed.isna() & values.notna()
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(
                    f"column {column!r} of {path} holds {values.iloc[row]!r} on row {start + row + 1}, "
                    "not a number; fix the file or leave the column out with --columns."
                )
            frame = frame.assign(**{column: parsed})
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(frame.to_numpy(dtype=np.float64, na_value=np.nan).astype(np.float32))


def _parquet_chunks(path: Path, schema: TableSchema, rows: int) -> Iterator[TableChunk]:
    pq = _pyarrow_parquet()
    import pyarrow as pa

    start = 0
    try:
        handle = pq.ParquetFile(path)
        for batch in handle.iter_batches(batch_size=rows, columns=schema.columns):
            stop = start + batch.num_rows

            def load(batch: Any = batch) -> np.ndarray:
                cols = [batch.column(batch.schema.get_field_index(c)) for c in schema.columns]
                arrays = [c.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False) for c in cols]
                with np.errstate(over="ignore", invalid="ignore"):
                    return np.ascontiguousarray(np.stack(arrays, axis=1).astype(np.float32))

            yield TableChunk(path, start, stop, load)
            start = stop
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - ArrowInvalid, OSError, ...
        raise _read_error(path, exc) from exc


class TableReader(ManySamplesPerFile):
    """.csv/.parquet files: one row a sample, the chosen numeric columns its features."""

    kind = "table"
    def __init__(self, files: list[str], options: DataOptions, expected: ExpectedShape | None):
        self.files = files = [Path(f) for f in files]
        self.schema = inspect_tables(files, options.columns)
        self.sample_shape: Shape = (len(self.schema.columns),)
        self._count: int | None = None
        if expected is not None and not fits(self.sample_shape, expected):
            if len(expected) != 1:
                raise DataError(
                    f"tables give one row of {len(self.schema.columns)} numbers per sample, but the model "
                    f"expects {shape_text(expected)} per sample; save arrays of that shape as .npy instead."
                )
            dropped = f"; non-numeric columns left out: {_listing(self.schema.dropped)}" if self.schema.dropped else ""
            raise DataError(
                f"{files[0]} has {len(self.schema.columns)} numeric column(s) ({_listing(self.schema.columns)}) "
                f"but the model expects {expected[0]} features per sample; choose them with --columns a,b,c{dropped}."
            )

    def count(self) -> int:
        if self._count is None:
            self._count = sum(self.schema.rows[f] if f in self.schema.rows else count_rows(f) for f in self.files)
        return self._count

    def pinned(self, options: DataOptions) -> DataOptions:
        """The feature columns, as the first files decided them."""
        return replace(options, columns=list(self.schema.columns))

    def file_counts(self, files: list[str], *, rows_needed: bool) -> list[int] | None:
        """Rows per file, counted (a pass over CSV rows) only when ``rows_needed``."""
        if not rows_needed:
            return None
        rows = self.schema.rows
        return [rows[Path(f)] if Path(f) in rows else count_rows(Path(f)) for f in files]

    def shape_error(self, source: str, got: Shape) -> DataError:
        return DataError(f"{source} gave rows of {shape_text(got)} values, expected {shape_text(self.sample_shape)}.")

    def tasks(self, batch_size: int) -> Iterator[Task]:
        for chunk in iter_chunks(self.files, self.schema, chunk_rows(len(self.schema.columns))):
            yield Task(count=chunk.stop - chunk.start, source=str(chunk.path), offset=chunk.start, load=chunk.load)

    def preprocessing(self) -> dict[str, Any]:
        return {
            "columns": list(self.schema.columns),
            "dropped_columns": list(self.schema.dropped),
            "values": "as stored, cast to float32; empty cells are NaN",
        }

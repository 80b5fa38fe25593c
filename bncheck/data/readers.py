"""The registry of DATA readers, by the kind :func:`bncheck.data.discover.discover` reports.

Adding a reader: one module with a class that implements :class:`bncheck.data.reader.Reader`
(its ``kind`` is the key), and one entry in :data:`READERS`."""

from __future__ import annotations

from bncheck.data.arrays import ArrayReader
from bncheck.data.custom import CustomReader
from bncheck.data.images import ImageReader
from bncheck.data.memory import MemoryReader
from bncheck.data.reader import Reader
from bncheck.data.shapes import ExpectedShape
from bncheck.data.spec import DataOptions
from bncheck.data.tables import TableReader

READERS: dict[str, type[Reader]] = {cls.kind: cls for cls in (ImageReader, ArrayReader, TableReader, CustomReader, MemoryReader)}


def reader_class(kind: str) -> type[Reader]:
    """The reader class of files of ``kind`` (images, arrays, table, files, memory)."""
    return READERS[kind]


def open_reader(kind: str, files: list[str], options: DataOptions, expected: ExpectedShape | None) -> Reader:
    """A reader of ``kind`` over ``files``."""
    return READERS[kind](files, options, expected)

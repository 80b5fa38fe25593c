"""The :class:`Reader` protocol: what each kind of DATA file (images, arrays, tables, files
through ``--preprocess``) provides. The readers are registered in :mod:`bncheck.data.readers`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Protocol

from bncheck.data.loader import Task
from bncheck.data.shapes import Shape
from bncheck.data.spec import DataOptions
from bncheck.errors import DataError


class Reader(Protocol):
    """One kind of DATA file, opened over a list of files: ``Reader(files, options, expected)``."""

    kind: ClassVar[str]
    #: every file holds exactly one sample (shards then align to the batch size)
    one_per_file: ClassVar[bool]
    sample_shape: Shape

    @classmethod
    def all_unusable(cls, files: list[str], options: DataOptions) -> list[tuple[str, str]] | None:
        """(file, reason) for every file when none of them gives a sample; None as soon as one
        does (or when the kind cannot tell without opening a reader)."""

    def count(self) -> int:
        """Samples in DATA before skips, exclusions and the limit."""

    def tasks(self, batch_size: int) -> Iterator[Task]:
        """Decoding tasks in sample order."""

    def shape_error(self, source: str, got: Shape) -> DataError:
        """The error for a sample whose shape differs from ``sample_shape``."""

    def preprocessing(self) -> dict[str, Any]:
        """How samples are made, every default spelled out."""

    def pinned(self, options: DataOptions) -> DataOptions:
        """``options`` with the choices the first files made for the whole data set fixed."""

    def file_counts(self, files: list[str], *, rows_needed: bool) -> list[int] | None:
        """Raw samples per file of ``files`` (those this reader covers) where they are known
        without reading the data, or counted when ``rows_needed`` (a labels file needs them)."""


class ManySamplesPerFile:
    """Base of the readers whose files may hold any number of samples (arrays, tables): shards
    cannot align to files, and whether a file is usable is only known once it is opened."""

    one_per_file: ClassVar[bool] = False

    @classmethod
    def all_unusable(cls, files: list[str], options: DataOptions) -> list[tuple[str, str]] | None:
        return None


class OneSamplePerFile:
    """Base of the readers that make one sample of each file (images, ``--preprocess``)."""

    one_per_file: ClassVar[bool] = True
    files: list

    def count(self) -> int:
        return len(self.files)

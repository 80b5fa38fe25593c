"""DATA given as Python objects (the API, not the command line): a numpy array or tensor, an
``(x, y)`` pair of them, a torch ``DataLoader``, a map-style ``Dataset``, or any iterable of
arrays, tensors, PIL images or ``(x, y)`` pairs.

Each item is a batch (first axis = samples) or one sample, decided like array files
(``DataOptions.arrays``): by rank against the model's input shape, else ``batch`` for arrays,
data loaders and other iterables and ``sample`` for map-style datasets (``dataset[i]``). The
second element of a pair is the items' labels (class indices) and gives accuracy. A
``transform`` (``DataOptions.transform``) is applied to every item's ``x`` first (a torchvision
transform on a PIL image, say); a PIL image without one goes through bncheck's own image
pipeline (:class:`~bncheck.data.spec.ImageOptions`), as in an image folder.

Every pass iterates the object afresh, so a ``DataLoader`` with shuffling gives another order
each pass (the statistics do not depend on it). An iterator or generator can be read once:
``drift`` needs one pass; ``recalibrate`` needs several and says so.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from bncheck.data.arrays import chunk_rows, class_indices, is_batched
from bncheck.data.convert import (
    call_transform,
    describe_callable,
    float_samples,
    is_array_like,
    is_pil_image,
    numeric_array,
)
from bncheck.data.images import preprocess_image, resolve_image_plan
from bncheck.data.labels import Labels
from bncheck.data.loader import Task
from bncheck.data.reader import ManySamplesPerFile
from bncheck.data.shapes import ExpectedShape, Shape, fits, mismatch_hint, shape_text
from bncheck.data.spec import DataOptions
from bncheck.errors import DataError, UsageError

_NOT_DATA = (str, bytes, dict, int, float, bool)


class InMemoryData:
    """A Python object given as DATA, with what is known about it before reading."""

    def __init__(self, obj: Any):
        if isinstance(obj, _NOT_DATA) or obj is None:
            raise UsageError(
                f"DATA is {_a(type(obj).__name__)}; give a path, a numpy array, a tensor, a DataLoader, a Dataset "
                "or an iterable of arrays (or of (x, y) pairs)."
            )
        self.obj = obj
        self.kind, self.default_mode = _classify(obj)
        if self.kind == "iterable" and not hasattr(obj, "__iter__"):
            raise UsageError(
                f"DATA is {_a(type(obj).__name__)}, which is neither a path nor iterable; give a numpy array, a tensor, "
                "a DataLoader, a Dataset or an iterable of arrays."
            )
        self.name = _name(obj, self.kind)
        self.one_shot = self.kind == "iterable" and iter(obj) is obj
        self._peeked: list[Any] = []
        self._passes = 0

    def __str__(self) -> str:
        return self.name

    def first_item(self) -> Any:
        """The first item (kept for the first pass of an iterator); DataError when empty."""
        if not self._peeked:
            if self.one_shot and self._passes:
                raise self._read_twice()
            item = next(iter(self._fresh()), _END)
            if item is _END:
                raise DataError(f"DATA {self.name} is empty (it gave no item); give at least one sample.")
            self._peeked.append(item)
        return self._peeked[0]

    def items(self) -> Iterator[Any]:
        """One pass over the items."""
        if self.one_shot:
            if self._passes:
                raise self._read_twice()
            self._passes += 1
            self.first_item()
            return itertools.chain(self._peeked, self.obj)
        self._passes += 1
        return iter(self._fresh())

    def sample_count(self, batched_items: bool) -> int | None:
        """Samples a pass gives where known without reading (None: an iterator)."""
        if self.kind in ("array", "pair"):
            return len(self.obj[0] if self.kind == "pair" else self.obj) if batched_items else 1
        if self.kind == "loader":
            sampler = getattr(self.obj, "sampler", None)
            if getattr(self.obj, "drop_last", False) or not hasattr(sampler, "__len__"):
                return len(self.obj) * int(self.obj.batch_size) if hasattr(self.obj, "__len__") and self.obj.batch_size else None
            return len(sampler)
        if self.kind == "dataset" and not batched_items:
            return len(self.obj)
        if not self.one_shot and hasattr(self.obj, "__len__") and not batched_items:
            return len(self.obj)
        return None

    def _fresh(self) -> Any:
        if self.kind in ("array", "pair"):
            return [self.obj]
        if self.kind == "dataset":
            return (self.obj[i] for i in range(len(self.obj)))
        return self.obj

    def _read_twice(self) -> DataError:
        return DataError(
            f"DATA {self.name} is an iterator, which can be read once, but this needs another pass over it; "
            "pass a list, a numpy array, a DataLoader or a Dataset instead."
        )


_END = object()


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _classify(obj: Any) -> tuple[str, str]:
    """(kind, default item mode): array, pair, loader, dataset or iterable."""
    if is_array_like(obj):
        return "array", "batch"
    if isinstance(obj, tuple) and len(obj) == 2 and all(is_array_like(v) for v in obj):
        x, y = obj
        if len(y.shape) == 1 and len(x.shape) >= 2 and int(x.shape[0]) == int(y.shape[0]):
            return "pair", "batch"
    if hasattr(obj, "dataset") and hasattr(obj, "batch_size") and hasattr(obj, "__iter__"):
        return "loader", "batch"
    if any(cls.__name__ == "IterableDataset" for cls in type(obj).__mro__):
        return "iterable", "sample"
    if not isinstance(obj, (list, tuple)) and hasattr(obj, "__getitem__") and hasattr(obj, "__len__"):
        return "dataset", "sample"
    return "iterable", "batch"


def _name(obj: Any, kind: str) -> str:
    if kind == "array":
        return f"<{type(obj).__name__} {shape_text(tuple(int(d) for d in obj.shape))}>"
    if kind == "pair":
        return f"<(x, y) {shape_text(tuple(int(d) for d in obj[0].shape))}>"
    if kind == "loader":
        return f"<{type(obj).__name__} of {type(obj.dataset).__name__}>"
    return f"<{type(obj).__name__}>"


def as_data(data: Any) -> Any:
    """DATA as the engines take it: a path or URL as a string, a Python object as an
    :class:`InMemoryData` (None stays None: ``drift --stats``)."""
    if data is None or isinstance(data, InMemoryData):
        return data
    if isinstance(data, (str, os.PathLike)):
        return os.fspath(data)
    return InMemoryData(data)


class MemoryReader(ManySamplesPerFile):
    """The items of an :class:`InMemoryData` (``files`` is ``[source]``)."""

    kind = "memory"

    def __init__(self, files: list[Any], options: DataOptions, expected: ExpectedShape | None):
        (self.source,) = files
        self.options = options
        self.expected = expected
        self.transform = options.transform
        if options.arrays != "auto":
            self.mode = options.arrays
        else:
            self.mode = "auto" if expected is not None else self.source.default_mode
        self.image_plan = None
        x, y, batched = self._item(self.source.first_item(), 0)
        self.batched_items = batched
        self.sample_shape: Shape = tuple(x.shape[1:])
        self.labelled = y is not None
        if expected is not None and not fits(self.sample_shape, expected):
            raise DataError(
                f"{self._where(0, batched)} holds samples of shape {shape_text(self.sample_shape)} but the model expects "
                f"{shape_text(expected)} per sample; {mismatch_hint(self.sample_shape, expected)}."
            )

    def _where(self, index: int, batched: bool) -> str:
        if self.source.kind in ("array", "pair"):
            return f"DATA {self.source.name}"
        return f"{'batch' if batched else 'item'} {index} of DATA {self.source.name}"

    def _item(self, item: Any, index: int) -> tuple[np.ndarray, np.ndarray | None, bool]:
        """One item as (x: (n, *sample), labels: (n,) or None, batched)."""
        where = f"item {index} of DATA {self.source.name}"
        if isinstance(item, (tuple, list)) and not is_array_like(item):
            if not item:
                raise DataError(f"{where} is an empty {type(item).__name__}; give an array or an (x, y) pair.")
            x, y = item[0], (item[1] if len(item) > 1 else None)
        else:
            x, y = item, None
        if self.transform is not None:
            x = call_transform(self.transform, x, where)
        if is_pil_image(x):
            x = self._image(x, where)
        values = numeric_array(x, where)
        batched = self._batched(tuple(int(d) for d in values.shape), where)
        n = int(values.shape[0]) if batched else 1
        labels = _labels(y, n, batched, self._where(index, batched)) if y is not None else None
        return (values if batched else values[None]), labels, batched

    def _image(self, image: Any, where: str) -> np.ndarray:
        if self.image_plan is None:
            self.image_plan = resolve_image_plan(self.options.images, self.expected, image.mode)
        return preprocess_image(image, self.image_plan, where)

    def _batched(self, shape: Shape, where: str) -> bool:
        return is_batched(where, shape, self.mode, self.expected, "give arrays of samples")

    def count(self) -> int | None:
        return self.source.sample_count(self.batched_items)

    def shape_error(self, source: str, got: Shape) -> DataError:
        return DataError(
            f"{source} has samples of shape {shape_text(got)} but the first item's are {shape_text(self.sample_shape)}; "
            "every sample must have one shape."
        )

    def tasks(self, batch_size: int) -> Iterator[Task]:
        for index, item in enumerate(self.source.items()):
            x, y, batched = self._item(item, index)
            if (y is not None) != self.labelled:
                state = "has labels" if self.labelled else "has none"
                raise DataError(f"{self._where(index, batched)} {'has no labels' if y is None else 'has labels'} but the first item {state}; give (x, y) pairs throughout, or none.")
            source = self._where(index, batched).removeprefix("DATA ")
            rows = chunk_rows(self.sample_shape, batch_size)
            for start in range(0, len(x), rows):
                part = x[start : start + rows]
                yield Task(
                    count=len(part), source=source, offset=start, load=lambda p=part: float_samples(p),
                    labels=y[start : start + rows] if y is not None else None,
                )  # fmt: skip

    def preprocessing(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source.kind,
            "read_as": "batch" if self.batched_items else "sample",
            "arrays": self.options.arrays,
            "transform": describe_callable(self.transform) if self.transform is not None else None,
            "values": "as given, cast to float32",
        }
        if self.image_plan is not None:
            out["images"] = self.image_plan.describe()
        return out

    def pinned(self, options: DataOptions) -> DataOptions:
        return options

    def file_counts(self, files: list[str], *, rows_needed: bool) -> list[int] | None:
        return None


def _labels(y: Any, n: int, batched: bool, where: str) -> np.ndarray:
    """An item's labels as int64 (n,): class indices, one per sample."""
    values = numeric_array(y, f"the labels of {where}") if is_array_like(y) else np.asarray(y)
    if not batched and values.size == 1:
        values = values.reshape(-1)
    return class_indices(
        values,
        n,
        lambda shape: f"the labels of {where} have shape {shape} for {n} sample(s); give one class index "
        "per sample (e.g. targets, not one-hot rows).",
        lambda dtype: f"the labels of {where} are {dtype} values; labels must be integer class indices.",
    )


def memory_labels(options: DataOptions, reader: MemoryReader) -> Labels | None:
    """The labels of in-memory DATA: the second element of its (x, y) items (``labels="none"``
    drops them)."""
    choice = options.labels
    if choice is not None and str(choice).lower() == "none":
        return None
    if choice is not None:
        raise UsageError(f"labels={choice!r} works with DATA on disk; give in-memory DATA as (x, y) pairs instead.")
    return Labels(source="memory") if reader.labelled else None

"""DATA for ``bncheck drift`` and ``bncheck recalibrate``: files on disk -> streamed batches.

    from bncheck.data import DataOptions, ImageOptions, open_data

    dataset = open_data("data/", DataOptions(images=ImageOptions(size=224)), expected_shape=(3, 224, 224))
    for batch in dataset.batches(32):   # Batch(x: float32 (N, 3, 224, 224), y: int64 (N,) | None, index)
        ...
    dataset.describe()                  # JSON-friendly: files, samples, preprocessing, skipped...

Modules: ``spec`` (options), ``discover`` (which files), ``images`` / ``arrays`` / ``tables`` /
``custom`` (one reader per kind of file), ``labels``, ``shapes`` (fit to the model input),
``loader`` (background decoding, bounded batching), ``dataset`` (open_data, Dataset).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bncheck.data.dataset import Dataset, open_data
    from bncheck.data.discover import ARRAY_EXTENSIONS, IMAGE_EXTENSIONS, TABLE_EXTENSIONS
    from bncheck.data.images import ImagePlan, preprocess_image
    from bncheck.data.labels import Labels
    from bncheck.data.loader import Batch, DataIssues, StreamStats, UnreadableFile
    from bncheck.data.spec import DataOptions, ImageOptions, build_options

#: each public name -> the module that defines it, imported on first use (PEP 562): a process
#: that only asks which file extensions are data (every command's output guard, ``bncheck
#: fold``) does not pay for the readers, the loader and numpy's image code (issue 14)
_WHERE = {
    "Dataset": "dataset", "open_data": "dataset",
    "ARRAY_EXTENSIONS": "discover", "IMAGE_EXTENSIONS": "discover", "TABLE_EXTENSIONS": "discover",
    "ImagePlan": "images", "preprocess_image": "images",
    "Labels": "labels",
    "Batch": "loader", "DataIssues": "loader", "StreamStats": "loader", "UnreadableFile": "loader",
    "DataOptions": "spec", "ImageOptions": "spec", "build_options": "spec",
}


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'bncheck.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"bncheck.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


__all__ = [
    "ARRAY_EXTENSIONS",
    "Batch",
    "DataIssues",
    "DataOptions",
    "Dataset",
    "IMAGE_EXTENSIONS",
    "ImageOptions",
    "ImagePlan",
    "Labels",
    "StreamStats",
    "TABLE_EXTENSIONS",
    "UnreadableFile",
    "build_options",
    "open_data",
    "preprocess_image",
]

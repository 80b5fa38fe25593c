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

from bncheck.data.dataset import Dataset, open_data
from bncheck.data.discover import ARRAY_EXTENSIONS, IMAGE_EXTENSIONS, TABLE_EXTENSIONS
from bncheck.data.images import ImagePlan, preprocess_image
from bncheck.data.labels import Labels
from bncheck.data.loader import Batch, DataIssues, StreamStats, UnreadableFile
from bncheck.data.spec import DataOptions, ImageOptions, build_options

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

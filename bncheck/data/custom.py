"""``--preprocess module:fn`` / ``--preprocess path/file.py:fn``: the user's own reader.

With it, every (non-hidden) file of DATA, whatever its extension, is passed to
``fn(path: pathlib.Path)``, which returns ONE sample: a numpy array (or anything
``numpy.asarray`` accepts, e.g. a CPU tensor) of the model's per-sample input shape, already
preprocessed; bncheck casts it to float32 and applies nothing else. Returning ``None`` skips
the file (counted in the report). An exception raised by ``fn`` stops the run with its
message. ``fn`` runs in the decoding threads, so it must be thread-safe (or use
``--workers 0``). Class-folder labels and ``--labels`` work as for images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.data.loader import Task
from bncheck.data.reader import OneSamplePerFile
from bncheck.data.shapes import ExpectedShape, Shape, fits, mismatch_hint, shape_text
from bncheck.data.spec import DataOptions
from bncheck.errors import DataError, UsageError, first_line
from bncheck.importing import failure, resolve_callable


def load_preprocess(spec: str) -> Callable[[Path], Any]:
    """The callable named by ``package.module:fn`` or ``path/to/file.py:fn``."""
    return resolve_callable(spec, option="--preprocess", noun="fn", error=UsageError)


def run_preprocess(fn: Callable[[Path], Any], spec: str, path: Path) -> np.ndarray | None:
    """``fn(path)`` as a float32 sample, or None when fn skips the file."""
    try:
        result = fn(path)
    except SystemExit as exc:  # sys.exit() in fn must not end the run with its code
        raise DataError(f"--preprocess {spec} {failure(exc)} on {path}; return a sample or None instead.") from exc
    except Exception as exc:
        raise DataError(
            f"--preprocess {spec} failed on {path} with {type(exc).__name__}: {first_line(exc)}."
        ) from exc
    if result is None:
        return None
    try:
        values = np.asarray(result)
        if values.dtype.kind not in "biuf":
            raise ValueError(f"it holds {values.dtype} values, not real numbers")
        with np.errstate(over="ignore", invalid="ignore"):
            sample = values.astype(np.float32)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(
            f"--preprocess {spec} returned a {type(result).__name__} for {path} that is not a numeric "
            f"array ({first_line(exc)}); return a numpy array."
        ) from exc
    return np.ascontiguousarray(sample)


class CustomReader(OneSamplePerFile):
    """Every file of DATA through the user's ``--preprocess`` function, one sample each."""

    kind = "files"

    @classmethod
    def all_unusable(cls, files: list[str], options: DataOptions) -> list[tuple[str, str]] | None:
        fn = load_preprocess(options.preprocess or "")
        reasons: list[tuple[str, str]] = []
        for path in files:
            if run_preprocess(fn, options.preprocess or "", Path(path)) is not None:
                return None
            reasons.append((path, "skipped by --preprocess"))
        return reasons

    def __init__(self, files: list[str], options: DataOptions, expected: ExpectedShape | None):
        if options.preprocess is None:
            raise UsageError("reading arbitrary files needs --preprocess module:fn.")
        self.files = files
        self.spec = options.preprocess
        self.fn = load_preprocess(self.spec)
        for path in files:
            sample = run_preprocess(self.fn, self.spec, Path(path))
            if sample is not None:
                break
        else:
            raise DataError(f"--preprocess {self.spec} returned None for every one of the {len(files)} file(s); nothing to use.")
        self.first = path
        self.sample_shape: Shape = tuple(sample.shape)
        if expected is not None and not fits(self.sample_shape, expected):
            raise DataError(
                f"--preprocess {self.spec} returned shape {shape_text(self.sample_shape)} for {path} but the "
                f"model expects {shape_text(expected)} per sample (one sample, no batch axis); "
                f"{mismatch_hint(self.sample_shape, expected)}."
            )

    def shape_error(self, source: str, got: Shape) -> DataError:
        return DataError(
            f"--preprocess {self.spec} returned shape {shape_text(got)} for {source} but "
            f"{shape_text(self.sample_shape)} for {self.first}; it must return one shape for every file."
        )

    def tasks(self, batch_size: int) -> Iterator[Task]:
        for path in self.files:
            yield Task(count=1, source=str(path), offset=0, load=lambda p=path: self._load(p))

    def _load(self, path: str) -> np.ndarray | None:
        sample = run_preprocess(self.fn, self.spec, Path(path))
        return None if sample is None else sample[None]

    def preprocessing(self) -> dict[str, Any]:
        return {"preprocess": self.spec, "values": "as returned by the function, cast to float32"}

    def pinned(self, options: DataOptions) -> DataOptions:
        return options

    def file_counts(self, files: list[str], *, rows_needed: bool) -> list[int] | None:
        return [1] * len(files)

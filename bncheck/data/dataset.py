""":func:`open_data`: DATA (a file or folder, or an API object: :mod:`bncheck.data.memory`) -> a
:class:`Dataset` that streams batches.

Opening finds the files, picks the reader for their kind, decodes the first sample to learn
the per-sample shape and checks it against the model's input; it reads nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.data.discover import discover
from bncheck.data.labels import Labels, folder_labels, read_label_file
from bncheck.data.loader import Batch, DataIssues, StreamConfig, StreamStats, Task, stream
from bncheck.data.memory import InMemoryData, MemoryReader, memory_labels
from bncheck.data.reader import Reader
from bncheck.data.readers import open_reader
from bncheck.data.shapes import ExpectedShape, Shape, normalize_expected
from bncheck.data.spec import DataOptions
from bncheck.errors import DataError

log = logging.getLogger("bncheck.data")


def open_data(
    path: str | Path | InMemoryData,
    options: DataOptions | None = None,
    expected_shape: Sequence[int | str | None] | None = None,
) -> Dataset:
    """Open DATA for streaming.

    ``expected_shape`` is the model's per-sample input shape (no batch axis; ``None`` or a
    name for a dynamic axis), e.g. from the ONNX graph; ``None`` when unknown (the shape then
    comes from the data). It decides grayscale/RGB and layout for images and batch/sample for
    arrays, and data that does not fit it is refused here with the fix in the message.
    Raises :class:`~bncheck.errors.DataError` (or ``UsageError`` for contradictory options).
    """
    options = options or DataOptions()
    expected = normalize_expected(expected_shape)
    where: Path | InMemoryData
    chosen: list[int] | None = None
    if isinstance(path, InMemoryData):  # the API's Python objects: the memory reader
        reader = open_reader(MemoryReader.kind, [path], options, expected)
        where, kind, files, ignored = path, reader.kind, [], {}
        labels = memory_labels(options, reader)  # type: ignore[arg-type]
    else:
        labels_path = label_file(options.labels)
        found = discover(path, every_file=options.preprocess is not None, exclude=labels_path)
        reader = open_reader(found.kind, found.files, options, expected)
        where, kind, files, ignored = Path(path), found.kind, found.files, found.ignored
        labels = resolve_labels(options, found.root, found.is_folder, found.kind, found.files, reader)
        chosen = spread_files(len(files), options.limit) if reader.one_per_file else None
        if chosen is not None:  # --limit on one-sample files: every k-th file, all of DATA covered
            in_data = len(files)
            files = [files[i] for i in chosen]
            reader = open_reader(found.kind, files, options, expected)
            if labels is not None and labels.values is not None:
                labels = replace(labels, values=np.asarray(labels.values)[chosen])
    dataset = Dataset(
        path=where,
        kind=kind,
        files=files,
        ignored=ignored,
        reader=reader,
        labels=labels,
        options=options,
        expected_shape=expected,
    )
    if not isinstance(path, InMemoryData) and chosen is not None:
        dataset.files_in_data = in_data
    return dataset


def spread_files(count: int, limit: int | None) -> list[int] | None:
    """The indices of the ``limit`` files ``--limit`` reads out of ``count`` one-sample files
    in sorted order: evenly spread over all of them (the middle one of each of ``limit`` equal
    runs), so that DATA sorted by class folder gives every class its share, not the first
    classes only; None when the limit takes every file."""
    if limit is None or limit >= count or limit < 1:
        return None
    return [(2 * i + 1) * count // (2 * limit) for i in range(limit)]


def label_file(labels: str | Path | None) -> Path | None:
    """The labels file ``--labels`` names, or None (``none``, ``folders`` or not given)."""
    if labels is None or str(labels).lower() in ("none", "folders"):
        return None
    return Path(labels)


def resolve_labels(
    options: DataOptions, root: Path, is_folder: bool, kind: str, files: list[str], reader: Reader
) -> Labels | None:
    """The labels of DATA: ``--labels none``, class folders, a labels file, labels inside array
    files, or (by default) class folders when DATA has them."""
    choice = options.labels
    if choice is not None and str(choice).lower() == "none":
        return None
    if choice is not None and str(choice).lower() == "folders":
        found = folder_labels(root, files) if is_folder and reader.one_per_file else None
        if found is None:
            raise DataError(
                f"--labels folders needs images inside class folders (DATA/<class>/image.png), "
                f"but {root} {'has files directly in it' if is_folder else 'is a single file'}."
            )
        return found
    if choice is not None:
        labels = read_label_file(choice)
        total = reader.count()
        if len(labels.values) != total:
            raise DataError(
                f"labels file {choice} has {len(labels.values)} labels but DATA has {total} samples; "
                "give one label per sample, in sample order."
            )
        return labels
    if reader.one_per_file and is_folder:
        return folder_labels(root, files)
    if kind == "arrays" and reader.has_labels():  # type: ignore[attr-defined]
        return Labels(source="arrays")
    return None


class Dataset:
    """DATA, opened: its kind, per-sample shape and labels, and :meth:`batches` to stream it."""

    def __init__(
        self,
        *,
        path: Path | InMemoryData,
        kind: str,
        files: list[str],
        ignored: dict[str, int],
        reader: Reader,
        labels: Labels | None,
        options: DataOptions,
        expected_shape: ExpectedShape | None,
    ):
        self.path = path
        #: ``images``, ``arrays``, ``table`` or ``files`` (read by --preprocess)
        self.kind = kind
        #: the data files in reading order (paths as strings)
        self.files = files
        self.ignored = ignored
        self.reader = reader
        self.labels = labels
        self.options = options
        self.expected_shape = expected_shape
        #: per-sample shape (no batch axis); every batch is (N, *sample_shape)
        self.sample_shape: Shape = tuple(reader.sample_shape)
        #: counters of the most recent pass (bounded-memory evidence)
        self.stream_stats = StreamStats()
        #: one-sample files in DATA where ``--limit`` chose ``files`` spread over them (None: all read)
        self.files_in_data: int | None = None
        self._passes: list[DataIssues] = []
        self._reported = False

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    @property
    def total_samples(self) -> int | None:
        """Samples in DATA before skips, exclusions and ``limit`` (counts CSV rows on first use;
        None for an iterator given to the API, unknown until read)."""
        return self.reader.count()

    @property
    def num_samples(self) -> int | None:
        """Samples a pass will deliver at most: ``min(total, limit)``. Unreadable files and
        excluded NaN/Inf samples can make a pass deliver fewer (see :attr:`issues`)."""
        total = self.total_samples
        if total is None or self.options.limit is None:
            return self.options.limit if total is None else total
        return min(total, self.options.limit)

    @property
    def issues(self) -> DataIssues:
        """What the pass that got furthest skipped and excluded (empty before any pass)."""
        if not self._passes:
            return DataIssues(nonfinite_policy=self.options.nan)
        return max(self._passes, key=lambda i: (i.complete, i.scanned))

    def batches(self, batch_size: int | None = None) -> Iterator[Batch]:
        """Stream DATA as batches of ``batch_size`` samples (default ``options.batch_size``; the
        last batch may be smaller). Decoding runs ahead in ``options.workers`` threads; stop
        iterating at any time (the threads are stopped). Each call is a fresh pass."""
        size = self.options.batch_size if batch_size is None else int(batch_size)
        if size < 1:
            raise DataError(f"batch size must be at least 1, not {size}.")
        issues = DataIssues(nonfinite_policy=self.options.nan)
        self._passes.append(issues)
        self.stream_stats = stats = StreamStats()
        config = StreamConfig(
            batch_size=size,
            sample_shape=self.sample_shape,
            limit=self.options.limit,
            nan=self.options.nan,
            strict=self.options.strict,
            workers=self.options.workers,
            prefetch=self.options.prefetch,
            has_labels=self.has_labels,
            shape_error=self.reader.shape_error,
        )
        return self._pass(self._tasks(size), config, issues, stats)

    def _pass(self, tasks: Iterator[Task], config: StreamConfig, issues: DataIssues, stats: StreamStats) -> Iterator[Batch]:
        yield from stream(tasks, config, issues, stats)
        if issues.delivered == 0:
            raise DataError(f"DATA {self.path} has no usable samples: {self._lost(issues) or 'nothing was read'}.")
        self._log_issues(issues)

    def _tasks(self, batch_size: int) -> Iterator[Task]:
        """The reader's tasks with their position among all samples and their labels."""
        raw = 0
        values = self.labels.values if self.labels is not None else None
        for task in self.reader.tasks(batch_size):
            task.raw_start = raw
            if values is not None:
                task.labels = values[raw : raw + task.count]
            raw += task.count
            yield task

    def _lost(self, issues: DataIssues) -> str:
        parts = []
        if issues.skipped_count:
            example = f" (e.g. {issues.skipped[0][0]}: {issues.skipped[0][1]})" if issues.skipped else ""
            parts.append(f"{issues.skipped_count} file(s) could not be used{example}")
        if issues.nonfinite and issues.nonfinite_policy == "exclude":
            parts.append(f"{issues.nonfinite} sample(s) with NaN or Inf were excluded")
        return "; ".join(parts)

    def _log_issues(self, issues: DataIssues) -> None:
        if self._reported or not issues.complete:
            return
        self._reported = True
        if issues.skipped_count:
            names = ", ".join(f"{path} ({reason})" for path, reason in issues.skipped)
            log.warning("skipped %d unreadable file(s): %s", issues.skipped_count, names)
        if issues.nonfinite:
            action = "excluded" if issues.nonfinite_policy == "exclude" else "kept (--nan keep)"
            log.warning(
                "%d sample(s) contain NaN or Inf and were %s: %s",
                issues.nonfinite,
                action,
                ", ".join(issues.nonfinite_examples),
            )

    def describe(self) -> dict[str, Any]:
        """JSON-friendly account of DATA: what was read, how, and what was left out."""
        issues = self.issues
        done = [p for p in self._passes if p.complete]
        out: dict[str, Any] = {
            "path": str(self.path),
            "kind": self.kind,
            "files": len(self.files),
            "samples": max(p.delivered for p in done) if done else self.num_samples,
            "samples_available": self.total_samples if self.files_in_data is None else self.files_in_data,
            "limit": self.options.limit,
            "sample_shape": list(self.sample_shape),
            "batch_size": self.options.batch_size,
            "workers": self.options.workers,
            "preprocessing": self.reader.preprocessing(),
            "labels": self.labels.describe() if self.labels is not None else None,
            **issues.describe(),
        }
        if self.files_in_data is not None:
            out["limit_spread"] = {"files": len(self.files), "of": self.files_in_data}
        if self.ignored:
            out["ignored_files"] = dict(self.ignored)
        if self.expected_shape is not None:
            out["model_input"] = [d for d in self.expected_shape]
        return out

    def collect(self, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Every sample (and label) in memory at once: for small data and tests only."""
        xs, ys = [], []
        for batch in self.batches(batch_size):
            xs.append(batch.x)
            if batch.y is not None:
                ys.append(batch.y)
        x = np.concatenate(xs)
        return x, (np.concatenate(ys) if ys else None)

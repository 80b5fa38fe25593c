""":func:`make_plan`: DATA as an ordered list of files that splits: into shards (``--shard K/N``, one process or
job each) and, inside an engine, into *blocks* (the unit of work a worker reads and runs).

Order and identity: the files are those :func:`bncheck.data.open_data` reads (a
local folder) or :func:`bncheck.data.remote.list_remote` lists (a URL), in the same
sorted order. Shard K of N is the contiguous run of files ``[K*F//N, (K+1)*F//N)`` of the F
files: balanced to one file, deterministic, and non-empty whenever F >= N. The *listing
digest* (sha256 of every relative name and size, before sharding) is recorded with partial
statistics, so parts made from different listings (files added, removed or rewritten between
two jobs of an array) are refused when merged.

Every choice the first files make for the whole data set is decided once, here, and pinned
in the options every block is read with: grayscale and layout of images, the feature columns
of tables. Labels are resolved once too (class folders are numbered over the whole listing)
and each block gets its slice.

A block of a URL DATA is copied to a local folder (:func:`remote.stage`) while it is read and
deleted afterwards.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from bncheck.data.dataset import Dataset, label_file, open_data, resolve_labels
from bncheck.data.discover import discover
from bncheck.data.issue_totals import rename_text
from bncheck.data.labels import Labels, folder_labels, read_label_file
from bncheck.data.memory import InMemoryData
from bncheck.data.plan import Block, DataPlan, slice_labels
from bncheck.data.readers import open_reader, reader_class
from bncheck.data.remote import RemoteListing, is_remote, list_remote, listing_digest
from bncheck.data.shapes import normalize_expected
from bncheck.data.shards import shard_range
from bncheck.data.spec import DataOptions
from bncheck.errors import BncheckError, DataError, UsageError

#: files staged for the driver's first look at URL DATA
PROBE_FILES = 8


def make_plan(
    data: str | Path,
    options: DataOptions,
    expected_shape,
    *,
    shard: tuple[int, int] | None = None,
    storage_options: dict[str, Any] | None = None,
    batch_size: int = 1,
) -> tuple[DataPlan, Dataset | None]:
    """Open DATA (a path or a URL) and describe it as files; returns the plan and, for local
    DATA, the :class:`Dataset` over all of it (None for a URL)."""
    if isinstance(data, InMemoryData):
        raise UsageError(f"DATA {data} is a Python object, which is read in this process only: use the local engine without --shard, or save it as .npy files.")
    if shard is not None and options.limit is not None:
        raise UsageError("--limit cannot be combined with --shard (each shard would be cut); drop one of them.")
    expected = normalize_expected(expected_shape)
    unlimited = replace(options, limit=None)
    if is_remote(data):
        return _remote_plan(str(data), unlimited, options.limit, expected, shard, storage_options or {}, batch_size), None
    return _local_plan(Path(data), unlimited, options.limit, expected, shard, batch_size)


def _local_plan(data: Path, options: DataOptions, limit, expected, shard, batch_size) -> tuple[DataPlan, Dataset]:
    """The plan of a local file or folder. Without a shard, DATA is opened as a one-process
    run opens it. With one, every file is listed (for the listing digest and class-folder
    labels) but only the shard's files are inspected, except for one-sample files, where a
    reader over all of them costs one decoded file and makes the same choices for every shard
    (and for a labels file, which needs every file's sample count)."""
    if shard is None:  # --limit picks one-sample files spread over DATA, as a one-process run does
        dataset = open_data(data, replace(options, limit=limit), expected_shape=expected)
        files, kind, reader, labels = dataset.files, dataset.kind, dataset.reader, dataset.labels
        keep = range(len(files))
        covering = files
    else:
        found = discover(data, every_file=options.preprocess is not None, exclude=label_file(options.labels))
        files, kind = found.files, found.kind
        one_per_file = reader_class(kind).one_per_file
        keep = shard_range(len(files), shard, batch_size if one_per_file else 1)
        if not keep:
            raise DataError(f"--shard {shard[0] + 1}/{shard[1]} of DATA {data} holds no files ({len(files)} file(s) in all); use at most {len(files)} shards.")
        has_label_file = options.labels is not None and str(options.labels).lower() not in ("none", "folders")
        covering = files if one_per_file or has_label_file else files[keep.start : keep.stop]
        reader = open_reader(kind, covering, options, expected)
        labels = resolve_labels(options, found.root, found.is_folder, kind, files, reader)
        dataset = Dataset(path=data, kind=kind, files=files[keep.start : keep.stop], ignored=found.ignored, reader=reader,
                          labels=labels, options=options, expected_shape=expected)  # fmt: skip
    names = [os.path.relpath(f, data).replace(os.sep, "/") if data.is_dir() else data.name for f in files]
    sizes = [os.path.getsize(f) for f in files]
    counts = reader.file_counts(covering, rows_needed=labels is not None and labels.values is not None)
    if counts is not None and len(covering) != len(files):  # counts of the shard's files only
        counts = [0] * keep.start + counts + [0] * (len(files) - keep.stop)
    if labels is not None and labels.values is not None:
        labels = slice_labels(labels, counts, keep.start, keep.stop)
    plan = DataPlan(
        data=str(data),
        kind=kind,
        files=files[keep.start : keep.stop],
        names=names[keep.start : keep.stop],
        sizes=sizes[keep.start : keep.stop],
        listing=None,
        options=reader.pinned(options),
        limit=limit,
        expected_shape=expected,
        sample_shape=tuple(reader.sample_shape),
        labels=labels,
        counts=counts[keep.start : keep.stop] if counts is not None else None,
        shard=shard,
        total_files=len(files),
        digest=listing_digest(names, sizes),
        base_describe=dataset.describe(),
        first=files[0],
        file_offset=keep.start,
    )
    return plan, dataset


def _remote_plan(url, options, limit, expected, shard, storage_options, batch_size) -> DataPlan:
    listing = list_remote(url, every_file=options.preprocess is not None, storage_options=storage_options)
    total = len(listing.paths)
    keep = shard_range(total, shard, batch_size if reader_class(listing.kind).one_per_file else 1)
    if not keep:
        raise DataError(f"--shard {shard[0] + 1}/{shard[1]} of DATA {url} holds no files ({total} file(s) in all); use at most {total} shards.")
    one_per_file = reader_class(listing.kind).one_per_file
    labels = _remote_labels(listing, options)
    probe_end = min(keep.stop, keep.start + PROBE_FILES)
    plan = DataPlan(
        data=url,
        kind=listing.kind,
        files=listing.paths[keep.start : keep.stop],
        names=listing.relative[keep.start : keep.stop],
        sizes=listing.sizes[keep.start : keep.stop],
        listing=listing,
        options=options,
        limit=limit,
        expected_shape=expected,
        sample_shape=(),
        labels=None,
        counts=[1] * len(keep) if one_per_file else None,
        shard=shard,
        total_files=total,
        digest=listing.digest(),
        base_describe={},
        file_offset=keep.start,
        first=listing.url_of(keep.start),
    )
    with plan.staged(Block(0, 0, probe_end - keep.start)) as (local, rename):
        try:
            probe = _probe(plan, local, options, expected)
        except BncheckError as exc:
            raise type(exc)(rename_text(str(exc), rename)) from exc
        describe = probe.describe()
    plan.sample_shape = tuple(probe.sample_shape)
    plan.options = probe.reader.pinned(options)
    if labels is not None and labels.values is not None:
        labels = slice_labels(labels, [1] * total, keep.start, keep.stop)
    elif labels is None and listing.kind == "arrays" and options.labels is None and probe.reader.has_labels():
        labels = Labels(source="arrays")
    plan.labels = labels
    describe.pop("ignored_files", None)
    if listing.ignored:
        describe["ignored_files"] = dict(listing.ignored)
    describe["labels"] = labels.describe() if labels is not None else None
    describe["samples"] = plan.num_samples
    describe["samples_available"] = int(sum(plan.counts)) if plan.counts is not None else None
    plan.base_describe = describe
    return plan


def _probe(plan: DataPlan, local: list[str], options: DataOptions, expected) -> Dataset:
    reader = open_reader(plan.kind, local, options, expected)
    return Dataset(path=plan.data, kind=plan.kind, files=local, ignored={}, reader=reader, labels=None, options=options, expected_shape=expected)  # type: ignore[arg-type]


def _remote_labels(listing: RemoteListing, options: DataOptions) -> Labels | None:
    """Labels of a URL DATA, resolved over the whole listing (the rules of local DATA)."""
    choice = options.labels
    one_per_file = reader_class(listing.kind).one_per_file
    if choice is not None and str(choice).lower() == "none":
        return None
    if choice is not None and str(choice).lower() == "folders":
        found = folder_labels(Path(listing.root), listing.paths) if listing.is_folder and one_per_file else None
        if found is None:
            raise DataError(
                f"--labels folders needs images inside class folders (DATA/<class>/image.png), but {listing.url} "
                f"{'has files directly in it' if listing.is_folder else 'is a single object'}."
            )
        return found
    if choice is not None:
        if not one_per_file:
            raise UsageError(
                f"--labels FILE with {listing.kind} files at a URL is not supported (the rows per object are "
                "unknown until read); keep the labels inside the .npz/.pt files, or copy DATA locally."
            )
        labels = read_label_file(choice)
        if len(labels.values) != len(listing.paths):
            raise DataError(
                f"labels file {choice} has {len(labels.values)} labels but DATA has {len(listing.paths)} samples; "
                "give one label per sample, in sample order."
            )
        return labels
    if one_per_file and listing.is_folder:
        return folder_labels(Path(listing.root), listing.paths)
    return None



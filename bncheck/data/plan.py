"""DATA as an ordered list of files that splits: into shards (``--shard K/N``, one process or
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

import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.data import DataOptions, Labels, open_data
from bncheck.data.dataset import Dataset, _label_file, _reader, _resolve_labels
from bncheck.data.discover import discover
from bncheck.data.labels import folder_labels, read_label_file
from bncheck.data.loader import EXAMPLES, DataIssues, UnreadableFile
from bncheck.data.remote import RemoteListing, is_remote, list_remote, listing_digest, stage
from bncheck.data.shapes import normalize_expected, shape_text
from bncheck.errors import BncheckError, DataError, UsageError

#: decoded bytes a block aims at (its samples may be held once more for the subsample)
BLOCK_BYTES = 64 << 20
#: files staged for the driver's first look at URL DATA
PROBE_FILES = 8


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"3/8"`` -> ``(2, 8)``: the third of eight shares (K is 1-based on the command line,
    as in a job array's ``$SLURM_ARRAY_TASK_ID`` counted from 1; ``0/8`` is refused)."""
    if text is None:
        return None
    k, sep, n = str(text).partition("/")
    try:
        k_i, n_i = int(k), int(n)
    except ValueError:
        k_i = n_i = 0
    if not sep or n_i < 1 or not 1 <= k_i <= n_i:
        raise UsageError(f"--shard {text!r} must be K/N with 1 <= K <= N (e.g. 3/8 for the third of eight shares).")
    return k_i - 1, n_i


def shard_range(files: int, shard: tuple[int, int] | None, align: int = 1) -> range:
    """The file indices of shard ``(k, n)`` (0-based k) among ``files`` files.

    With ``align`` > 1 (the batch size, for one-sample files) the boundaries fall on multiples
    of ``align``, so a sharded run computes exactly the batches of a one-process run and the
    merged statistics equal its statistics to float64 rounding; that needs at least ``n``
    groups of ``align`` files, and below that the boundaries fall on single files."""
    if shard is None:
        return range(files)
    k, n = shard
    units = -(-files // align) if align > 1 else files
    if units < n:
        align, units = 1, files
    return range(min(files, (k * units // n) * align), min(files, ((k + 1) * units // n) * align))


@dataclass(frozen=True)
class Block:
    """Files ``start:stop`` of a plan (indices after sharding)."""

    index: int
    start: int
    stop: int
    #: deliver at most this many samples (the block where a --limit run ends)
    limit: int | None = None


@dataclass
class IssueTotals:
    """Skipped files and non-finite samples summed over blocks, examples in block order."""

    skipped_count: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    nonfinite: int = 0
    nonfinite_examples: list[str] = field(default_factory=list)
    delivered: int = 0
    #: samples in the files read (before skips, exclusions and the limit); None once a block
    #: did not say (one read only up to the limit)
    available: int | None = 0

    def add(self, issues: DataIssues | dict) -> None:
        d = issues if isinstance(issues, dict) else issue_dict(issues)
        more = d.get("available")
        self.available = None if self.available is None or more is None else self.available + int(more)
        self.skipped_count += d["skipped_count"]
        self.skipped += [tuple(s) for s in d["skipped"][: max(0, EXAMPLES - len(self.skipped))]]
        self.nonfinite += d["nonfinite"]
        self.nonfinite_examples += d["nonfinite_examples"][: max(0, EXAMPLES - len(self.nonfinite_examples))]
        self.delivered += d["delivered"]


def issue_dict(issues: DataIssues, rename: dict[str, str] | None = None, available: int | None = None) -> dict:
    """A picklable summary of one pass over a block; ``rename`` maps staged local paths back;
    ``available``: the samples in the block's files, when the pass read them all."""
    fix = (lambda s: rename_text(s, rename)) if rename else (lambda s: s)
    return {
        "skipped_count": issues.skipped_count,
        "skipped": [(fix(p), fix(r)) for p, r in issues.skipped],
        "nonfinite": issues.nonfinite,
        "nonfinite_examples": [fix(e) for e in issues.nonfinite_examples],
        "delivered": issues.delivered,
        "available": available,
    }


def rename_text(text: str, rename: dict[str, str]) -> str:
    """``text`` with staged local paths replaced by the URLs they were copied from."""
    for old, new in rename.items():
        text = text.replace(old, new)
    return text


@dataclass
class DataPlan:
    """DATA, opened once, as files that split into shards and blocks (see the module doc)."""

    data: str
    kind: str
    #: the files of this shard: local paths, or paths inside ``listing.fs`` for a URL
    files: list[str]
    #: their names relative to DATA (for the listing digest and messages)
    names: list[str]
    sizes: list[int]
    listing: RemoteListing | None
    #: the options every block is read with (choices pinned, no limit)
    options: DataOptions
    limit: int | None
    expected_shape: tuple | None
    sample_shape: tuple[int, ...]
    #: labels of ``files``: per raw sample (``values``), or "inside the array files" (no values)
    labels: Labels | None
    #: raw samples per file, where known
    counts: list[int] | None
    shard: tuple[int, int] | None
    total_files: int
    digest: str
    #: ``Dataset.describe()`` of what was opened to make the plan
    base_describe: dict[str, Any]
    #: the first file of DATA (in messages about shapes)
    first: str = ""
    #: index of ``files[0]`` among all files of DATA (not 0 for a shard)
    file_offset: int = 0

    @property
    def remote(self) -> bool:
        return self.listing is not None

    @property
    def num_samples(self) -> int | None:
        if self.counts is None:
            return None
        total = int(sum(self.counts))
        return total if self.limit is None else min(total, self.limit)

    def provenance(self) -> dict[str, Any]:
        """What identifies the files behind statistics of this plan (see :mod:`.shards`)."""
        return {
            "files": len(self.files),
            "listing_files": self.total_files,
            "listing_sha256": self.digest,
            "ranges": [[self.file_offset, self.file_offset + len(self.files)]],
            "shards": [self.shard[0]] if self.shard else [0],
            "of": self.shard[1] if self.shard else 1,
        }

    def blocks(self, *, workers: int, batch_size: int, target_bytes: int = BLOCK_BYTES) -> list[Block]:
        """Contiguous runs of files: about ``target_bytes`` of decoded samples each, and four
        per worker where there are enough files. Blocks of one-sample files hold a multiple of
        ``batch_size`` files (unless there are fewer batches than workers), so their batches are
        those of a one-process run."""
        count = len(self.files)
        if count == 0:
            return []
        sample_bytes = 4 * max(1, math.prod(self.sample_shape))
        cap = max(1, math.ceil(count / (4 * max(1, workers))))
        if self.kind in ("images", "files"):
            per = max(1, min(cap, target_bytes // sample_bytes))
            if per < batch_size and math.ceil(count / batch_size) >= workers:
                per = batch_size  # whole batches first: fewer blocks, but the batches of one process
            if per >= batch_size:
                per -= per % batch_size
            return [Block(i, s, min(s + per, count)) for i, s in enumerate(range(0, count, per))]
        weights = [c * sample_bytes for c in self.counts] if self.counts else list(self.sizes)
        out: list[Block] = []
        start, acc = 0, 0
        for i, w in enumerate(weights):
            acc += w
            if acc >= target_bytes or i + 1 - start >= cap or i == count - 1:
                out.append(Block(len(out), start, i + 1))
                start, acc = i + 1, 0
        return out

    def whole(self) -> Block:
        return Block(0, 0, len(self.files))

    @contextmanager
    def staged(self, block: Block) -> Iterator[tuple[list[str], dict[str, str]]]:
        """The block's files as local paths (copied into a temporary folder for a URL; the
        folder is deleted on exit) and the renaming that turns staged paths back into URLs."""
        if self.listing is None:
            yield self.files[block.start : block.stop], {}
            return
        with tempfile.TemporaryDirectory(prefix="bncheck-block-") as folder:
            offset = self.file_offset
            indices = range(offset + block.start, offset + block.stop)
            local = stage(self.listing, indices, Path(folder))
            root = self.listing.url.rstrip("/") if self.listing.is_folder else self.listing.url
            rename = {str(Path(folder)) + os.sep: root + "/"} if self.listing.is_folder else {local[0]: root} if local else {}
            yield local, rename

    def dataset(self, block: Block, local_files: list[str]) -> Dataset | list[tuple[str, str]]:
        """A :class:`Dataset` reading the block's (local) files with the pinned options, or,
        when no file of the block can be read at all, the (file, reason) of every file
        (a one-process run skips them; a block must not fail for them)."""
        options = replace(self.options, limit=block.limit)
        if not options.strict and self.kind in ("images", "files"):
            reasons = _all_unusable(self.kind, local_files, options)
            if reasons is not None:
                return reasons
        reader = _reader(self.kind, local_files, options, self.expected_shape)
        if tuple(reader.sample_shape) != tuple(self.sample_shape):
            raise DataError(
                f"{local_files[0]} gives samples of shape {shape_text(reader.sample_shape)} but {self.first} gives "
                f"{shape_text(self.sample_shape)}; every sample must have one shape"
                f"{' (resize images with --size H,W)' if self.kind == 'images' else ''}."
            )
        return Dataset(
            path=self.data,  # type: ignore[arg-type]  (a URL is not a Path; only printed)
            kind=self.kind,
            files=local_files,
            ignored={},
            reader=reader,
            labels=self._block_labels(block, reader),
            options=options,
            expected_shape=self.expected_shape,
        )

    def _block_labels(self, block: Block, reader) -> Labels | None:
        labels = self.labels
        if labels is None:
            return None
        if labels.values is None:  # label arrays inside the files
            return Labels(source="arrays") if reader.has_labels() else None
        counts = self.counts or []
        start = int(sum(counts[: block.start]))
        stop = start + int(sum(counts[block.start : block.stop]))
        return Labels(source=labels.source, classes=labels.classes, path=labels.path, values=labels.values[start:stop])

    def describe(self, totals: IssueTotals | None) -> dict[str, Any]:
        """``Dataset.describe()`` of this plan after a pass with ``totals``."""
        out = dict(self.base_describe)
        out["path"] = self.data
        out["files"] = len(self.files)
        if self.counts is not None:
            out["samples_available"] = int(sum(self.counts))
        out["limit"] = self.limit
        if self.shard is not None:
            out["shard"] = f"{self.shard[0] + 1}/{self.shard[1]}"
            out["files_in_data"] = self.total_files
        if totals is not None:
            if self.counts is None and self.limit is None:
                out["samples_available"] = totals.available
            out["samples"] = totals.delivered
            out["skipped_files"] = totals.skipped_count
            out["skipped_examples"] = [f"{p}: {r}" for p, r in totals.skipped]
            out["nonfinite_samples"] = totals.nonfinite
            out["nonfinite_examples"] = list(totals.nonfinite_examples)
        return out


def _all_unusable(kind: str, files: list[str], options: DataOptions) -> list[tuple[str, str]] | None:
    """(file, reason) for every file when none of them gives a sample; None as soon as one does."""
    reasons: list[tuple[str, str]] = []
    if kind == "images":
        from bncheck.data.images import open_image

        for path in files:
            try:
                open_image(path).close()
                return None
            except UnreadableFile as exc:
                reasons.append((path, str(exc)))
        return reasons
    from bncheck.data.custom import load_preprocess, run_preprocess

    fn = load_preprocess(options.preprocess or "")
    for path in files:
        if run_preprocess(fn, options.preprocess or "", Path(path)) is not None:
            return None
        reasons.append((path, "skipped by --preprocess"))
    return reasons


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
    if shard is None:
        dataset = open_data(data, options, expected_shape=expected)
        files, kind, reader, labels = dataset.files, dataset.kind, dataset.reader, dataset.labels
        keep = range(len(files))
        covering = files
    else:
        found = discover(data, every_file=options.preprocess is not None, exclude=_label_file(options.labels))
        files, kind = found.files, found.kind
        one_per_file = kind in ("images", "files")
        keep = shard_range(len(files), shard, batch_size if one_per_file else 1)
        if not keep:
            raise DataError(f"--shard {shard[0] + 1}/{shard[1]} of DATA {data} holds no files ({len(files)} file(s) in all); use at most {len(files)} shards.")
        label_file = options.labels is not None and str(options.labels).lower() not in ("none", "folders")
        covering = files if one_per_file or label_file else files[keep.start : keep.stop]
        reader = _reader(kind, covering, options, expected)
        labels = _resolve_labels(options, found.root, found.is_folder, kind, files, reader)
        dataset = Dataset(path=data, kind=kind, files=files[keep.start : keep.stop], ignored=found.ignored, reader=reader,
                          labels=labels, options=options, expected_shape=expected)  # fmt: skip
    names = [os.path.relpath(f, data).replace(os.sep, "/") if data.is_dir() else data.name for f in files]
    sizes = [os.path.getsize(f) for f in files]
    counts = _counts(kind, reader, covering, labels)
    if counts is not None and len(covering) != len(files):  # counts of the shard's files only
        counts = [0] * keep.start + counts + [0] * (len(files) - keep.stop)
    if labels is not None and labels.values is not None:
        labels = _slice(labels, counts, keep.start, keep.stop)
    plan = DataPlan(
        data=str(data),
        kind=kind,
        files=files[keep.start : keep.stop],
        names=names[keep.start : keep.stop],
        sizes=sizes[keep.start : keep.stop],
        listing=None,
        options=_pinned(options, reader),
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
    keep = shard_range(total, shard, batch_size if listing.kind in ("images", "files") else 1)
    if not keep:
        raise DataError(f"--shard {shard[0] + 1}/{shard[1]} of DATA {url} holds no files ({total} file(s) in all); use at most {total} shards.")
    one_per_file = listing.kind in ("images", "files")
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
    plan.options = _pinned(options, probe.reader)
    if labels is not None and labels.values is not None:
        labels = _slice(labels, [1] * total, keep.start, keep.stop)
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
    reader = _reader(plan.kind, local, options, expected)
    return Dataset(path=plan.data, kind=plan.kind, files=local, ignored={}, reader=reader, labels=None, options=options, expected_shape=expected)  # type: ignore[arg-type]


def _remote_labels(listing: RemoteListing, options: DataOptions) -> Labels | None:
    """Labels of a URL DATA, resolved over the whole listing (the rules of local DATA)."""
    choice = options.labels
    one_per_file = listing.kind in ("images", "files")
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


def _pinned(options: DataOptions, reader) -> DataOptions:
    """``options`` with the choices the first files made for the whole data set fixed."""
    plan = getattr(reader, "plan", None)
    if plan is not None:  # images: grayscale and layout
        images = replace(options.images, grayscale=plan.grayscale, layout=plan.layout)
        options = replace(options, images=images)
    schema = getattr(reader, "schema", None)
    if schema is not None:  # tables: the feature columns
        options = replace(options, columns=list(schema.columns))
    return options


def _counts(kind: str, reader, files: list[str], labels: Labels | None) -> list[int] | None:
    """Raw samples per file of ``files`` (those ``reader`` covers), where the reader knows them
    without reading the data; tables are counted (a pass over CSV rows) only when a labels
    file needs the counts."""
    if kind in ("images", "files"):
        return [1] * len(files)
    if kind == "arrays":
        per_file: Counter[str] = Counter()
        for part in reader.parts:
            per_file[str(part.path)] += part.count
        return [per_file[str(Path(f))] for f in files]
    if labels is not None and labels.values is not None:
        from bncheck.data.tables import count_rows

        rows = reader.schema.rows
        return [rows[Path(f)] if Path(f) in rows else count_rows(Path(f)) for f in files]
    return None


def _slice(labels: Labels, counts: list[int], start: int, stop: int) -> Labels:
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    return Labels(source=labels.source, classes=labels.classes, path=labels.path, values=labels.values[offsets[start] : offsets[stop]])

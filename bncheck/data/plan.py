r"""A :class:`DataPlan`: DATA, opened once, as an ordered list of files that splits into
shards and, inside an engine, into :class:`Block`\ s (the unit of work a worker reads and
runs). :func:`bncheck.data.planning.make_plan` makes one."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.data.dataset import Dataset
from bncheck.data.issue_totals import IssueTotals
from bncheck.data.labels import Labels
from bncheck.data.readers import open_reader, reader_class
from bncheck.data.remote import RemoteListing, stage
from bncheck.data.shapes import shape_text
from bncheck.data.spec import DataOptions
from bncheck.errors import DataError

#: decoded bytes a block aims at (its samples may be held once more for the subsample)
BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class Block:
    """Files ``start:stop`` of a plan (indices after sharding)."""

    index: int
    start: int
    stop: int
    #: deliver at most this many samples (the block where a --limit run ends)
    limit: int | None = None


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
        if reader_class(self.kind).one_per_file:
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
        if not options.strict and reader_class(self.kind).one_per_file:
            reasons = reader_class(self.kind).all_unusable(local_files, options)
            if reasons is not None:
                return reasons
        reader = open_reader(self.kind, local_files, options, self.expected_shape)
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
        if self.counts is not None and "limit_spread" not in out:  # else: DATA's files, not those --limit read
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


def slice_labels(labels: Labels, counts: list[int], start: int, stop: int) -> Labels:
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    return Labels(source=labels.source, classes=labels.classes, path=labels.path, values=labels.values[offsets[start] : offsets[stop]])

"""The in-process engine: batches are decoded by background threads (``--workers``) and run
through the model in this process, one after the other.

For a local folder without ``--shard`` this is exactly what ``bncheck drift`` always did:
:func:`bncheck.data.open_data`, ``Dataset.batches`` and :func:`bncheck.engines.measure.measure`.
For a URL DATA or a shard the files come from a :class:`~bncheck.data.plan.DataPlan`: the
blocks are read one after the other (a URL's next block is copied while the current one
runs) and re-cut into batches of exactly ``batch_size``, so the batches, the statistics and
the subsample are those a run over a local copy of the same files gives.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from typing import Any

import numpy as np

from bncheck.backends.load import backend_for
from bncheck.data import open_data
from bncheck.data.holdout import HoldoutSplit
from bncheck.data.issue_totals import IssueTotals, issue_dict, rename_text
from bncheck.data.loader import Batch
from bncheck.data.plan import Block, DataPlan
from bncheck.data.planning import make_plan
from bncheck.data.remote import is_remote, listing_digest
from bncheck.engines.interface import DataSpec, Engine, ModelSpec, PassRequest, Session
from bncheck.engines.measure import LabelCheck, Measurement, measure, train_pass
from bncheck.errors import BncheckError, DataError


class LocalEngine(Engine):
    """Everything in this process."""

    name = "local"

    def session(self, source, data: DataSpec, options, *, layers: list[str], model: ModelSpec | None = None) -> LocalSession:
        return LocalSession(source, data, options, layers)

    def close(self) -> None:
        """Nothing to release."""


class LocalSession(Session):
    def __init__(self, source, data: DataSpec, options, layers: list[str]):
        self.source = source
        self.layers = list(layers)
        spec = source.input_spec()
        expected = spec.shape if spec else None
        self.plan: DataPlan | None = None
        self.dataset = None
        self._totals: IssueTotals | None = None
        if data.shard is None and not is_remote(data.data):
            self.dataset = open_data(data.data, options, expected_shape=expected)
            self.num_samples = self.dataset.num_samples
            self._provenance: dict[str, Any] | None = None
        else:
            self.plan, _ = make_plan(
                data.data, options, expected, shard=data.shard, storage_options=data.storage_options, batch_size=data.batch_size
            )
            self.num_samples = self.plan.num_samples

    def measure(self, request: PassRequest, *, on_batch: Callable[[int], None] | None = None, runner=None) -> Measurement:
        with ExitStack() as stack:
            if request.statistics is not None:
                runner = stack.enter_context(backend_for(self.source).with_statistics(self.source, request.statistics).runner(layers=request.layers))
            elif runner is None:
                runner = stack.enter_context(self.source.runner(layers=request.layers))
            batches = self.batches(request.batch_size, split=request.split, samples=request.samples)
            if request.mode == "eval":
                return measure(
                    runner, batches, keep=request.keep, keep_outputs=request.keep_outputs, on_batch=on_batch, keep_predictions=request.keep_predictions, seed=request.seed,
                    class_axis=request.class_axis, until=request.until, labels=self.label_check(),
                )  # fmt: skip
            return train_pass(runner, batches, request.layers, on_batch, until=request.until)

    def label_check(self) -> LabelCheck | None:
        """DATA's labels as a whole (their largest value, where from, whether ``--labels`` asked
        for them), for the pass to check against the model's classes at its first batch."""
        labels = getattr(self.dataset, "labels", None)
        if labels is None or labels.values is None or not len(labels.values):
            return None
        asked = self.dataset.options.labels is not None and str(self.dataset.options.labels).lower() != "none"
        return LabelCheck(int(np.max(labels.values)), labels.source, asked)

    def batches(self, batch_size: int, *, split: HoldoutSplit | None = None, samples: int | None = None) -> Iterator[Batch]:
        """One pass over DATA as batches (``Dataset.batches``), for passes that are not
        moment merges (recalibrate's ``cumulative`` and ``ema`` methods); without the samples
        of ``split`` and at most ``samples`` of them (see :mod:`bncheck.data.holdout`)."""
        batches = self.dataset.batches(batch_size) if self.dataset is not None else self._stream(batch_size)
        if split is None and samples is None:
            return batches
        return (split or HoldoutSplit(0.0)).rest(batches, batch_size, samples)

    def describe(self) -> dict[str, Any]:
        if self.dataset is not None:
            return self.dataset.describe()
        return self.plan.describe(self._totals)  # type: ignore[union-attr]

    def provenance(self) -> dict[str, Any]:
        if self.plan is not None:
            return self.plan.provenance()
        if self._provenance is None:  # computed on demand: it stats every file
            root = self.dataset.path
            files = self.dataset.files
            names = [os.path.relpath(f, root).replace(os.sep, "/") if root.is_dir() else root.name for f in files]
            self._provenance = {
                "files": len(files),
                "listing_files": len(files),
                "listing_sha256": listing_digest(names, [os.path.getsize(f) for f in files]),
                "ranges": [[0, len(files)]],
                "shards": [0],
                "of": 1,
            }
        return self._provenance

    def close(self) -> None:
        """Nothing to release: every pass closes its runner, threads and block copies."""

    def _stream(self, batch_size: int) -> Iterator[Batch]:
        """The plan's blocks, in order, re-cut into batches of ``batch_size`` (the last one
        smaller); stops at the plan's limit."""
        plan = self.plan
        assert plan is not None
        self._totals = totals = IssueTotals()
        limit = plan.limit
        blocks = [plan.whole()] if not plan.remote else plan.blocks(workers=1, batch_size=batch_size)
        xs: list[np.ndarray] = []
        ys: list[np.ndarray | None] = []
        buffered = delivered = 0

        def take(n: int) -> Batch:
            nonlocal buffered, delivered
            x = np.concatenate(xs) if len(xs) > 1 else xs[0]
            y = None if any(v is None for v in ys) else (np.concatenate(ys) if len(ys) > 1 else ys[0])
            xs.clear()
            ys.clear()
            if len(x) > n:
                xs.append(x[n:])
                ys.append(y[n:] if y is not None else None)
                x, y = x[:n], (y[:n] if y is not None else None)
            batch = Batch(x=np.ascontiguousarray(x), y=y, index=delivered)
            buffered -= n
            delivered += n
            totals.delivered = delivered
            return batch

        for dataset, rename in _datasets(plan, blocks):
            if isinstance(dataset, list):  # every file of the block unusable
                totals.add({"skipped_count": len(dataset), "skipped": [(rename_text(p, rename), r) for p, r in dataset],
                            "nonfinite": 0, "nonfinite_examples": [], "delivered": 0, "available": len(dataset)})
                continue
            done = False
            try:
                for batch in dataset.batches(batch_size):
                    x, y = batch.x, batch.y
                    if limit is not None and delivered + buffered + len(x) >= limit:
                        x = x[: limit - delivered - buffered]
                        y = y[: len(x)] if y is not None else None
                        done = True
                    xs.append(x)
                    ys.append(y)
                    buffered += len(x)
                    while buffered >= batch_size:
                        yield take(batch_size)
                    if done:
                        break
            except DataError as exc:
                if not _empty_block(dataset):
                    raise type(exc)(rename_text(str(exc), rename)) from exc
            block_issues = issue_dict(dataset.issues, rename, None if done else dataset.total_samples)
            block_issues["delivered"] = 0  # counted by take()
            totals.add(block_issues)
            if done:
                break
        if buffered:
            yield take(buffered)
        if delivered == 0:
            raise DataError(f"DATA {plan.data} has no usable samples in {len(plan.files)} file(s); see the warnings above.")


def _empty_block(dataset) -> bool:
    """Whether a block's pass ended because nothing in it was usable (a whole run would go on)."""
    issues = dataset.issues
    return issues.complete and issues.delivered == 0


def _datasets(plan: DataPlan, blocks: list[Block]) -> Iterator[tuple[Any, dict[str, str]]]:
    """(Dataset or unusable-file list, renaming) of each block in order; for a URL DATA the
    next block is copied in the background while the current one is read, and each copy is
    deleted as soon as its block is done (or the pass stops)."""
    if not plan.remote:
        for block in blocks:
            with plan.staged(block) as (files, rename):
                yield plan.dataset(block, files), rename
        return

    def fetch(block: Block):
        context = plan.staged(block)
        return context, context.__enter__()

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bncheck-stage")
    pending = pool.submit(fetch, blocks[0]) if blocks else None
    try:
        for i, block in enumerate(blocks):
            context, (files, rename) = pending.result()  # type: ignore[union-attr]
            pending = pool.submit(fetch, blocks[i + 1]) if i + 1 < len(blocks) else None
            try:
                try:
                    dataset = plan.dataset(block, files)
                except BncheckError as exc:
                    raise type(exc)(rename_text(str(exc), rename)) from exc
                yield dataset, rename
            finally:
                context.__exit__(None, None, None)
    finally:
        if pending is not None:
            with suppress(Exception):  # a copy made ahead for a pass that stopped: delete it
                context, _ = pending.result()
                context.__exit__(None, None, None)
        pool.shutdown(wait=True)

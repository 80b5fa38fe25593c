"""``recalibrate --method exact`` level by level: every BN layer's statistics measured with
every layer upstream of it already at its final statistics, in one read of DATA when the
activations between levels fit the cache.

The network is cut before each *level* of BN layers (:mod:`bncheck.numerics.stages`: a
layer's level is 1 + the highest level of the BN layers its input depends on). Level 1 is
measured on a pass over DATA that keeps, per batch, the values crossing the first cut (the
*frontier*, :mod:`bncheck.backends.staged`); its statistics are then fixed, and level 2 runs
only the segment between the two cuts on the kept frontiers, and so on to the deepest level.
Each level's estimate is final when it is made: the result is the eval-mode fixed point of
the fixed-point iteration, without its up-to-depth whole-model passes.

Memory is bounded: frontiers are kept while their total stays within ``cache_bytes``
(``--cache-mb``); a batch whose frontier was not kept is read from DATA again and run through
the segments before it (a level with such batches reads DATA once more). The first level's
pass and every such re-read are counted in ``data_reads``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bncheck.backends.interface import Statistics
from bncheck.backends.staged import Frontier, StagedModel
from bncheck.commands.progress import step
from bncheck.engines.measure import add_bounded
from bncheck.numerics.moments import Moments, merge_all
from bncheck.numerics.recalibration import blend
from bncheck.report.stats_checks import check_measured


@dataclass
class StagedEstimate:
    #: the statistics of every estimated layer (the ``--prior`` blend applied)
    stats: Statistics
    #: per layer, the moments of what it sees with every layer upstream at its statistics
    moments: dict[str, Moments]
    samples: int
    #: what the report says of the passes: levels, data reads, batches kept, peak cache bytes
    record: dict[str, Any] = field(default_factory=dict)
    #: with ``outputs=True``, each batch's model output with every statistic estimated (as the
    #: backend returns it); None where not asked for or where not every last frontier was kept
    outputs: list[np.ndarray] | None = None


class _Cache:
    """Frontiers (and their batch sizes) by batch index while their total stays within
    ``budget`` bytes; ``peak`` is the most it held, with ``older`` (the cache being consumed)."""

    def __init__(self, budget: int, older: _Cache | None = None) -> None:
        self.budget = budget
        self.items: dict[int, tuple[int, Frontier, int]] = {}
        self.bytes = 0
        self.older = older
        self.peak = 0

    def offer(self, index: int, n: int, frontier: Frontier, size: int) -> None:
        if self.bytes + size <= self.budget:
            self.items[index] = (n, frontier, size)
            self.bytes += size
        self.peak = max(self.peak, self.bytes + (self.older.bytes if self.older is not None else 0))

    def pop(self, index: int) -> tuple[int, Frontier] | None:
        item = self.items.pop(index, None)
        if item is None:
            return None
        self.bytes -= item[2]
        return item[0], item[1]


def estimate_staged(
    staged: StagedModel, session, options, split, samples: int | None, stored: Statistics, population, adjust: Callable[[Statistics], Statistics] | None = None,
    *, outputs: bool = False,
) -> StagedEstimate:  # fmt: skip
    """The statistics of every layer of ``staged.plan``, level after level (module docstring).
    ``samples``: read at most this many (``--precision``'s count); ``population(moments)``:
    (mean, variance) to write from a layer's moments (``--variance``); ``adjust``: what a
    level's statistics become before the levels after it are measured with them (BN301 moves
    a subsample's statistics onto all of DATA's, :func:`bncheck.commands.drift_refine.refine`).
    ``outputs``: keep the deepest level's frontiers too (within the cache) and, once its
    statistics are set, run the rest of the model on them: the outputs of the model carrying
    every estimate, without another pass (BN301)."""
    plan = staged.plan
    depth = plan.depth
    budget = int(options.cache_mb * (1 << 20))
    stats: Statistics = {}
    seen: dict[str, Moments] = {}
    cache = _Cache(0)
    batches = read = peak = kept = total = 0
    for level in range(1, depth + 1):
        keeps = level < depth or outputs
        nxt = _Cache(budget if keeps else 0, cache)
        parts: dict[str, list[Moments]] = {}
        advance = step(f"exact, level {level} of {depth}: what its layers see", total=session.num_samples)

        def take(index: int, n: int, frontier: Frontier, level=level, nxt=nxt, parts=parts, advance=advance, keeps=keeps) -> None:
            add_bounded(parts, staged.moments(level, frontier))
            if keeps:
                nxt.offer(index, n, frontier, staged.nbytes(frontier))
            if advance is not None:
                advance(n)

        if level > 1 and len(cache.items) == batches:  # every frontier kept: DATA is not read
            for index in sorted(cache.items):
                n, frontier = cache.pop(index)  # type: ignore[misc]
                take(index, n, staged.advance(level - 1, frontier))
        else:
            read += 1
            batches = total = 0
            for index, batch in enumerate(session.batches(staged.batch or options.batch_size, split=split, samples=samples)):
                hit = cache.pop(index)
                frontier = _from_data(staged, batch.x, level) if hit is None else staged.advance(level - 1, hit[1])
                take(index, len(batch.x), frontier)
                batches, total = index + 1, total + len(batch.x)
        peak, kept = max(peak, nxt.peak), max(kept, len(nxt.items))
        if level < depth and len(nxt.items) == batches:  # the next level reads the cache only
            staged.release_below(level)
        cache = nxt
        cache.older = None
        merged = {name: merge_all(ms) for name, ms in parts.items()}
        check_measured(merged)
        level_stats = {name: blend(stored[name], population(m), options.prior, total) for name, m in merged.items() if m.count}
        if adjust is not None:
            level_stats = adjust(level_stats)
        staged.set_statistics(level_stats)
        stats.update(level_stats)
        seen.update(merged)
    record = {"levels": depth, "data_reads": read, "batches": batches, "batches_kept": kept, "cache_peak_bytes": peak, "cache_budget_bytes": budget}
    outs = _outputs(staged, cache, batches) if outputs and depth else None
    return StagedEstimate(stats=stats, moments=seen, samples=total, record=record, outputs=outs)


def _outputs(staged: StagedModel, cache: _Cache, batches: int) -> list[np.ndarray] | None:
    """The model's output of each batch from the deepest level's kept frontiers (None unless
    every one was kept and gives an array)."""
    if len(cache.items) != batches:
        return None
    outs = []
    for index in sorted(cache.items):
        _, frontier = cache.pop(index)  # type: ignore[misc]
        out = staged.output(frontier)
        if out is None:
            return None
        outs.append(out)
    return outs


def _from_data(staged: StagedModel, x, level: int) -> Frontier:
    """The frontier of ``level`` for a data batch: segment 0, then the segments up to it."""
    frontier = staged.start(x)
    for k in range(1, level):
        frontier = staged.advance(k, frontier)
    return frontier

"""Streaming: decoding tasks -> fixed-size batches, decoded ahead in background threads.

Flow for one pass (``workers`` >= 1)::

    task generator --submit--> thread pool (``workers`` threads, at most ``window`` samples
    in flight) --results in submission order--> batch assembly (skips, NaN policy, limit)
    --> bounded queue (``prefetch`` batches) --> the caller's ``for batch in ...`` loop

Generation, submission and assembly run in one producer thread, so reading (CSV chunks,
``.npz`` streams) and decoding overlap with whatever the caller does with a batch (running
the model). Memory is bounded by ``window + (prefetch + 2) * batch_size`` samples plus one
read chunk, whatever the size of DATA. Results are used in task order, so the batches are
the same for any number of workers, and concatenated batches are the same for any batch size.
``workers=0`` runs everything in the calling thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from bncheck.errors import DataError

log = logging.getLogger("bncheck.data")

#: how many skipped files / non-finite samples are named in the report and the log
EXAMPLES = 5


class UnreadableFile(Exception):
    """A file that exists but cannot be decoded: skipped (and counted) unless ``strict``."""


@dataclass
class Task:
    """``count`` consecutive samples of one source; ``load()`` decodes them."""

    count: int
    #: the file (and array key) for messages
    source: str
    #: position of the first sample within ``source``
    offset: int
    #: float32 array (count, *sample_shape); None skips the samples; may raise UnreadableFile
    load: Callable[[], np.ndarray | None]
    #: position of the first sample among all samples of DATA (set by the task generator)
    raw_start: int = 0
    labels: np.ndarray | None = None


@dataclass
class Batch:
    """``x``: float32, C-contiguous, (N, *sample_shape). ``y``: int64 (N,) labels or None.
    ``index``: position of ``x[0]`` among the samples delivered by this pass."""

    x: np.ndarray
    y: np.ndarray | None
    index: int

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class DataIssues:
    """What one pass left out or let through; counts cover the samples scanned so far."""

    #: (file, reason) of files that could not be decoded or that --preprocess skipped
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_count: int = 0
    #: samples containing NaN or +-Inf (excluded unless nan="keep")
    nonfinite: int = 0
    nonfinite_examples: list[str] = field(default_factory=list)
    nonfinite_policy: str = "exclude"
    #: raw samples looked at (delivered + skipped + excluded)
    scanned: int = 0
    delivered: int = 0
    complete: bool = False

    def describe(self) -> dict:
        return {
            "skipped_files": self.skipped_count,
            "skipped_examples": [f"{path}: {reason}" for path, reason in self.skipped],
            "nonfinite_samples": self.nonfinite,
            "nonfinite_policy": self.nonfinite_policy,
            "nonfinite_examples": list(self.nonfinite_examples),
        }


@dataclass
class StreamStats:
    """Counters that show the pipeline stays bounded (read by tests and benchmarks)."""

    live_samples: int = 0
    #: most samples decoded but not yet handed to the caller at any moment
    max_live_samples: int = 0
    #: most tasks submitted and not yet consumed at any moment
    max_pending_tasks: int = 0
    #: most batches waiting in the queue at any moment
    max_queued_batches: int = 0
    batches: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_live(self, n: int) -> None:
        with self._lock:
            self.live_samples += n
            self.max_live_samples = max(self.max_live_samples, self.live_samples)


class _End:
    pass


@dataclass
class _Failure:
    exc: BaseException


@dataclass
class StreamConfig:
    batch_size: int
    sample_shape: tuple[int, ...]
    limit: int | None
    nan: str
    strict: bool
    workers: int
    prefetch: int
    has_labels: bool
    #: the error for a sample whose shape differs from ``sample_shape``
    shape_error: Callable[[str, tuple[int, ...]], DataError]

    @property
    def window(self) -> int:
        """Samples submitted to the pool and not yet assembled."""
        return max(2 * self.batch_size, self.workers)


def stream(tasks: Iterable[Task], config: StreamConfig, issues: DataIssues, stats: StreamStats) -> Iterator[Batch]:
    """The batches of one pass (see the module docstring)."""
    if config.workers == 0:
        stop = threading.Event()
        for batch in _assemble(tasks, config, issues, stats, stop):
            stats.add_live(-len(batch))
            yield batch
        return
    yield from _threaded(tasks, config, issues, stats)


def _threaded(tasks: Iterable[Task], config: StreamConfig, issues: DataIssues, stats: StreamStats) -> Iterator[Batch]:
    ready: queue.Queue = queue.Queue(maxsize=config.prefetch)
    stop = threading.Event()
    batches = _assemble(tasks, config, issues, stats, stop)

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
            except queue.Full:
                continue
            stats.max_queued_batches = max(stats.max_queued_batches, ready.qsize())
            return True
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(_End())
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            put(_Failure(exc))
        finally:
            batches.close()

    producer = threading.Thread(target=produce, name="bncheck-data", daemon=True)
    producer.start()
    try:
        while True:
            item = ready.get()
            if isinstance(item, _End):
                return
            if isinstance(item, _Failure):
                raise item.exc
            stats.add_live(-len(item))
            yield item
    finally:
        stop.set()
        while producer.is_alive():
            try:
                while True:
                    ready.get_nowait()
            except queue.Empty:
                pass
            producer.join(timeout=0.05)


def _run(task: Task, stats: StreamStats) -> tuple[np.ndarray | None, str | None]:
    """Decode one task: (samples, None), or (None, reason) for a skipped file."""
    try:
        x = task.load()
    except UnreadableFile as exc:
        return None, str(exc)
    if x is None:
        return None, "skipped by --preprocess"
    stats.add_live(len(x))
    return x, None


def _results(
    tasks: Iterable[Task], config: StreamConfig, stats: StreamStats, stop: threading.Event
) -> Iterator[tuple[Task, np.ndarray | None, str | None]]:
    """(task, samples, skip reason) in task order; decoded in a pool when workers > 0."""
    if config.workers == 0:
        for task in tasks:
            yield (task, *_run(task, stats))
        return
    pool = ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="bncheck-decode")
    pending: deque[tuple[Task, Future]] = deque()
    pending_samples = 0
    try:
        iterator = iter(tasks)
        exhausted = False
        while not exhausted or pending:
            while not exhausted and pending_samples < config.window and not stop.is_set():
                task = next(iterator, None)
                if task is None:
                    exhausted = True
                    break
                pending.append((task, pool.submit(_run, task, stats)))
                pending_samples += task.count
                stats.max_pending_tasks = max(stats.max_pending_tasks, len(pending))
            if stop.is_set() or not pending:
                return
            task, future = pending.popleft()
            pending_samples -= task.count
            yield (task, *future.result())
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


class _BatchBuffer:
    """Decoded samples (and labels) waiting to be cut into batches of a fixed size."""

    def __init__(self, has_labels: bool):
        self.has_labels = has_labels
        self.xs: list[np.ndarray] = []
        self.ys: list[np.ndarray] = []
        self.buffered = 0
        self.delivered = 0

    def add(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.xs.append(x)
        if self.has_labels:
            self.ys.append(y)
        self.buffered += len(x)

    def take(self, n: int) -> Batch:
        """The next ``n`` buffered samples as one batch."""
        parts_x, parts_y, need = [], [], n
        while need:
            head = self.xs[0]
            if len(head) <= need:
                parts_x.append(self.xs.pop(0))
                if self.has_labels:
                    parts_y.append(self.ys.pop(0))
                need -= len(head)
            else:
                parts_x.append(head[:need])
                self.xs[0] = head[need:]
                if self.has_labels:
                    parts_y.append(self.ys[0][:need])
                    self.ys[0] = self.ys[0][need:]
                need = 0
        x = np.concatenate(parts_x) if len(parts_x) > 1 else parts_x[0].copy()
        y = (np.concatenate(parts_y) if len(parts_y) > 1 else parts_y[0].copy()) if self.has_labels else None
        batch = Batch(x=np.ascontiguousarray(x), y=y, index=self.delivered)
        self.buffered -= n
        self.delivered += n
        return batch


def _skip(task: Task, reason: str | None, config: StreamConfig, issues: DataIssues) -> None:
    """Count an unreadable file (or fail on it under --strict)."""
    if config.strict:
        raise DataError(f"cannot decode {task.source} ({reason}); remove or fix it, or drop --strict to skip unreadable files.")
    issues.skipped_count += 1
    if len(issues.skipped) < EXAMPLES:
        issues.skipped.append((task.source, str(reason)))


def _screen_nonfinite(
    task: Task, x: np.ndarray, y: np.ndarray | None, config: StreamConfig, issues: DataIssues, stats: StreamStats
) -> tuple[np.ndarray, np.ndarray | None]:
    """Count samples with NaN/Inf and apply ``--nan`` (fail, exclude or keep) to them."""
    finite = np.isfinite(x).all(axis=tuple(range(1, x.ndim)))
    if finite.all():
        return x, y
    bad = np.flatnonzero(~finite)
    if config.nan == "fail":
        where = _sample_name(task, int(bad[0]))
        raise DataError(f"{where} contains NaN or Inf; clean the data, or pass --nan exclude to leave such samples out.")
    issues.nonfinite += len(bad)
    for i in bad[: max(0, EXAMPLES - len(issues.nonfinite_examples))]:
        issues.nonfinite_examples.append(_sample_name(task, int(i)))
    if config.nan == "exclude":
        stats.add_live(-len(bad))
        return x[finite], (y[finite] if y is not None else None)
    return x, y


def _assemble(
    tasks: Iterable[Task], config: StreamConfig, issues: DataIssues, stats: StreamStats, stop: threading.Event
) -> Iterator[Batch]:
    """Decoded tasks -> batches of exactly ``batch_size`` (the last may be smaller)."""
    buffer = _BatchBuffer(config.has_labels)
    limit = config.limit

    def take(n: int) -> Batch:
        batch = buffer.take(n)
        issues.delivered = buffer.delivered
        stats.batches += 1
        return batch

    if limit is not None and limit <= 0:
        return
    for task, x, reason in _results(tasks, config, stats, stop):
        issues.scanned = task.raw_start + task.count
        if x is None:
            _skip(task, reason, config, issues)
            continue
        if tuple(x.shape[1:]) != config.sample_shape:
            raise config.shape_error(task.source, tuple(x.shape[1:]))
        x, y = _screen_nonfinite(task, x, task.labels, config, issues, stats)
        if limit is not None and buffer.delivered + buffer.buffered + len(x) > limit:
            keep = limit - buffer.delivered - buffer.buffered
            stats.add_live(-(len(x) - keep))
            x = x[:keep]
            y = y[:keep] if y is not None else None
        if len(x) == 0:
            continue
        buffer.add(x, y)
        while buffer.buffered >= config.batch_size:
            yield take(config.batch_size)
        if limit is not None and buffer.delivered + buffer.buffered >= limit:
            break
    if stop.is_set():  # the caller stopped iterating: an incomplete pass
        return
    if buffer.buffered:
        yield take(buffer.buffered)
    issues.complete = True


def _sample_name(task: Task, i: int) -> str:
    if task.count == 1 and task.offset == 0:
        return f"sample {task.raw_start + i} ({task.source})"
    return f"sample {task.raw_start + i} (row {task.offset + i} of {task.source})"

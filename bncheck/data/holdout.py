"""A held-out split of DATA and passes over the rest of it (``recalibrate``'s guard and
``--precision``).

A sample is held out by its position in the pass (``Batch.index`` + row), through a hash of
that position against ``fraction``: the split is the same in every pass, needs no sample count
and is spread over the whole of DATA (a folder sorted by class gives every class). The
held-out samples of the first pass are kept in memory, at most ``keep`` of them; the other
samples are re-cut into batches of exactly ``batch_size`` (the last one smaller), so a pass
over the rest is a pass over a smaller DATA.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from bncheck.data.loader import Batch

_MIX = np.uint64(0x9E3779B97F4A7C15)


def _hash(positions: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of ``positions`` (uint64), vectorised."""
    with np.errstate(over="ignore"):
        z = positions.astype(np.uint64) + np.uint64(seed + 1) * _MIX
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


class HoldoutSplit:
    """Which samples are held out (``fraction`` of them) and the first ``keep`` of those."""

    def __init__(self, fraction: float, *, keep: int = 512, seed: int = 0) -> None:
        self.fraction = float(fraction)
        self.keep = int(keep)
        self.seed = int(seed)
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray | None] = []
        self._kept = 0
        self._collecting = True
        #: samples held out in the first pass (kept or not)
        self.held = 0

    def held_mask(self, index: int, rows: int) -> np.ndarray:
        if self.fraction <= 0:
            return np.zeros(rows, bool)
        threshold = np.uint64(min(int(self.fraction * 2.0**64), 2**64 - 1))
        return _hash(np.arange(index, index + rows, dtype=np.uint64), self.seed) < threshold

    def _collect(self, x: np.ndarray, y: np.ndarray | None) -> None:
        self.held += len(x)
        room = self.keep - self._kept
        if room <= 0:
            return
        self._x.append(np.array(x[:room]))
        self._y.append(None if y is None else np.array(y[:room]))
        self._kept += min(room, len(x))

    def samples(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The kept held-out samples and their labels (None without labels)."""
        if not self._x:
            return None, None
        x = np.concatenate(self._x)
        y = None if any(v is None for v in self._y) else np.concatenate(self._y)
        return x, y

    def rest(self, batches, batch_size: int, samples: int | None = None) -> Iterator[Batch]:
        """The batches of the samples not held out, re-cut to ``batch_size``, at most
        ``samples`` of them; the held-out ones of the first pass are kept (see ``samples()``)."""
        collecting, self._collecting = self._collecting, False
        xs: list[np.ndarray] = []
        ys: list[np.ndarray | None] = []
        buffered = delivered = 0
        for batch in batches:
            mask = self.held_mask(batch.index, len(batch.x))
            if collecting and mask.any():
                self._collect(batch.x[mask], None if batch.y is None else batch.y[mask])
            keep = ~mask
            x = batch.x[keep] if mask.any() else batch.x
            y = None if batch.y is None else (batch.y[keep] if mask.any() else batch.y)
            if samples is not None:
                x, y = x[: samples - delivered - buffered], (None if y is None else y[: samples - delivered - buffered])
            if len(x):
                xs.append(x)
                ys.append(y)
                buffered += len(x)
            while buffered >= batch_size:
                out, xs, ys = _take(xs, ys, batch_size, delivered)
                buffered -= batch_size
                delivered += batch_size
                yield out
            if samples is not None and delivered + buffered >= samples:
                break
        if buffered:
            out, xs, ys = _take(xs, ys, buffered, delivered)
            yield out


def _take(xs: list, ys: list, n: int, index: int) -> tuple[Batch, list, list]:
    x = np.concatenate(xs) if len(xs) > 1 else xs[0]
    y = None if any(v is None for v in ys) else (np.concatenate(ys) if len(ys) > 1 else ys[0])
    rest_x, rest_y = ([x[n:]], [None if y is None else y[n:]]) if len(x) > n else ([], [])
    batch = Batch(x=np.ascontiguousarray(x[:n]), y=None if y is None else y[:n], index=index)
    return batch, rest_x, rest_y

"""Rows of one shape kept in a temporary file instead of memory: the stored inputs of a large
subsample (256 samples of 3 x 224 x 224 float32 are 154 MB, a third of what plain inference of
a ResNet-18 needs in all), so that what a drift run holds does not grow with the samples it
keeps.

:class:`SpilledRows` is the store, written row by row (``rows[slot] = x``, any order);
:meth:`SpilledRows.view` an array-like over some of its rows in a given order: ``len``,
``shape``, ``dtype``, slicing (a slice gives another view, nothing is read), an integer or an
index array (the rows are read), and ``numpy.asarray`` (the rows are read). Reads go through the
page cache with ``os.pread``: nothing is mapped into the process, so its resident memory holds a
batch at a time. The file is unlinked from the start and goes when the store is closed or
collected.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

#: a subsample whose stored inputs would take more than this many bytes in memory is kept in a
#: temporary file (:class:`SpilledRows`) instead (BN103's 64 samples of 3 x 224 x 224 are 38 MB)
SPILL_BYTES = 16 << 20


class SpilledRows:
    """``capacity`` rows of shape ``row_shape`` and type ``dtype`` in an unlinked temporary file."""

    def __init__(self, capacity: int, row_shape: tuple[int, ...], dtype) -> None:
        self.row_shape = tuple(int(d) for d in row_shape)
        self.dtype = np.dtype(dtype)
        self.capacity = int(capacity)
        self._row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._file = tempfile.TemporaryFile(prefix="bncheck-rows-")

    @property
    def nbytes(self) -> int:
        return self.capacity * self._row_bytes

    def __len__(self) -> int:
        return self.capacity

    def __setitem__(self, slot: int, row) -> None:
        slot = int(slot)
        if not 0 <= slot < self.capacity:
            raise IndexError(f"row {slot} outside 0..{self.capacity - 1}")
        data = np.ascontiguousarray(row, dtype=self.dtype)
        if data.shape != self.row_shape:
            raise ValueError(f"a row of shape {data.shape} in a store of rows {self.row_shape}")
        os.pwrite(self._file.fileno(), data.tobytes(), slot * self._row_bytes)

    def read(self, slots) -> np.ndarray:
        """The rows ``slots`` (a sequence of row numbers), in that order, as one array."""
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        out = np.empty((len(slots), *self.row_shape), dtype=self.dtype)
        flat = out.reshape(len(slots), -1).view(np.uint8) if len(slots) else None
        fd = self._file.fileno()
        start = 0
        while start < len(slots):  # consecutive rows are read in one call
            stop = start + 1
            while stop < len(slots) and slots[stop] == slots[stop - 1] + 1:
                stop += 1
            size = (stop - start) * self._row_bytes
            data = os.pread(fd, size, int(slots[start]) * self._row_bytes)
            if len(data) != size:
                raise OSError(f"the temporary file of the kept samples is short ({len(data)} of {size} bytes)")
            flat[start:stop] = np.frombuffer(data, np.uint8).reshape(stop - start, -1)
            start = stop
        return out

    def view(self, order=None) -> RowsView:
        """The rows ``order`` (default: all, in slot order) as an array-like, nothing read yet."""
        return RowsView(self, np.arange(self.capacity) if order is None else np.asarray(order, dtype=np.int64))

    def close(self) -> None:
        self._file.close()


class RowsView:
    """Some rows of a :class:`SpilledRows`, in a given order, read only when asked for."""

    def __init__(self, store: SpilledRows, order: np.ndarray) -> None:
        self._store = store
        self._order = order

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self._order), *self._store.row_shape)

    @property
    def dtype(self) -> np.dtype:
        return self._store.dtype

    @property
    def ndim(self) -> int:
        return 1 + len(self._store.row_shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return len(self._order)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return RowsView(self._store, self._order[key])
        if isinstance(key, (int, np.integer)):
            return self._store.read(self._order[[key]])[0]
        if isinstance(key, tuple):  # rows first, then numpy indexing of what was read
            return np.asarray(self[key[0]])[(slice(None), *key[1:])]
        return self._store.read(self._order[np.asarray(key)])

    def __array__(self, dtype=None, copy=None):
        out = self._store.read(self._order)
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"RowsView(shape={self.shape}, dtype={self.dtype}, in a temporary file)"


def row_store(capacity: int, row_shape: tuple[int, ...], dtype, *, spill_bytes: int | None = None):
    """An array of ``capacity`` rows in memory, or a :class:`SpilledRows` when it would take
    more than ``spill_bytes`` (default :data:`SPILL_BYTES`)."""
    limit = SPILL_BYTES if spill_bytes is None else spill_bytes
    nbytes = int(capacity) * int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if nbytes > limit:
        return SpilledRows(capacity, row_shape, dtype)
    return np.empty((int(capacity), *row_shape), dtype=dtype)


def ordered(store, n: int, order: np.ndarray):
    """The first ``n`` rows of ``store`` (an array or a :class:`SpilledRows`) in ``order``: those
    rows of the array reordered in place (:func:`permute_rows`), a :class:`RowsView` (nothing
    read) for a file."""
    if isinstance(store, SpilledRows):
        return store.view(np.arange(n)[order])
    return permute_rows(store[:n], order)


def permute_rows(rows: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``rows`` put in ``order`` (a permutation of its row indices: row ``i`` becomes what row
    ``order[i]`` was) in place, one row at a time along each cycle of the permutation: the
    memory of one row, where ``rows[order]`` would copy them all. Returns ``rows``."""
    order = np.asarray(order)
    done = np.zeros(len(order), bool)
    for start in range(len(order)):
        if done[start]:
            continue
        done[start] = True
        if order[start] == start:
            continue
        held, j = rows[start].copy(), start
        while (k := int(order[j])) != start:
            rows[j] = rows[k]
            done[k] = True
            j = k
        rows[j] = held
    return rows

"""The file-kept rows of a large subsample (bncheck.numerics.rows) and the reservoir that uses
them: the same samples, bit for bit, as in memory; a drift run whose subsample is kept in a
file gives the same report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import bncheck
from bncheck.commands.drift import DriftOptions
from bncheck.numerics import rows
from bncheck.numerics.reservoir import Reservoir
from bncheck.numerics.rows import RowsView, SpilledRows, row_store


def _rows(n=10, shape=(3, 4, 5)):
    return np.random.default_rng(0).normal(size=(n, *shape)).astype(np.float32)


def test_rows_written_in_any_order_read_back_exactly():
    x = _rows()
    store = SpilledRows(len(x), x.shape[1:], np.float32)
    for slot in np.random.default_rng(1).permutation(len(x)):
        store[slot] = x[slot]
    assert np.array_equal(store.read(range(len(x))), x)
    assert np.array_equal(store.read([7, 2, 3, 4, 0]), x[[7, 2, 3, 4, 0]])
    store[3] = x[9]  # a slot replaced, as the reservoir does
    assert np.array_equal(store.read([3]), x[9:10])


def test_view_behaves_like_the_array_it_stands_for():
    x = _rows(12)
    store = SpilledRows(len(x), x.shape[1:], np.float32)
    for i, row in enumerate(x):
        store[i] = row
    order = np.random.default_rng(2).permutation(len(x))
    view, ref = store.view(order), x[order]
    assert view.shape == ref.shape and view.dtype == ref.dtype and len(view) == len(ref) and view.ndim == 4
    assert view.size == ref.size
    sliced = view[2:9]
    assert isinstance(sliced, RowsView)  # slicing reads nothing
    assert np.array_equal(np.asarray(sliced), ref[2:9])
    assert np.array_equal(np.asarray(view[1::2]), ref[1::2])
    assert np.array_equal(np.asarray(view[:5][1:3]), ref[:5][1:3])
    assert np.array_equal(view[4], ref[4])
    assert np.array_equal(view[[0, 5, 5]], ref[[0, 5, 5]])
    assert np.array_equal(view[1:4, 0], ref[1:4, 0])
    assert np.asarray(view, dtype=np.float64).dtype == np.float64
    assert len(view[20:]) == 0 and np.asarray(view[20:]).shape == (0, 3, 4, 5)


def test_bad_rows_are_refused():
    store = SpilledRows(2, (3,), np.float32)
    with pytest.raises(IndexError):
        store[2] = np.zeros(3)
    with pytest.raises(ValueError, match="shape"):
        store[0] = np.zeros(4)


def test_row_store_spills_only_past_the_limit():
    assert isinstance(row_store(4, (3, 8, 8), np.float32, spill_bytes=1 << 20), np.ndarray)
    assert isinstance(row_store(4, (3, 8, 8), np.float32, spill_bytes=100), SpilledRows)


def test_reservoir_keeps_the_same_samples_in_a_file(monkeypatch):
    stream = [_rows(7, (2, 3)) + k for k in range(9)]

    def run():
        r = Reservoir(20, seed=3)
        for x in stream:
            r.offer(x, x.reshape(len(x), -1)[:, :4])
        return r.sample_all()

    in_memory = run()
    monkeypatch.setattr(rows, "SPILL_BYTES", 64)
    spilled = run()
    assert isinstance(spilled[0], RowsView) and isinstance(in_memory[0], np.ndarray)
    assert np.array_equal(np.asarray(spilled[0]), in_memory[0])
    assert np.array_equal(spilled[1], in_memory[1])


def test_a_drift_run_with_its_subsample_in_a_file_reports_the_same(monkeypatch):
    samples = Path(__file__).resolve().parents[2] / "sample_models"
    model, data = samples / "digits_cnn.onnx", samples / "data/digits/shifted"
    options = DriftOptions(mismatch_samples=96, train_pass="always")
    before = json.loads(bncheck.drift(model, data, options=options).to_json())
    monkeypatch.setattr(rows, "SPILL_BYTES", 1024)
    after = json.loads(bncheck.drift(model, data, options=options).to_json())
    for report in (before, after):
        report.pop("run", None)
    assert after == before


@pytest.mark.parametrize("shape", [(), (3,), (2, 4, 5)])
@pytest.mark.parametrize("seed", range(4))
def test_rows_permuted_in_place_are_the_fancy_indexed_copy(shape, seed):
    """The reservoir puts its kept samples in their random order where they lie (one row of
    scratch, no second copy of a 100 MB output array): the same rows as ``a[order]``."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(17, *shape)).astype(np.float32)
    for order in (rng.permutation(17), np.arange(17), np.roll(np.arange(17), 1)):
        b = a.copy()
        assert rows.permute_rows(b, order) is b
        assert np.array_equal(b, a[order])


def test_reservoir_hands_out_its_sample_once_and_the_same_again():
    r = Reservoir(8, seed=1)
    x = _rows(30)
    out = x.reshape(30, -1)[:, :7] * 2
    for i in range(0, 30, 4):
        r.offer(x[i : i + 4], out[i : i + 4])
    first = r.sample_all()
    again = r.sample_all()
    assert all(p is q for p, q in zip(first[:2], again[:2], strict=True))
    kept = [int(np.flatnonzero((x == row).all(axis=(1, 2, 3)))[0]) for row in first[0]]
    assert len(set(kept)) == 8 and np.array_equal(first[1], out[kept])  # each sample with its own output


def test_reservoir_without_outputs_keeps_the_inputs_only():
    full, bare = Reservoir(8, seed=2), Reservoir(8, seed=2, outputs=False)
    x = _rows(20)
    for i in range(0, 20, 5):
        full.offer(x[i : i + 5], x[i : i + 5] * 3)
        bare.offer(x[i : i + 5], x[i : i + 5] * 3)
    (fx, fo), (bx, bo) = full.sample(), bare.sample()
    assert np.array_equal(fx, bx) and fo.shape == (8, 3, 4, 5) and bo.shape == (8, 0)

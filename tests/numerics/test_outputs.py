"""bncheck.numerics.outputs against independent float64 references written as plain loops:
the batch axis of any layout, the class axis, per-position agreement and relative error."""

from __future__ import annotations

import numpy as np
import pytest

from bncheck.numerics import outputs as o


def test_batch_axis_follows_the_batch_size():
    assert o.batch_axis_of((32, 10), 32) == 0
    assert o.batch_axis_of((40, 32, 6625), 32) == 1  # time-major CTC
    assert o.batch_axis_of((7,), 32) is None
    # T == N: a batch of another size settles it
    assert o.batch_axis_of((32, 32, 12), 32, probe=((32, 1, 12), 1)) == 1
    assert o.batch_axis_of((32, 32, 12), 32) == 0  # no probe (fixed batch): the first candidate


@pytest.mark.parametrize(
    ("shape", "option", "batch_axis", "expected"),
    [
        ((10,), "auto", 0, 0),  # (N, C)
        ((40, 6625), "auto", 0, 1),  # (N, T, C)
        ((1, 64, 64), "auto", 0, None),  # detector map (N, 1, H, W)
        ((21, 64, 64), "auto", 0, None),  # dense maps have no class axis unless named
        ((1,), "auto", 0, None),  # a regressor / single logit
        ((21, 64, 64), 1, 0, 0),  # segmentation: --class-axis 1 of (N, 21, H, W)
        ((40, 6625), -1, 1, 1),  # (T, N, C) given as -1
        ((40, 6625), 2, 1, 1),  # (T, N, C) given as 2
        ((10,), "none", 0, None),
    ],
)
def test_class_axis(shape, option, batch_axis, expected):
    assert o.class_axis_of(shape, option, batch_axis=batch_axis) == expected


def test_class_axis_errors():
    with pytest.raises(ValueError, match="batch axis"):
        o.class_axis_of((40, 10), 1, batch_axis=1)
    with pytest.raises(ValueError, match="outside"):
        o.class_axis_of((10,), 5)


def _reference(a: np.ndarray, b: np.ndarray, class_axis: int | None):
    """Plain loops in float64: relative error, and agreement per position over the class axis."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = sum(float(v) ** 2 for v in (b64 - a64).ravel())
    den = sum(float(v) ** 2 for v in a64.ravel())
    rel = (num / den) ** 0.5
    if class_axis is None:
        return rel, None
    agree = total = 0
    moved_a = np.moveaxis(a64, class_axis + 1, -1)
    moved_b = np.moveaxis(b64, class_axis + 1, -1)
    for index in np.ndindex(moved_a.shape[:-1]):
        scores_a, scores_b = list(moved_a[index]), list(moved_b[index])
        agree += scores_a.index(max(scores_a)) == scores_b.index(max(scores_b))
        total += 1
    return rel, agree / total


@pytest.mark.parametrize(
    ("shape", "class_axis"),
    [((16, 10), 0), ((8, 40, 30), 1), ((6, 5, 7, 9), 0), ((6, 1, 12, 12), None), ((20, 1), None)],
)
@pytest.mark.parametrize("chunk", [o.COMPARE_CHUNK, 7, 1])  # one chunk, several, one sample each
def test_compare_matches_float64_loops(shape, class_axis, chunk, monkeypatch):
    monkeypatch.setattr(o, "COMPARE_CHUNK", chunk)
    rng = np.random.default_rng(3)
    a = rng.normal(size=shape).astype(np.float32)
    b = (a + 0.4 * rng.normal(size=shape)).astype(np.float32)
    got = o.compare(a, b, class_axis)
    rel, agreement = _reference(a, b, class_axis)
    assert got.relative_error == pytest.approx(rel, rel=1e-12)
    if agreement is None:
        assert got.agreement is None and got.positions is None
    else:
        assert got.agreement == pytest.approx(agreement, abs=1e-15)
        assert got.positions == int(np.prod(np.moveaxis(a, class_axis + 1, -1).shape[1:-1]))
        assert got.flips == round((1 - agreement) * a.size / a.shape[class_axis + 1])
    # per-sample errors: ||diff_i|| / rms ||a_i||, whose root mean square is the relative error
    assert float(np.sqrt(np.mean(got.sample_errors**2))) == pytest.approx(rel, rel=1e-12)


@pytest.mark.parametrize(("shape", "class_axis"), [((16, 10), 0), ((8, 40, 30), 1), ((6, 1, 12, 12), None)])
@pytest.mark.parametrize("sizes", [[16], [5, 5, 6], [1] * 16, [3, 13]])
def test_compare_batch_by_batch_is_compare_of_the_whole(shape, class_axis, sizes):
    """BN301's noise floor and BN201 compare each batch as it comes (none kept): the same
    figures, bit for bit, as comparing the whole arrays; a short stream is refused."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(16, *shape[1:])).astype(np.float32)
    b = (a + 0.3 * rng.normal(size=a.shape)).astype(np.float32)
    cuts = np.cumsum([0, *sizes])
    got = o.compare_batches(a, (b[i:j] for i, j in zip(cuts[:-1], cuts[1:], strict=True)), class_axis)
    whole = o.compare(a, b, class_axis)
    assert got.relative_error == whole.relative_error and got.agreement == whole.agreement
    assert np.array_equal(got.sample_errors, whole.sample_errors)
    assert (got.sample_flips is None) == (whole.sample_flips is None)
    if whole.sample_flips is not None:
        assert np.array_equal(got.sample_flips, whole.sample_flips) and got.positions == whole.positions
    with pytest.raises(ValueError, match="15 outputs to compare with 16"):
        o.compare_batches(a, iter([b[:15]]), class_axis)


@pytest.mark.parametrize("chunk", [1 << 19, 50, 1])
@pytest.mark.parametrize("kind", ["logits", "probabilities", "log-probabilities"])
def test_confidence_in_chunks_matches_the_whole_softmax(kind, chunk, monkeypatch):
    monkeypatch.setattr(o, "COMPARE_CHUNK", chunk)
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 3, (9, 12, 25))  # (N, T, classes), the class axis last
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = float(np.mean(probs.max(-1)))
    given = {"logits": logits, "probabilities": probs, "log-probabilities": np.log(probs)}[kind]
    assert o.confidence(given.astype(np.float32), 1) == pytest.approx(expected, rel=1e-6)
    assert o.confidence(np.moveaxis(given, 2, 1), 0) == pytest.approx(expected, rel=1e-12)  # classes first


def test_compare_refuses_different_shapes():
    with pytest.raises(ValueError, match="cannot be compared"):
        o.compare(np.zeros((4, 3)), np.zeros((3, 4)), 0)


def test_accuracy_needs_one_class_per_sample():
    out = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert o.accuracy(out, np.array([1, 0, 0]), 0) == pytest.approx(2 / 3)
    assert o.accuracy(np.zeros((3, 4, 5)), np.array([1, 0, 0]), 1) is None  # 4 positions per sample
    assert o.accuracy(out, None, 0) is None


def test_batch_first_moves_time_major_outputs():
    t_n_c = np.arange(5 * 3 * 4).reshape(5, 3, 4)
    moved = o.batch_first(t_n_c, 1)
    assert moved.shape == (3, 5, 4) and np.array_equal(moved[2, 4], t_n_c[4, 2])

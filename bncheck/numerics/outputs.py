"""Comparing model outputs of any structure: where the batch axis is, where the classes are,
and how two sets of outputs of the same samples differ.

* The **batch axis** is the output axis whose length follows the batch size: axis 0 for
  ``(N, C)`` and ``(N, T, C)``, axis 1 for a time-major CTC output ``(T, N, C)``.
  :func:`batch_axis_of` finds it from one or two (batch size, output shape) observations.
* Outputs are compared **batch first** (:func:`batch_first`), sample by sample.
* The **class axis** (:func:`class_axis_of`) is an axis of the per-sample output: the last one
  for a per-sample rank of 1 or 2 (``(C,)`` scores, ``(T, C)`` sequences); dense maps (per-sample
  rank 3 or more, ``(C, H, W)``) and regressors whose class axis would have length 1 have none
  unless the user names one (``--class-axis``, counted in the model's own output, batch axis
  included, negative from the end). With a class axis, outputs are compared **per position**
  (every index of the other axes) by their argmax; without, by relative error.

All functions are pure numpy (float64 arithmetic); the drift analyses of BN201/BN301 and the
accuracy of labelled runs use them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: ``--class-axis`` values besides an integer
CLASS_AXIS_AUTO = "auto"
CLASS_AXIS_NONE = "none"


def batch_axis_of(shape: tuple[int, ...], n: int, probe: tuple[tuple[int, ...], int] | None = None) -> int | None:
    """The axis of an output of ``shape`` (from a batch of ``n`` samples) that follows the batch
    size, or None when no axis has length ``n``. When several do, ``probe`` — the output shape of
    a batch of another size and that size — decides; without one, the first candidate wins."""
    candidates = [k for k, d in enumerate(shape) if d == n]
    if probe is not None:
        probe_shape, probe_n = probe
        if len(probe_shape) == len(shape):
            kept = [k for k in candidates if probe_shape[k] == probe_n]
            if kept:
                candidates = kept
    return candidates[0] if candidates else None


def batch_first(out: np.ndarray, axis: int | None) -> np.ndarray:
    """``out`` with its batch axis moved to the front (unchanged when ``axis`` is 0 or None)."""
    out = np.asarray(out)
    return out if not axis else np.moveaxis(out, axis, 0)


def class_axis_of(sample_shape: tuple[int, ...], option: int | str = CLASS_AXIS_AUTO, *, batch_axis: int = 0) -> int | None:
    """The class axis of a per-sample output of ``sample_shape`` (an axis index of the
    per-sample array), or None when the outputs have no classes.

    ``option``: ``"auto"`` (the rule in the module docstring), ``"none"`` (compare by relative
    error), or an axis of the model's output as the model returns it (batch axis included, at
    ``batch_axis``; negative counts from the end)."""
    rank = len(sample_shape)
    if option == CLASS_AXIS_NONE or rank == 0:
        return None
    if option == CLASS_AXIS_AUTO:
        if rank > 2 or sample_shape[-1] < 2:
            return None
        return rank - 1
    axis = int(option)
    full_rank = rank + 1
    if not -full_rank <= axis < full_rank:
        raise ValueError(f"--class-axis {axis} is outside an output of {full_rank} dimensions")
    axis %= full_rank
    if axis == batch_axis:
        raise ValueError(f"--class-axis {axis} is the batch axis of the output")
    return axis - 1 if axis > batch_axis else axis


def predictions(out: np.ndarray, class_axis: int | None) -> np.ndarray | None:
    """Argmax over the class axis at every position: ``(N, positions)`` from a batch-first
    ``out``; None without a class axis."""
    if class_axis is None:
        return None
    a = np.moveaxis(np.asarray(out), class_axis + 1, -1)
    return np.argmax(a.reshape(a.shape[0], -1, a.shape[-1]), axis=-1)


def sample_predictions(out: np.ndarray, class_axis: int | None) -> np.ndarray | None:
    """One predicted class per sample (``(N,)``), where the output has a class axis and a single
    position per sample (a classifier); None otherwise (per-sample labels cannot be compared)."""
    pred = predictions(out, class_axis)
    if pred is None or pred.shape[1] != 1:
        return None
    return pred[:, 0]


@dataclass
class OutputComparison:
    """How ``other`` differs from ``reference`` (batch-first outputs of the same samples)."""

    samples: int
    #: positions compared per sample (1 for a classifier, T for a sequence; None without classes)
    positions: int | None
    #: ``||other - reference||_2 / ||reference||_2`` over all outputs
    relative_error: float
    #: per sample, ``||other_i - reference_i||_2 / rms_i ||reference||`` (relative error of one sample)
    sample_errors: np.ndarray
    #: fraction of positions whose argmax agrees (None without classes)
    agreement: float | None = None
    #: per sample, the number of positions whose argmax differs (None without classes)
    sample_flips: np.ndarray | None = None

    @property
    def disagreement(self) -> float | None:
        return None if self.agreement is None else 1.0 - self.agreement

    @property
    def flips(self) -> int | None:
        return None if self.sample_flips is None else int(self.sample_flips.sum())

    def to_dict(self) -> dict:
        out: dict = {"samples": self.samples, "relative_error": self.relative_error}
        if self.agreement is not None:
            out.update(positions=self.positions, top1_agreement=self.agreement)
        return out


#: float64 elements of one chunk of :func:`compare` (a few MB: the copies stay in cache, and
#: a CTC recogniser's (96, 40, 6625) outputs need no 200 MB float64 copies)
COMPARE_CHUNK = 1 << 19


def compare(reference: np.ndarray, other: np.ndarray, class_axis: int | None) -> OutputComparison:
    """Compare two batch-first output arrays of the same shape (ValueError when they differ);
    the sums of squares in float64, a few samples at a time."""
    return ComparisonParts.of(reference, other, class_axis).comparison()


@dataclass
class ComparisonParts:
    """What :func:`compare` sums, per sample: a comparison gathered a batch at a time (the
    batches of a pass compared as they come, none of them kept), then joined (:meth:`join`)."""

    ref_sq: np.ndarray
    diff_sq: np.ndarray
    #: per sample, the positions whose argmax differs (None without classes)
    flips: np.ndarray | None
    positions: int | None

    @classmethod
    def of(cls, reference: np.ndarray, other: np.ndarray, class_axis: int | None) -> ComparisonParts:
        a, b = np.asarray(reference), np.asarray(other)
        if a.shape != b.shape:
            raise ValueError(f"outputs of shapes {a.shape} and {b.shape} cannot be compared")
        n = a.shape[0]
        ref_sq, diff_sq = _square_sums(a.reshape(n, -1), b.reshape(n, -1))
        pa, pb = predictions(a, class_axis), predictions(b, class_axis)  # float32 -> float64 keeps the order
        if pa is None or pb is None:
            return cls(ref_sq, diff_sq, None, None)
        return cls(ref_sq, diff_sq, np.count_nonzero(pa != pb, axis=1), int(pa.shape[1]))

    @classmethod
    def join(cls, parts: list[ComparisonParts]) -> ComparisonParts:
        """The parts of consecutive batches as one (ValueError for none)."""
        if not parts:
            raise ValueError("no outputs to compare")
        flips = None if any(p.flips is None for p in parts) else np.concatenate([p.flips for p in parts])
        return cls(np.concatenate([p.ref_sq for p in parts]), np.concatenate([p.diff_sq for p in parts]), flips, parts[0].positions)

    def comparison(self) -> OutputComparison:
        n = len(self.ref_sq)
        norm = float(np.sqrt(self.ref_sq.sum()))
        diff_norm = float(np.sqrt(self.diff_sq.sum()))
        rel = diff_norm / norm if norm > 0 else diff_norm
        rms = norm / np.sqrt(n) if norm > 0 else 1.0
        result = OutputComparison(n, None, rel, np.sqrt(self.diff_sq) / rms)
        if self.flips is not None and self.positions is not None:
            total = n * self.positions
            result.positions = self.positions
            result.sample_flips = self.flips
            result.agreement = float(1.0 - self.flips.sum() / total) if total else 1.0
        return result


def compare_batches(reference: np.ndarray, batches, class_axis: int | None) -> OutputComparison:
    """:func:`compare` of ``reference`` with the outputs that ``batches`` yields in order (each
    batch-first, compared with the rows of ``reference`` it follows, then let go): the other
    side is never held whole."""
    parts, start = [], 0
    for out in batches:
        out = np.asarray(out)
        parts.append(ComparisonParts.of(reference[start : start + len(out)], out, class_axis))
        start += len(out)
    if start != len(reference):
        raise ValueError(f"{start} outputs to compare with {len(reference)}")
    return ComparisonParts.join(parts).comparison()


def _square_sums(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, ``sum(a**2)`` and ``sum((b - a)**2)`` in float64 (rows of (n, k) arrays)."""
    n, k = a.shape
    ref_sq, diff_sq = np.zeros(n), np.zeros(n)
    step = max(1, COMPARE_CHUNK // max(1, k))
    for start in range(0, n, step):
        ra = a[start : start + step].astype(np.float64)
        d = b[start : start + step].astype(np.float64) - ra
        ref_sq[start : start + step] = np.einsum("ij,ij->i", ra, ra)
        diff_sq[start : start + step] = np.einsum("ij,ij->i", d, d)
    return ref_sq, diff_sq


def accuracy(out: np.ndarray, labels: np.ndarray | None, class_axis: int | None) -> float | None:
    """Top-1 accuracy of batch-first ``out`` against per-sample ``labels`` (None where the output
    has no single class per sample, or without labels)."""
    if labels is None:
        return None
    pred = sample_predictions(out, class_axis)
    labels = np.asarray(labels)
    if pred is None or labels.shape != pred.shape:
        return None
    return float(np.mean(pred == labels))


def confidence(out: np.ndarray, class_axis: int | None) -> float | None:
    """Mean confidence of batch-first outputs: with a class axis, the mean over positions of the
    top class's probability (the scores themselves where they are probabilities, their
    exponential where they are log-probabilities, else their softmax); without one, for outputs
    in [0, 1] (a probability map), the mean of |2p - 1|; None otherwise. A label-free sign of
    which statistics suit the data (normalisation that fits gives confident outputs: Wang et
    al., Tent, ICLR 2021, arXiv:2006.10726)."""
    a = np.asarray(out)
    if a.size == 0:
        return None
    if class_axis is None:
        if a.min() >= 0.0 and a.max() <= 1.0:
            return float(np.mean(np.abs(2.0 * a.astype(np.float64) - 1.0)))
        return None
    scores = np.moveaxis(a, class_axis + 1, -1)
    step = max(1, COMPARE_CHUNK // max(1, scores[0].size))
    chunks = [scores[start : start + step] for start in range(0, len(scores), step)]
    kind = _score_kind(chunks)
    total, count = 0.0, 0
    for chunk in chunks:  # a few samples at a time, in float64
        c = chunk.astype(np.float64)
        if kind == "probabilities":
            top = c.max(-1)
        elif kind == "log-probabilities":
            top = np.exp(c.max(-1))
        else:  # softmax: the top class's probability is 1 / sum(exp(s - max s))
            top = 1.0 / np.exp(c - c.max(-1, keepdims=True)).sum(-1)
        total += float(top.sum())
        count += top.size
    return total / count


def _score_kind(chunks: list[np.ndarray]) -> str:
    """Whether class scores are probabilities, log-probabilities or logits (every chunk must
    be of the kind)."""
    def all_of(test) -> bool:
        return all(test(chunk.astype(np.float64)) for chunk in chunks)

    if all_of(lambda c: c.min() >= 0.0 and np.allclose(c.sum(-1), 1.0, atol=1e-3)):
        return "probabilities"
    if all_of(lambda c: c.max() <= 0.0 and np.allclose(np.exp(c).sum(-1), 1.0, atol=1e-3)):
        return "log-probabilities"
    return "logits"

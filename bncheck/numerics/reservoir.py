"""A uniform random subsample of a stream (reservoir sampling), kept in bounded memory."""

from __future__ import annotations

import numpy as np

from bncheck.numerics.moments import SampleMoments
from bncheck.numerics.rows import ordered, permute_rows, row_store


class Reservoir:
    """A uniform random sample of at most ``size`` items of a stream (Vitter's algorithm R),
    with the eval-mode outputs of each kept sample: the bounded subsample of the train-mode
    analyses. Memory is ``size`` samples whatever the length of the stream (their inputs in a
    temporary file when they would take more than :data:`~bncheck.numerics.rows.SPILL_BYTES`:
    the subsample is then a :class:`~bncheck.numerics.rows.RowsView`); a fixed seed makes runs
    reproducible. ``outputs`` False keeps none of the outputs (a pass whose analyses need only
    the inputs: BN103's diagnosis; a CTC recogniser's 96 x 40 x 6,625 scores are 102 MB)."""

    def __init__(self, size: int, seed: int = 0, *, outputs: bool = True):
        self.size = int(size)
        self.keeps_outputs = bool(outputs)
        #: what :meth:`sample_all` handed out (its arrays are the reservoir's own, reordered)
        self._sampled: tuple | None = None
        self.seen = 0
        self._rng = np.random.default_rng(seed)
        self._x: np.ndarray | None = None
        self._out: np.ndarray | None = None
        self._y: np.ndarray | None = None
        #: whether every sample offered came with a label
        self.labelled = True
        #: layer -> (counts, means, m2s) of the kept samples' per-sample moments (None once a
        #: batch came without them: the layer's subsample moments need a pass of their own)
        self._moments: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray] | None] | None = None

    def offer(self, x: np.ndarray, outputs: np.ndarray, y: np.ndarray | None = None, moments: dict[str, SampleMoments] | None = None) -> None:
        """Offer the samples ``x`` with their (batch-first) ``outputs``, where known their
        labels ``y`` and their per-sample BN-input ``moments`` (layer -> the batch's).
        Outputs without one entry per sample are kept as empty per-sample arrays."""
        if self.size <= 0:
            return
        slots = self._slots(len(x))
        self._keep_moments(moments or {}, slots)
        outputs = np.asarray(outputs)
        if not self.keeps_outputs:
            outputs = np.zeros((len(x), 0), np.float32)
        if outputs.ndim == 0 or outputs.shape[0] != len(x) or (self._out is not None and outputs.shape[1:] != self._out.shape[1:]):
            # no axis follows the batch size, or the per-sample shape changes between batches:
            # the outputs cannot be kept per sample (the analyses that need them say so)
            self._out = np.zeros((self.size, 0), np.float32)
            outputs = np.zeros((len(x), 0), np.float32)
        if y is None:
            self.labelled = False
        if self._x is None:
            self._x = row_store(self.size, x.shape[1:], x.dtype)
            self._out = np.empty((self.size, *outputs.shape[1:]), dtype=outputs.dtype)
            if y is not None:
                y = np.asarray(y)
                self._y = np.empty((self.size, *y.shape[1:]), dtype=y.dtype)
        for i, slot in slots:
            self._x[slot] = x[i]
            self._out[slot] = outputs[i]
            if y is not None and self._y is not None:
                self._y[slot] = y[i]

    def _slots(self, n: int) -> list[tuple[int, int]]:
        """(sample of the batch, slot it replaces) for the next ``n`` samples of the stream
        (Algorithm R: the same random draws as one sample at a time)."""
        slots = []
        for i in range(n):
            slot = self.seen if self.seen < self.size else int(self._rng.integers(0, self.seen + 1))
            if slot < self.size:
                slots.append((i, slot))
            self.seen += 1
        return slots

    def _keep_moments(self, moments: dict[str, SampleMoments], slots: list[tuple[int, int]]) -> None:
        if self._moments is None:
            self._moments = {name: (np.zeros(self.size, np.int64), np.zeros((self.size, len(m.means[0]))), np.zeros((self.size, len(m.means[0])))) for name, m in moments.items() if len(m)}
        for name in list(self._moments):
            kept, m = self._moments[name], moments.get(name)
            if kept is None or m is None or kept[1].shape[1:] != m.means.shape[1:]:
                self._moments[name] = None
                continue
            for i, slot in slots:
                kept[0][slot], kept[1][slot], kept[2][slot] = m.counts[i], m.means[i], m.m2s[i]

    def sample(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The kept samples and their outputs, in a random order."""
        if self._x is None:
            return None, None
        x, out, _ = self.sample_labelled()
        return x, out

    def sample_labelled(self) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
        """The kept samples, their outputs and their labels (None unless every sample had one),
        in a random order."""
        if self._x is None or self._out is None:
            return None, None, None
        x, out, labels, _ = self.sample_all()
        return x, out, labels

    def sample_all(self) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, dict[str, SampleMoments]]:
        """:meth:`sample_labelled` and, in the same order, the kept samples' per-sample moments
        of every layer that had them in every batch. The kept inputs and outputs are put in
        that order where they lie (no second copy of them at the peak): the end of the stream,
        and every later call returns the same."""
        if self._x is None or self._out is None:
            return None, None, None, {}
        if self._sampled is not None:
            return self._sampled
        n = min(self.seen, self.size)
        order = self._rng.permutation(n)
        labels = self._y[:n][order] if self.labelled and self._y is not None else None
        kept = {name: v for name, v in (self._moments or {}).items() if v is not None}
        moments = {name: SampleMoments(c[:n][order], m[:n][order], q[:n][order]) for name, (c, m, q) in kept.items()}
        self._sampled = (ordered(self._x, n, order), permute_rows(self._out[:n], order), labels, moments)
        return self._sampled


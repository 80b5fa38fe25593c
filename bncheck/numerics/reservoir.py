"""A uniform random subsample of a stream (reservoir sampling), kept in bounded memory."""

from __future__ import annotations

import numpy as np


class Reservoir:
    """A uniform random sample of at most ``size`` items of a stream (Vitter's algorithm R),
    with the eval-mode outputs of each kept sample: the bounded subsample of the train-mode
    analyses. Memory is ``size`` samples whatever the length of the stream; a fixed seed makes
    runs reproducible."""

    def __init__(self, size: int, seed: int = 0):
        self.size = int(size)
        self.seen = 0
        self._rng = np.random.default_rng(seed)
        self._x: np.ndarray | None = None
        self._out: np.ndarray | None = None
        self._y: np.ndarray | None = None
        #: whether every sample offered came with a label
        self.labelled = True

    def offer(self, x: np.ndarray, outputs: np.ndarray, y: np.ndarray | None = None) -> None:
        """Offer the samples ``x`` with their (batch-first) ``outputs`` and, where known, their
        labels ``y``. Outputs without one entry per sample are kept as empty per-sample arrays."""
        if self.size <= 0:
            return
        outputs = np.asarray(outputs)
        if outputs.ndim == 0 or outputs.shape[0] != len(x) or (self._out is not None and outputs.shape[1:] != self._out.shape[1:]):
            # no axis follows the batch size, or the per-sample shape changes between batches:
            # the outputs cannot be kept per sample (the analyses that need them say so)
            self._out = np.zeros((self.size, 0), np.float32)
            outputs = np.zeros((len(x), 0), np.float32)
        if y is None:
            self.labelled = False
        if self._x is None:
            self._x = np.empty((self.size, *x.shape[1:]), dtype=x.dtype)
            self._out = np.empty((self.size, *outputs.shape[1:]), dtype=outputs.dtype)
            if y is not None:
                y = np.asarray(y)
                self._y = np.empty((self.size, *y.shape[1:]), dtype=y.dtype)
        for i in range(len(x)):
            slot = self.seen if self.seen < self.size else int(self._rng.integers(0, self.seen + 1))
            if slot < self.size:
                self._x[slot] = x[i]
                self._out[slot] = outputs[i]
                if y is not None and self._y is not None:
                    self._y[slot] = y[i]
            self.seen += 1

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
        n = min(self.seen, self.size)
        order = self._rng.permutation(n)
        labels = self._y[:n][order] if self.labelled and self._y is not None else None
        return self._x[:n][order], self._out[:n][order], labels

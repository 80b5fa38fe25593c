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

    def offer(self, x: np.ndarray, outputs: np.ndarray) -> None:
        if self.size <= 0:
            return
        outputs = np.asarray(outputs)
        if self._x is None:
            self._x = np.empty((self.size, *x.shape[1:]), dtype=x.dtype)
            self._out = np.empty((self.size, *outputs.shape[1:]), dtype=outputs.dtype)
        for i in range(len(x)):
            slot = self.seen if self.seen < self.size else int(self._rng.integers(0, self.seen + 1))
            if slot < self.size:
                self._x[slot] = x[i]
                self._out[slot] = outputs[i]
            self.seen += 1

    def sample(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The kept samples and their outputs, in a random order."""
        if self._x is None:
            return None, None
        n = min(self.seen, self.size)
        order = self._rng.permutation(n)
        return self._x[:n][order], self._out[:n][order]

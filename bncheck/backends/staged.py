"""A model run one segment at a time, for ``recalibrate --method exact``'s layer-by-layer
estimate (see :mod:`bncheck.numerics.stages` for the cut and
:mod:`bncheck.commands.recalibrate_staged` for the passes).

A *frontier* is what flows between segments: ``{value: array or tensor}``, the values of
``plan.frontiers[k]`` of one batch. ``start`` runs segment 0 on a data batch and gives the
frontier of level 1; ``advance(k, f)`` runs segment ``k`` (the level-``k`` BN layers with the
statistics given to :meth:`set_statistics`, and what follows them up to the next level's
inputs); ``moments(k, f)`` are the per-channel moments of the level-``k`` layers' inputs in
that frontier, exactly as a runner observes them (float64 merges, two-pass per batch).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from bncheck.errors import DataError, first_line
from bncheck.numerics.moments import Moments
from bncheck.numerics.stages import StagePlan

Frontier = dict[Any, Any]


class StagedModel(ABC):
    """A model cut into the segments of a :class:`StagePlan`; a context manager."""

    plan: StagePlan
    #: the batch size every segment runs at where the model fixes it (1: an ONNX model exported
    #: with a batch of one, as paddle2onnx and most dummy-input exports write; None: any)
    batch: int | None = None

    @abstractmethod
    def set_statistics(self, stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """The running statistics the BN layers named in ``stats`` normalise with from now on."""

    @abstractmethod
    def start(self, x: np.ndarray) -> Frontier:
        """Segment 0 on the batch ``x``: the frontier of level 1."""

    @abstractmethod
    def advance(self, k: int, frontier: Frontier) -> Frontier:
        """Segment ``k`` (1 <= k < depth) on ``frontier`` (level ``k``'s): level ``k + 1``'s
        (``k = depth``: the outputs, where the plan carries them)."""

    def output(self, frontier: Frontier) -> np.ndarray | None:
        """The model's first output (as the backend's runner returns it, before its batch axis
        is moved) from a frontier of the deepest level: its segment and all that follows, with
        the statistics set. None where the plan carries no output (``plan.outputs`` empty) or
        the value is not an array."""
        if not self.plan.outputs:
            return None
        return self._array(self.advance(self.plan.depth, frontier)[self.plan.outputs[0]])

    def _array(self, value) -> np.ndarray | None:
        return np.asarray(value)

    @abstractmethod
    def moments(self, k: int, frontier: Frontier) -> dict[str, Moments]:
        """Per-channel moments of the inputs of the level-``k`` layers in ``frontier``."""

    @abstractmethod
    def nbytes(self, frontier: Frontier) -> int:
        """Memory the frontier holds (each distinct array once)."""

    @abstractmethod
    def close(self) -> None:
        """Release the runtime; idempotent."""

    def release_below(self, k: int) -> None:  # noqa: B027 (an optional hook: nothing to let go of by default)
        """Let go of what runs the segments before ``k`` (their sessions: rebuilt should a
        batch need them again); called once every frontier of level ``k`` is kept."""

    def __enter__(self) -> StagedModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_failed(exc: BaseException, x) -> DataError:
    """The error for a batch the first segment cannot run on (a bad shape or type)."""
    return DataError(
        f"the model cannot run on a batch of shape {tuple(np.shape(x))} ({first_line(exc)}); check the data and its preprocessing options."
    )

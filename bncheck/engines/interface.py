"""The one interface every engine implements: a *session* over one model and one DATA, and
*passes* over the data inside it.

A pass runs every batch of DATA through the model and returns what
:func:`bncheck.engines.measure.measure` returns (a :class:`~bncheck.engines.measure.Measurement`): per-layer
:class:`~bncheck.numerics.moments.Moments` merged with Chan's update in float64, the number of
samples, and, when asked, a uniform random subsample of ``keep`` samples with their eval-mode
outputs (the input of the train-mode analyses BN201/BN301) and the predictions and labels of
every sample. Where the batches ran (this process, Ray actors) is the engine's business; the
result is the same up to the rounding of the merge order (rtol 1e-9 on the statistics).

A session loads the model in its workers once and keeps them for every pass: ``drift`` makes
one pass, ``recalibrate --method exact`` one per refinement step (with other running
statistics each time, ``PassRequest.statistics``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bncheck.closing import Closing

if TYPE_CHECKING:
    from bncheck.backends.interface import ModelSource
    from bncheck.backends.runner import ModelRunner
    from bncheck.engines.measure import Measurement

PASS_MODES = ("eval", "train")


@dataclass
class PassRequest:
    """One pass over DATA.

    ``mode``: ``eval`` observes the BN inputs with the stored running statistics in use
    (``ModelRunner.moments``); ``train`` makes every BN layer normalise with the statistics of
    its batch (``ModelRunner.train_moments``; batches of one sample are skipped).
    ``keep``: size of the uniform random subsample (eval only; 0 keeps none).
    ``statistics``: run the model with these running statistics instead of the stored ones
    (``{layer: (mean, var)}``, see :meth:`bncheck.backends.interface.Backend.with_statistics`).
    """

    layers: list[str]
    batch_size: int = 32
    mode: str = "eval"
    keep: int = 0
    #: keep the subsample's outputs too (False: only its inputs, for analyses that re-run the
    #: model on them; in-process engines only)
    keep_outputs: bool = True
    keep_predictions: bool = False
    statistics: dict[str, tuple[Any, Any]] | None = None
    seed: int = 0
    #: ``--class-axis`` for the per-sample predictions of ``keep_predictions``
    class_axis: int | str = "auto"
    #: leave out the samples of this :class:`~bncheck.data.holdout.HoldoutSplit` (the first
    #: pass keeps them for recalibrate's guard); in-process engines only
    split: Any = None
    #: read at most this many samples (after the split); in-process engines only
    samples: int | None = None
    #: a :class:`~bncheck.numerics.recalibration.PrecisionTracker` fed every batch's moments;
    #: the pass stops once it is ``done`` (``--precision``); in-process engines only
    until: Any = None

    def __post_init__(self) -> None:
        if self.mode not in PASS_MODES:
            raise ValueError(f"mode must be one of {PASS_MODES}, not {self.mode!r}")
        if self.mode == "train" and self.keep:
            raise ValueError("a train-mode pass keeps no subsample")

    @property
    def in_order(self) -> bool:
        """Whether the pass needs the batches in order in this process (split, samples, until)."""
        return self.split is not None or self.samples is not None or self.until is not None


@dataclass
class DataSpec:
    """Where DATA is and how a session reads it (beyond :class:`DataOptions`)."""

    #: a path or URL, or a :class:`bncheck.data.memory.InMemoryData` (the API's Python
    #: objects: read in this process only)
    data: Any
    #: ``(K, N)``: only the K-th of N deterministic shares of the files (0-based K)
    shard: tuple[int, int] | None = None
    #: options of the fsspec file system for URL DATA (endpoint_url, anon, profile...)
    storage_options: dict[str, Any] = field(default_factory=dict)
    #: the batch size of the passes: shard boundaries of one-sample files fall on its multiples
    batch_size: int = 1


@dataclass
class ModelSpec:
    """How a worker loads the model itself: the file and the options it was loaded with."""

    path: Path
    arch: str | None = None
    trust_pickle: bool = False
    #: where the workers run it: "cpu" or "cuda:N" (already resolved on the driver; Ray actors
    #: then ask for one GPU each and place the model on their own device)
    device: str = "cpu"


class Session(Closing):
    """One model and one DATA, ready for passes; a context manager."""

    #: samples a pass delivers at most, where known before reading (None for URL DATA of
    #: multi-sample files)
    num_samples: int | None = None

    @abstractmethod
    def measure(
        self,
        request: PassRequest,
        *,
        on_batch: Callable[[int], None] | None = None,
        runner: ModelRunner | None = None,
    ) -> Measurement:
        """Run one pass. ``on_batch(n)`` is called as samples are done (progress); ``runner``
        is an already open runner of the session's model that an in-process engine may use
        (ignored when ``request.statistics`` is given or by engines that run elsewhere)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """``Dataset.describe()`` for DATA as the last pass read it (files, samples,
        preprocessing, skipped files...)."""

    @abstractmethod
    def provenance(self) -> dict[str, Any]:
        """What identifies the files behind the statistics: ``{"files", "listing_sha256",
        "shards", "of"}`` (see :mod:`bncheck.report.stats_file`)."""

    def label_check(self) -> Any:
        """DATA's labels as a whole (a :class:`~bncheck.engines.measure.LabelCheck`: their
        largest value, where from, whether ``--labels`` asked for them), or None where this
        engine does not hold them in this process."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Release workers and temporary files; idempotent."""


class Engine(ABC):
    """Makes sessions. ``name`` is what ``--engine`` takes."""

    name: str = ""

    @abstractmethod
    def session(
        self,
        source: ModelSource,
        data: DataSpec,
        options: Any,
        *,
        layers: list[str],
        model: ModelSpec | None = None,
    ) -> Session:
        """A session over ``data`` read with ``options`` (:class:`DataOptions`), observing the
        BN ``layers`` of ``source``. ``model`` tells out-of-process workers how to load the
        model (engines that run in this process use ``source`` itself)."""

    @abstractmethod
    def close(self) -> None:
        """Release what the engine started for its sessions (a Ray runtime); idempotent."""

"""Running a model on data and observing what its batch-norm layers see.

One backend-neutral interface, :class:`ModelRunner`, implemented by
``torch_runner.TorchRunner`` and ``onnx_runner.OnnxRunner``. Statistics are computed inside the
runtime (torch ops, onnxruntime nodes); only per-channel (or per-sample-and-channel) vectors
leave it, never whole activations.

Conventions shared by every backend:

* ``x`` is a numpy batch ``(N, *sample_shape)``; it is cast to the model's input dtype.
* the channel axis of a BN input is axis 1; a layer's moments are taken over every other axis
  (all samples and spatial positions), see :mod:`bncheck.numerics.moments`.
* "eval" passes use the stored running statistics; "train" passes make every BN layer
  normalise with the statistics of the batch, as train mode does, while everything else
  (dropout...) stays in eval mode and the stored running statistics are never modified.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator

import numpy as np

from bncheck.backends.interface import InputSpec
from bncheck.closing import Closing
from bncheck.errors import DataError, UsageError, first_line
from bncheck.numerics.moments import Moments, SampleMoments, merge_all
from bncheck.numerics.outputs import batch_axis_of, batch_first

BN_MODES = ("eval", "train")


class ModelRunner(Closing):
    """Runs a model on numpy batches; a context manager (``close()`` releases the runtime and
    restores anything it changed on the model).

    Attributes:
        layers: names of the BN layers whose input is observed, in network order (the names of
            ``ModelSource.bn_layers()``).
        unhookable: BN layers whose input cannot be observed -> the reason.
        frozen: BN layers that keep normalising with their stored statistics in "train" passes
            (frozen BN modules do that in train mode too) -> the reason.
        channels: number of channels of every layer in ``layers``.
        input_spec: the input the model expects.
        batch_axis: the axis of the model's first output that follows the batch size (found on
            the first batch, see :func:`~bncheck.numerics.outputs.batch_axis_of`; None when no
            axis does). Every output the runner returns has it moved to the front, so a
            time-major ``(T, N, C)`` output comes back as ``(N, T, C)``.
    """

    layers: list[str]
    unhookable: dict[str, str]
    frozen: dict[str, str]
    channels: dict[str, int]
    input_spec: InputSpec
    batch_axis: int | None = None
    _axis_found: bool = False

    # ------------------------------------------------------------------ public API

    def moments(self, x: np.ndarray) -> tuple[np.ndarray | None, dict[str, Moments]]:
        """Eval-mode outputs (the model's first output; None from a runner of a truncated
        model, see ``Backend.first_layers_runner``) and, for every layer in ``layers``, the
        per-channel moments of the BN layer's *input* over this batch (count 0 when the layer
        was not reached)."""
        out, stats, _ = self._run_parts(self._prepare(x), lambda chunk: (*self._moments(chunk), {}))
        return out, stats

    def sample_moments(self, x: np.ndarray) -> tuple[np.ndarray | None, dict[str, Moments], dict[str, SampleMoments]]:
        """:meth:`moments`, and the per-sample moments of every layer whose runtime gives them
        (layers left out have none: a two-pass ONNX layer, a layer run twice in one pass).
        The batch moments are those :meth:`moments` returns."""
        x = self._prepare(x)
        out, stats, samples = self._run_parts(x, self._sample_moments)
        return out, stats, {name: s for name, s in _joined(samples).items() if len(s) == len(x)}

    def _run_parts(self, x: np.ndarray, run) -> tuple[np.ndarray | None, dict[str, Moments], list[dict[str, SampleMoments]]]:
        """``run`` (chunk -> outputs, moments, per-sample moments) over the parts of ``x``:
        the batch's outputs in its order, its merged moments and each part's per-sample
        moments (in the batch's order too). Samples :meth:`_lead` names run first, in a part
        of their own; the batch axis is found on the largest part."""
        lead = self._lead(x)
        order = None
        if lead is not None:  # a mask, not np.setdiff1d: that imports numpy.ma (20 ms a process)
            rest = np.ones(len(x), bool)
            rest[lead] = False
            order = np.concatenate([lead, np.flatnonzero(rest)])
        ordered = x if order is None else x[order]
        runs, stats, samples = [], [], []
        for chunk, real in self._parts(ordered, 0 if lead is None else len(lead)):
            out, moments, per_sample = run(chunk)
            runs.append((out, chunk, real))
            stats.append(_untiled(moments, len(chunk) // real))
            samples.append({name: m.take(slice(0, real)) for name, m in per_sample.items()} if real < len(chunk) else per_sample)
        outs: list = [None] * len(runs)
        for i in sorted(range(len(runs)), key=lambda i: -len(runs[i][1])):
            out, chunk, real = runs[i]
            outs[i] = _first(self._batch_first(out, chunk), real)
        out = _concat(outs)
        if order is not None:
            back = np.argsort(order)
            out = None if out is None else out[back]
            samples = [{name: m.take(back) for name, m in _joined(samples).items() if len(m) == len(x)}]
        return out, self._merged(stats), samples

    def forward(self, x: np.ndarray, *, bn: str = "eval") -> np.ndarray:
        """The model's first output, with BN in "eval" mode (stored statistics) or "train" mode
        (statistics of this batch; nothing stored is modified)."""
        if bn not in BN_MODES:
            raise UsageError(f"bn must be one of {', '.join(BN_MODES)}, not {bn!r}.")
        x = self._prepare(x)
        if bn == "train":
            self._check_train_batch(x)
            return self._batch_first(self._forward(x, "train"), x)
        return _concat([_first(self._batch_first(self._forward(chunk, "eval"), chunk), real) for chunk, real in self._parts(x)])

    def train_moments(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, Moments]]:
        """Outputs and per-layer input moments of one pass in which every BN layer normalises
        with the statistics of this batch (so the moments of a layer are exactly the batch
        statistics it normalises with)."""
        x = self._prepare(x)
        self._check_train_batch(x)
        out, moments = self._train_moments(x)
        return self._batch_first(out, x), self._merged([moments])

    @abstractmethod
    def close(self) -> None:
        """Release the runtime and restore what the runner changed on the model; idempotent."""

    def release(self) -> None:
        """Let go of what the runner rebuilds when next needed (an onnxruntime session and its
        memory arena): called between the passes of a command, so that one pass's runtime
        memory is not held through the next. The runner stays usable."""

    # ------------------------------------------------------------------ for subclasses

    @abstractmethod
    def _moments(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, Moments]]:
        """One chunk (already cast, batch size acceptable to the model)."""

    def _lead(self, x: np.ndarray) -> np.ndarray | None:
        """Indices of samples of batch ``x`` to run first, in a chunk of their own (None: the
        batch runs in order; the ONNX runner places its shifts on a few samples spread over
        its first batch)."""
        return None

    def _sample_moments(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, Moments], dict[str, SampleMoments]]:
        """One chunk's :meth:`_moments` and per-sample moments (none by default)."""
        out, moments = self._moments(x)
        return out, moments, {}

    @abstractmethod
    def _forward(self, x: np.ndarray, bn: str) -> np.ndarray: ...

    @abstractmethod
    def _train_moments(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, Moments]]: ...

    def _run_failed(self, exc: BaseException, x: np.ndarray) -> DataError:
        """The error to raise when the runtime rejects a batch (shape or type mismatch)."""
        first = first_line(exc)
        return DataError(
            f"the model cannot run on a batch of shape {tuple(x.shape)} ({first}); it expects input "
            f"{self.input_spec.describe()}: check the data and its preprocessing options."
        )

    # ------------------------------------------------------------------ helpers

    def _batch_first(self, out, x: np.ndarray) -> np.ndarray:
        """``out`` (the output of the batch ``x``) with its batch axis first. The axis is found
        on the first batch; when several axes have the batch's length (a (T, N, C) output with
        T == N) a one-sample eval run tells them apart, where the model's batch is dynamic.
        None (a runner of a truncated model has no outputs) stays None."""
        if out is None:
            return None
        out = np.asarray(out)
        n = len(x)
        if not self._axis_found:
            probe = None
            if sum(d == n for d in out.shape) > 1 and n > 1 and self.input_spec.batch is None:
                probe = (np.asarray(self._forward(x[:1], "eval")).shape, 1)
            self.batch_axis = batch_axis_of(out.shape, n, probe)
            self._axis_found = True
        axis = self.batch_axis
        if axis is None or out.ndim <= axis or out.shape[axis] != n:
            return out
        return batch_first(out, axis)

    def _prepare(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim < 1 or x.shape[0] == 0:
            raise DataError(f"cannot run the model on an empty batch (shape {tuple(x.shape)}).")
        self.input_spec.check(x.shape[1:])
        dtype = np.dtype(self.input_spec.dtype)
        if x.dtype != dtype:
            x = x.astype(dtype)
        return np.ascontiguousarray(x)

    def _chunks(self, x: np.ndarray) -> list[np.ndarray]:
        fixed = self.input_spec.batch
        if fixed is None or x.shape[0] == fixed:
            return [x]
        return [x[i : i + fixed] for i in range(0, x.shape[0], fixed)]

    def _parts(self, x: np.ndarray, lead: int = 0) -> Iterator[tuple[np.ndarray, int]]:
        """The chunks of ``x`` the runtime runs, each with how many of its first samples are
        real; ``lead``: the first ``lead`` samples run as a chunk of their own, and the rest is
        cut only once that chunk has run (its run tells the output's size a sample). A model
        exported with a fixed batch size B runs batches of B only (torch.onnx.export without
        dynamic axes): a last chunk of k < B samples runs as parts of d samples, d dividing B,
        each tiled B/d times, whose moments are those of its d samples counted B/d times (exact:
        scaled back by :func:`_untiled`) and whose outputs are the first d rows (DATA of 40
        samples, B = 32, ended the run with exit 2 after the first batch)."""
        fixed = self.input_spec.batch
        for chunk in self._lead_chunks(x, lead):
            if fixed is None or len(chunk) == fixed:
                yield chunk, len(chunk)
                continue
            rest = chunk
            while len(rest):
                d = max(q for q in range(1, len(rest) + 1) if fixed % q == 0)
                yield np.ascontiguousarray(np.concatenate([rest[:d]] * (fixed // d))), d
                rest = rest[d:]

    def _lead_chunks(self, x: np.ndarray, lead: int) -> Iterator[np.ndarray]:
        if lead:
            yield x[:lead]
            x = x[lead:]
        yield from self._chunks(x)

    def _check_train_batch(self, x: np.ndarray) -> None:
        fixed = self.input_spec.batch
        if fixed == 1:  # a batch of one has no batch statistics: no option can help
            raise DataError(
                "the model is exported with a fixed batch size of 1, so it cannot run train-mode batches (batch statistics need at "
                "least 2 samples); re-export it with a dynamic batch axis for train-mode passes (recalibrate's default --method exact needs none)."
            )
        if fixed is not None and x.shape[0] != fixed:
            raise DataError(
                f"the model is exported with a fixed batch size of {fixed}, so train-mode passes need batches of exactly "
                f"{fixed} (got {x.shape[0]}); set their batch size to {fixed} (drift: --train-batch-size, recalibrate: --batch-size)."
            )
        if x.shape[0] < 2:
            raise DataError(
                "train-mode batch statistics need at least 2 samples per batch; use a "
                "--train-batch-size of at least 2."
            )

    def _merged(self, per_chunk: list[dict[str, Moments]]) -> dict[str, Moments]:
        out: dict[str, Moments] = {}
        for name in self.layers:
            parts = [stats[name] for stats in per_chunk if name in stats]
            out[name] = merge_all(parts) if parts else Moments.empty(self.channels[name])
        return out


def _first(out: np.ndarray | None, real: int) -> np.ndarray | None:
    """The first ``real`` rows of a batch-first output (a tiled part's real samples)."""
    return out if out is None or out.ndim == 0 or len(out) == real else out[:real]


def _untiled(moments: dict[str, Moments], times: int) -> dict[str, Moments]:
    """Moments of a part whose samples ran ``times`` times each: the same mean and variance,
    ``times`` fewer elements."""
    if times == 1:
        return moments
    return {name: Moments(m.count // times, m.mean, m.m2 / times) for name, m in moments.items()}


def _joined(samples: list[dict[str, SampleMoments]]) -> dict[str, SampleMoments]:
    """Each layer's per-sample moments over the parts that all have them."""
    names = [name for name in samples[0] if all(name in part for part in samples)] if samples else []
    return {name: SampleMoments.concat([part[name] for part in samples]) for name in names}


def _concat(outputs: list[np.ndarray | None]) -> np.ndarray | None:
    if any(out is None for out in outputs):  # a runner of a truncated model: no outputs
        return None
    if len(outputs) == 1:
        return outputs[0]
    return np.concatenate(outputs, axis=0)


def select_layers(all_names: list[str], wanted: list[str] | None) -> set[str]:
    """The layer names to observe: ``wanted`` (all when None), checked against the model."""
    if wanted is None:
        return set(all_names)
    unknown = [name for name in wanted if name not in set(all_names)]
    if unknown:
        raise UsageError(
            f"the model has no BN layer named {', '.join(repr(n) for n in unknown[:5])}; "
            "`bncheck audit` lists the layer names."
        )
    return set(wanted)


def dedupe(names: list[str]) -> list[str]:
    """``names`` without repeats, first occurrence kept (a BN module called twice is one layer)."""
    return list(dict.fromkeys(names))

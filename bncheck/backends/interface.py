"""The one interface between the commands and the model families.

A command gets a :class:`ModelSource` (what was loaded) and its :class:`Backend` (what the
family can do with it: run, fold, convert, write, rewrite statistics) and never asks whether
the model came from torch or ONNX. ``backends.onnx.backend`` and ``backends.torch.backend``
implement it; :func:`bncheck.backends.load.backend_for` hands out the right one.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from bncheck.backends.device import resolve
from bncheck.errors import DataError, UsageError
from bncheck.layer import BNLayer
from bncheck.numerics.site_proof import SiteProof, unproved

if TYPE_CHECKING:
    from bncheck.backends.runner import ModelRunner
    from bncheck.backends.staged import StagedModel

#: layer name -> (running_mean, running_var) as float64 arrays
Statistics = dict[str, tuple[np.ndarray, np.ndarray]]
#: a batch for a model with several inputs: one array per input, in input order
Batch = tuple[np.ndarray, ...]
#: runs a model on a batch and returns every output as numpy
Executable = Callable[[Batch], list[np.ndarray]]


@dataclass(frozen=True)
class InputSpec:
    """The model input the runner feeds.

    ``shape`` is per sample (without the batch dimension); ``None`` entries are dynamic or
    unknown, and ``shape`` itself is ``None`` when not even the rank is known (a plain
    ``nn.Module``). ``batch`` is the batch size the model is fixed to, ``None`` when dynamic.
    """

    name: str
    shape: tuple[int | None, ...] | None
    dtype: str
    batch: int | None = None
    #: False for an input without a batch axis (a scalar flag beside the data, say)
    batched: bool = True

    def full_shape(self) -> tuple[int | None, ...] | None:
        """``(batch, *shape)``, the batch ``None`` where it is dynamic."""
        if self.shape is None:
            return None
        return (self.batch, *self.shape) if self.batched else self.shape

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.name!r} ({self.dtype}, shape unknown)"
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name!r} ({self.dtype}, per-sample shape ({dims}{',' if len(self.shape) == 1 else ''}))"

    def mismatch(self, sample_shape: tuple[int, ...]) -> str | None:
        """Why samples of ``sample_shape`` cannot be this input, or None when they may be."""
        if self.shape is None:
            return None
        sample_shape = tuple(int(d) for d in sample_shape)
        if len(sample_shape) != len(self.shape):
            return (
                f"the data samples have shape {sample_shape} ({len(sample_shape)} dimensions) but "
                f"the model input {self.describe()} has {len(self.shape)}"
            )
        for i, (want, got) in enumerate(zip(self.shape, sample_shape, strict=True)):
            if want is not None and want != got:
                return (
                    f"the data samples have shape {sample_shape} but the model input "
                    f"{self.describe()} needs {want} at dimension {i + 1}"
                )
        return None

    def check(self, sample_shape: tuple[int, ...]) -> None:
        """Raise a :class:`DataError` when samples of ``sample_shape`` cannot be fed."""
        problem = self.mismatch(sample_shape)
        if problem:
            raise DataError(
                f"{problem}; check the data and its preprocessing options (size, channels)."
            )



@dataclass
class ModelInfo:
    """What the report says about the model file."""

    path: str
    format: str
    sha256: str
    op_count: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {"path": self.path, "format": self.format, "sha256": self.sha256}
        out["op_count"] = self.op_count
        if self.notes:
            out["notes"] = list(self.notes)
        return out


class ModelSource(ABC):
    """A loaded model, whatever its file format."""

    #: short format name used in reports: onnx, torchscript, export, state_dict, pickle, module
    format: str = ""
    #: backend family: "torch" or "onnx" (for reports; commands ask the backend, not this)
    family: str = ""
    #: where its runners run the model: "cpu" or "cuda:N" (set by :meth:`Backend.place`)
    device: str = "cpu"
    #: the :class:`~bncheck.backends.runner.ModelRunner` that runs it (None: it cannot be run)
    runner_class: type[ModelRunner] | None = None

    def __init__(self, path: Path | None):
        self.path = path
        self.notes: list[str] = []

    @abstractmethod
    def bn_layers(self) -> list[BNLayer]:
        """Every batch-norm layer, in network order."""

    @abstractmethod
    def op_count(self) -> int:
        """Number of ops/modules in the model (for the "no batch-norm layers" message)."""

    def input_spec(self) -> InputSpec:
        """The model input a runner feeds: name, per-sample shape, dtype."""
        raise UsageError(f"a {self.format or 'model'} source cannot be run; drift and recalibrate need a runnable model.")

    def runner(self, *, layers: list[str] | None = None) -> ModelRunner:
        """A :class:`~bncheck.backends.runner.ModelRunner` that runs the model on numpy batches
        and observes the input of the BN layers named in ``layers`` (default: every one); use it
        as a context manager."""
        if self.runner_class is None:
            raise UsageError(f"a {self.format or 'model'} source cannot be run; drift and recalibrate need a runnable model.")
        return self.runner_class(self, layers=layers)

    @cached_property
    def sha256(self) -> str:
        if self.path is None or not Path(self.path).is_file():
            return ""
        return file_sha256(Path(self.path))

    def info(self) -> ModelInfo:
        return ModelInfo(
            path=str(self.path) if self.path is not None else "<in-memory>",
            format=self.format,
            sha256=self.sha256,
            op_count=self.op_count(),
            notes=list(self.notes),
        )


def check_shapes(name: str, mean: np.ndarray, var: np.ndarray, channels: int) -> None:
    """UsageError when the statistics for ``name`` do not have ``channels`` entries."""
    if mean.shape != (channels,) or var.shape != (channels,):
        raise UsageError(f"statistics for {name} have {mean.shape[0]} channels; the layer has {channels}.")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


#: ``folded``: merged into the producer's weights; ``kept``: still a BN (reason says why);
#: ``affine``: not foldable, replaced by a per-channel multiply-add (``--affine``).
FOLD_STATUSES = ("folded", "kept", "affine")


@dataclass
class FoldOutcome:
    """What happened to one BN layer."""

    status: str
    #: the op/module it was folded into (``folded`` only)
    into: str | None = None
    #: why (for ``kept``/``affine``: why it could not be folded)
    reason: str = ""
    #: ``producer``: into the op feeding the BN; ``consumer``: into the op(s) reading it (BN
    #: before a conv/linear; ``into`` then names every one of them)
    side: str = "producer"

    def to_dict(self) -> dict[str, Any]:
        data = {"status": self.status, "into": self.into, "reason": self.reason}
        if self.side != "producer":
            data["side"] = self.side
        return data


class SiteCheck(Protocol):
    """A folded site's proof, recorded by the backend while it folded (see :mod:`bncheck.numerics.site_proof`)."""

    def prove(self, atol: float, rtol: float) -> SiteProof: ...


@dataclass
class FoldedModel:
    """A backend's result: the folded model object and the per-layer outcomes."""

    #: onnx.ModelProto, nn.Module (GraphModule or patched copy), ScriptModule or ExportedProgram
    model: Any
    outcomes: dict[str, FoldOutcome]
    notes: list[str] = field(default_factory=list)
    #: backend facts the writer or the report needs (e.g. the state-dict layout)
    extras: dict[str, Any] = field(default_factory=dict)
    #: per folded layer, how to prove it on its own (a backend that proves sites from the
    #: graphs themselves leaves this empty and overrides :meth:`Backend.prove_sites`)
    site_checks: dict[str, SiteCheck] = field(default_factory=dict)
    #: why folded layers without a site check are not proved on their own ("": they fail)
    unproved_reason: str = ""

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes.values() if o.status == status)


class Backend(ABC):
    """What a model family does for the commands. One instance per family, stateless."""

    #: "onnx" or "torch"
    family: str = ""
    #: whether ``fold`` measures the speedup unless told (``--timing/--no-timing``)
    fold_timing_default: bool = True
    #: why it does not by default (a report note), when ``fold_timing_default`` is False
    fold_timing_note: str = ""
    #: whether fold's checks may run in threads beside its other work: the verification inputs
    #: are planned, and the original run on them, while the model is rewritten (the rewrite
    #: needs no example input), and ``prove_sites`` runs while the folded model is converted
    #: and verified (they share no state, and the runtime releases the GIL)
    checks_alongside: bool = False

    @abstractmethod
    def load(self, path: Path, fmt: str, *, arch: str | None, trust_pickle: bool) -> ModelSource:
        """The model in the file at ``path``, whose format :func:`~bncheck.backends.detect.sniff_format` found."""

    @abstractmethod
    def adopt(self, model: Any) -> ModelSource | None:
        """A source for an in-memory model object of this family, or None if it is not one."""

    def runner(self, source: ModelSource, *, layers: list[str] | None = None, threads: int | None = None) -> ModelRunner:
        """The runner that observes ``layers`` of ``source`` (see :class:`ModelRunner`);
        ``threads``: the threads the runtime may use (None: its default)."""
        return source.runner(layers=layers)

    def place(self, source: ModelSource, device: str | None) -> ModelSource:
        """``source``, its runners set to run on ``device`` (``--device``: cpu, cuda, cuda:N,
        auto; see :mod:`bncheck.backends.device`): exit 2 for a CUDA device this family's
        runtime cannot use, a fallback to the CPU with one sentence on stderr for auto."""
        source.device = resolve(device, lambda index: self.cuda_problem(index))
        return source

    def cuda_problem(self, index: int) -> str | None:
        """Why this family's runtime cannot run on CUDA device ``index`` (None: it can)."""
        return "this model family runs on the CPU only"

    def staged(self, source: ModelSource, layers: list[str]) -> tuple[StagedModel | None, str]:
        """``source`` cut before every level of the BN ``layers`` (see
        :mod:`bncheck.backends.staged`), or ``(None, why it cannot be)``: ``recalibrate
        --method exact`` then iterates whole-model passes instead."""
        return None, f"{self.family or 'this'} models are not cut into segments"

    @abstractmethod
    def first_layers_runner(self, source: ModelSource, layers: list[str]) -> ModelRunner:
        """A runner that computes only what the inputs of the BN ``layers`` need (the network
        up to them: an ONNX graph cut after them, a torch forward stopped once they were
        seen) and observes those layers; its ``moments`` return ``None`` for the outputs."""

    def cut_cost(self, source: ModelSource, layers: list[str], sample: np.ndarray) -> tuple[int, int] | None:
        """Multiply-adds of the network up to the BN ``layers`` (what :meth:`first_layers_runner`
        runs) and of the whole forward pass, on the one-sample batch ``sample``; None where
        this family cannot tell. BN103's diagnosis re-measures only the layers whose cut stays
        cheap."""
        return None

    @abstractmethod
    def input_specs(self, source: ModelSource) -> list[InputSpec] | None:
        """Every input the model declares, or None where the format does not say."""

    def concrete_inputs(self, source: ModelSource, specs: list[InputSpec]) -> tuple[list[InputSpec], str]:
        """``specs`` with their dynamic non-batch dimensions set to sizes the model accepts, and
        one sentence saying how they were found ("" when the backend leaves them as they are;
        dynamic specs come back with the sentence saying why no size was found)."""
        return specs, ""

    @abstractmethod
    def float_dtype(self, source: ModelSource) -> np.dtype:
        """The floating dtype inputs are given in when the model declares none."""

    @abstractmethod
    def output_kind(self, source: ModelSource, out: Path | None, to: str | None) -> str:
        """The kind of model file ``fold``/``recalibrate`` write for OUT and ``--to``
        (UsageError when this family cannot write it)."""

    @abstractmethod
    def fold(self, source: ModelSource, kind: str, *, affine: bool, example: Batch | None,
             keep: dict[str, str] | None = None) -> FoldedModel:
        """Fold the BN layers of ``source`` for an output of ``kind`` (``example``: an input
        batch where one is known); the layers named in ``keep`` stay, with that reason."""

    def needs_example(self, source: ModelSource, kind: str) -> bool:
        """Whether writing ``kind`` needs an example input (e.g. to export or trace)."""
        return False

    def infer_inputs(self, source: ModelSource, declared: list[InputSpec] | None) -> tuple[list[InputSpec], str] | None:
        """Concrete inputs the model accepts, found without the user's help (``declared``: what
        the model says of its inputs), and a sentence saying how; None when none was found."""
        return None

    def prove_sites(self, source: ModelSource, folded: FoldedModel, *, atol: float, rtol: float) -> dict[str, SiteProof]:
        """Every folded site checked on its own: the original producer -> BN pair (float64)
        against the folded op, on a random input built from the op's weights and attributes."""
        proofs = {}
        for name, outcome in folded.outcomes.items():
            if outcome.status != "folded":
                continue
            check = folded.site_checks.get(name)
            if check is not None:
                proofs[name] = check.prove(atol, rtol)
            elif folded.unproved_reason:
                proofs[name] = unproved(name, folded.unproved_reason, fails=False)
            else:
                proofs[name] = unproved(name, "the fold recorded no producer to prove it against")
        return proofs

    @abstractmethod
    def convert(self, source: ModelSource, folded: FoldedModel, kind: str, example: Batch) -> tuple[Any, list[str]]:
        """The object that is written for ``kind`` (and verified), and notes on how it was made."""

    @abstractmethod
    def executable(self, model: Any, kind: str | None = None, *, optimize: bool = False) -> Executable:
        """Runs ``model`` (a source, or an object of output ``kind``) on a batch; ``optimize``:
        with the runtime's own graph optimisations (for timing), else exactly as written."""

    @abstractmethod
    def timing_pair(self, source: ModelSource, folded: FoldedModel, batch: Batch) -> tuple[Callable[[], Any], Callable[[], Any], str]:
        """(original, folded, runtime description): zero-argument calls on ``batch`` to time."""

    @abstractmethod
    def fold_notes(self, source: ModelSource) -> list[str]:
        """What a fold report should say about this source beyond the per-layer outcomes."""

    @abstractmethod
    def write_folded(self, source: ModelSource, folded: FoldedModel, artifact: Any, kind: str, out: Path) -> list[Path]:
        """Write a folded model; returns the files written."""

    @abstractmethod
    def write_model(self, source: ModelSource, kind: str, out: Path, example: Batch | None = None) -> list[Path]:
        """Write ``source`` (e.g. one carrying recalibrated statistics) as ``kind``;
        ``example`` (samples of DATA) for a kind the model is converted to on an input."""

    @abstractmethod
    def with_statistics(self, source: ModelSource, stats: Statistics, *, num_batches: int | None = None) -> ModelSource:
        """A copy of ``source`` whose BN layers named in ``stats`` carry those running
        statistics (cast to each tensor's dtype); ``num_batches`` sets ``num_batches_tracked``."""

    def statistics_in_place(self, source: ModelSource, stats: Statistics):
        """A context manager under which ``source`` itself (and every runner open on it) carries
        ``stats``, restored on exit; None where a backend cannot (then :meth:`with_statistics`
        gives a copy, run by a runner of its own)."""
        return None

    @abstractmethod
    def counts(self, model: Any) -> tuple[int | None, int | None]:
        """(stored parameters, graph nodes) of a source's model or a folded model."""

    @abstractmethod
    def protected_paths(self, source: ModelSource) -> list[Path]:
        """Files that make up the model on disk (never to be written over)."""

    def files_on_disk(self, path: Path) -> list[Path]:
        """The files a model file of this family at ``path`` is made of, read before loading it."""
        return [path]

    def companions(self, source: ModelSource, out: Path) -> list[Path]:
        """Files written next to OUT for this source (e.g. ONNX external data)."""
        return []

    def file_size(self, source: ModelSource) -> int | None:
        """Bytes the model takes on disk, its companion files included."""
        return sum(p.stat().st_size for p in self.protected_paths(source) if p.is_file()) or None

    def load_folded_state(self, model: Any, path: Path) -> Any:
        """``model`` (the original architecture) carrying the folded state dict that ``fold``
        wrote to ``path``; only a family that writes state dicts can."""
        raise UsageError(
            f"a {type(model).__name__} cannot load a folded state dict; pass the torch module the state "
            "dict was folded from."
        )

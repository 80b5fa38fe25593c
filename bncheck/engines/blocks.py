"""Work that runs where the data is read: a :class:`BlockWorker` loads the model once and
runs passes over blocks of a :class:`~bncheck.data.plan.DataPlan`, returning per-block
moments and the few things the driver needs to reproduce a one-process run exactly.

Nothing here knows about Ray: :mod:`bncheck.engines.ray_engine` wraps a BlockWorker in an
actor. The model travels as a :class:`ModelPackage` (the file's bytes, ONNX external-data
files and an ``--arch file.py``), so workers on other machines need no shared file system
for it.

The driver merges the per-block results in block order (:func:`merge_blocks`), whatever the
order in which they finished, so two runs give the same bits; and it replays the
subsample of :class:`bncheck.numerics.reservoir.Reservoir` over the blocks in order
(:class:`ReplayReservoir`), fetching a block's samples only when one of them is taken.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.backends.load import backend_for, load_model
from bncheck.data.issue_totals import issue_dict, rename_text
from bncheck.data.plan import Block, DataPlan
from bncheck.engines.interface import ModelSpec, PassRequest
from bncheck.engines.measure import output_class_axis
from bncheck.errors import BncheckError, DataError, ModelLoadError
from bncheck.numerics.moments import Moments, merge_all
from bncheck.numerics.outputs import sample_predictions
from bncheck.numerics.reservoir import Reservoir
from bncheck.numerics.rows import row_store


@dataclass
class ModelPackage:
    """A model file and what loading it needs, as bytes (see the module docstring)."""

    #: relative name -> content
    files: dict[str, bytes]
    #: the model file's name in ``files``
    model: str
    #: ``--arch`` as given, or ``file.py:factory`` naming the shipped copy (relative)
    arch: str | None
    trust_pickle: bool
    sha256: str
    #: "cpu" or "cuda:N": where the worker runs the model
    device: str = "cpu"


def pack_model(spec: ModelSpec) -> ModelPackage:
    """Read the model file (and its ONNX external data, and an ``--arch file.py``)."""
    path = Path(spec.path)
    try:
        files = {path.name: path.read_bytes()}
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path} to send it to the workers ({exc.strerror or exc}).") from exc
    for extra in _onnx_external_files(path):
        files[extra] = (path.parent / extra).read_bytes()
    arch = spec.arch
    if arch:
        target, _, factory = arch.rpartition(":")
        if target.endswith(".py") and Path(target).is_file():
            name = "bncheck_arch_" + Path(target).name
            files[name] = Path(target).read_bytes()
            arch = f"{name}:{factory}"
    return ModelPackage(files, path.name, arch, spec.trust_pickle, hashlib.sha256(files[path.name]).hexdigest(), spec.device)


def _onnx_external_files(path: Path) -> list[str]:
    """Relative locations of the external tensor data an ONNX file refers to."""
    if path.suffix.lower() != ".onnx":
        return []
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not ONNX after all: the loader will say so
        return []
    found: list[str] = []
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value not in found:
                found.append(entry.value)
    return [f for f in found if (path.parent / f).is_file()]


def unpack_model(package: ModelPackage, folder: Path):
    """Write the package into ``folder`` and load the model from there."""
    for name, content in package.files.items():
        target = Path(folder) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    arch = package.arch
    if arch and arch.startswith("bncheck_arch_"):
        arch = str(Path(folder) / arch)
    source = load_model(Path(folder) / package.model, arch=arch, trust_pickle=package.trust_pickle)
    # a Ray actor that asked for a GPU sees it as its device 0 (CUDA_VISIBLE_DEVICES)
    return backend_for(source).place(source, "cpu" if package.device == "cpu" else "cuda:0")


@dataclass
class BlockResult:
    """What a worker returns for one block (small, except ``kept``)."""

    index: int
    #: per-layer moments of the block's samples, merged over its batches
    moments: dict[str, Moments]
    samples: int
    #: argmax of the outputs of every sample (``keep_predictions``)
    preds: np.ndarray | None
    #: labels of every sample, None when some sample has none
    labels: np.ndarray | None
    #: ``(x, outputs)`` of every sample for the subsample (``keep`` > 0); an engine may put
    #: it in its object store and return a reference instead
    kept: Any
    #: skipped files and non-finite samples (see ``issue_totals.issue_dict``)
    issues: dict
    #: per-layer moments of the block's even and odd batches (counted from its first batch)
    halves: tuple[dict[str, Moments], dict[str, Moments]] = ({}, {})
    #: the output axis that followed the batch size in the worker's runner (None: not known)
    batch_axis: int | None = None


class BlockWorker:
    """A model loaded once, and passes over blocks of one plan. ``threads``: the threads the
    runtime may use (the CPUs the worker reserved; None: the runtime's default)."""

    def __init__(self, package: ModelPackage, plan: DataPlan, threads: int | None = None):
        self._folder = tempfile.TemporaryDirectory(prefix="bncheck-model-")
        self.source = unpack_model(package, Path(self._folder.name))
        self.plan = plan
        self.threads = threads
        self._key: Any = None
        self._runner = None

    def runner(self, request: PassRequest):
        """The runner for ``request`` (its layers and statistics), kept while they stay."""
        key = (tuple(request.layers), _statistics_key(request.statistics))
        if key != self._key:
            self._close_runner()
            source = self.source
            if request.statistics is not None:
                source = backend_for(self.source).with_statistics(self.source, request.statistics)
            self._runner = backend_for(source).runner(source, layers=request.layers, threads=self.threads)
            self._key = key
        return self._runner

    def run(self, block: Block, request: PassRequest) -> BlockResult:
        runner = self.runner(request)
        with self.plan.staged(block) as (files, rename):
            try:
                return self._run(block, request, runner, files, rename)
            except BncheckError as exc:
                raise type(exc)(rename_text(str(exc), rename)) from exc

    def _run(self, block: Block, request: PassRequest, runner, files: list[str], rename: dict[str, str]) -> BlockResult:
        dataset = self.plan.dataset(block, files)
        if isinstance(dataset, list):  # no file of the block is usable: all skipped
            issues = {"skipped_count": len(dataset), "skipped": [(rename_text(p, rename), r) for p, r in dataset],
                      "nonfinite": 0, "nonfinite_examples": [], "delivered": 0, "available": len(dataset)}  # fmt: skip
            return self._result(block, runner, request, {}, 0, [], [], [], True, issues)
        parts: dict[str, list[Moments]] = {}
        halves: tuple[dict[str, list[Moments]], dict[str, list[Moments]]] = ({}, {})
        xs, outs, preds, labels = [], [], [], []
        labelled = True
        samples = batches = 0
        try:
            for batch in dataset.batches(request.batch_size):
                x = batch.x
                if request.mode == "train":
                    if len(x) < 2:
                        continue  # one sample has no batch statistics (as recalibrate skips it)
                    out, moments = runner.train_moments(x)
                else:
                    out, moments = runner.moments(x)
                for name, m in moments.items():
                    parts.setdefault(name, []).append(m)
                    halves[batches % 2].setdefault(name, []).append(m)
                batches += 1
                if request.keep:
                    xs.append(x)
                    outs.append(np.asarray(out))
                if request.keep_predictions:
                    pred = sample_predictions(out, output_class_axis(out, request.class_axis, runner.batch_axis))
                    if batch.y is None or pred is None:
                        labelled = False
                    else:
                        preds.append(pred)
                        labels.append(np.asarray(batch.y))
                samples += len(x)
        except DataError:
            issues = dataset.issues
            if not (issues.complete and issues.delivered == 0):  # not merely an all-skipped block
                raise
        kept = (np.concatenate(xs), np.concatenate(outs)) if xs else None
        available = dataset.total_samples if block.limit is None else None
        result = self._result(block, runner, request, parts, samples, preds, labels, kept, labelled, issue_dict(dataset.issues, rename, available))
        result.halves = tuple({name: merge_all(ms) for name, ms in h.items()} for h in halves)  # type: ignore[assignment]
        result.batch_axis = getattr(runner, "batch_axis", None)
        return result

    def _result(self, block, runner, request, parts, samples, preds, labels, kept, labelled, issues) -> BlockResult:
        moments = {
            name: merge_all(parts[name]) if parts.get(name) else Moments.empty(runner.channels[name])
            for name in runner.layers
        }
        return BlockResult(
            index=block.index,
            moments=moments,
            samples=samples,
            preds=np.concatenate(preds) if preds else (np.zeros(0, np.int64) if request.keep_predictions else None),
            labels=(np.concatenate(labels) if labels else np.zeros(0, np.int64)) if labelled and request.keep_predictions else None,
            kept=kept,
            issues=issues,
        )

    def _close_runner(self) -> None:
        if self._runner is not None:
            self._runner.close()
            self._runner = None
            self._key = None

    def close(self) -> None:
        self._close_runner()
        self._folder.cleanup()


def _statistics_key(statistics) -> str | None:
    if statistics is None:
        return None
    digest = hashlib.sha256()
    for name in sorted(statistics):
        mean, var = statistics[name]
        digest.update(name.encode("utf-8", "surrogatepass"))
        digest.update(np.ascontiguousarray(mean, np.float64).tobytes())
        digest.update(np.ascontiguousarray(var, np.float64).tobytes())
    return digest.hexdigest()


class ReplayReservoir(Reservoir):
    """:class:`bncheck.numerics.reservoir.Reservoir` fed in two steps, for samples that live elsewhere.

    :meth:`plan` decides, exactly as ``offer`` would for the next ``n`` samples of the stream
    and drawing the same random numbers, which of them enter which slot; :meth:`fill` stores
    them. Fed the blocks of a run in order, it keeps the samples a one-process run keeps,
    while a block's samples are fetched only when one of them is taken (at most ``size`` of
    the first samples and then rarer and rarer: about ``size * ln(N / size)`` in all)."""

    def plan(self, n: int) -> list[tuple[int, int]]:
        """``(position in the block, slot)`` for the samples taken; later pairs overwrite
        earlier ones with the same slot, as in ``offer``."""
        if self.size <= 0:
            return []
        taken = []
        for i in range(int(n)):
            slot = self.seen if self.seen < self.size else int(self._rng.integers(0, self.seen + 1))
            if slot < self.size:
                taken.append((i, slot))
            self.seen += 1
        return taken

    def fill(self, taken: list[tuple[int, int]], x: np.ndarray, outputs: np.ndarray, y: np.ndarray | None = None) -> None:
        """Store the samples ``taken`` of a block, with their labels ``y`` where known (a block
        without labels leaves the subsample unlabelled: see :meth:`unlabelled`)."""
        outputs = np.asarray(outputs)
        if self._x is None:
            self._x = row_store(self.size, x.shape[1:], x.dtype)
            self._out = np.empty((self.size, *outputs.shape[1:]), dtype=outputs.dtype)
        if y is None:
            self.labelled = False
        elif self._y is None:
            self._y = np.empty((self.size, *np.shape(y)[1:]), dtype=np.asarray(y).dtype)
        for i, slot in taken:
            self._x[slot] = x[i]
            self._out[slot] = outputs[i]
            if y is not None and self._y is not None:
                self._y[slot] = y[i]

    def unlabelled(self) -> None:
        """A block of the stream had samples without labels (as ``offer`` with ``y=None``)."""
        self.labelled = False


def merge_blocks(results: list[BlockResult]) -> dict[str, Moments]:
    """Per-layer moments of every block, merged in block order (the same bits whatever order
    the blocks finished in)."""
    ordered = sorted(results, key=lambda r: r.index)
    names = list(ordered[0].moments) if ordered else []
    return {name: merge_all([r.moments[name] for r in ordered]) for name in names}


def merge_halves(results: list[BlockResult], batch_size: int) -> tuple[dict[str, Moments], dict[str, Moments]] | None:
    """Per-layer moments of the even and of the odd batches of the whole pass (a one-process
    run's :attr:`~bncheck.engines.measure.Measurement.halves`), merged in block order: a block
    whose first batch is an odd one of the pass has its halves swapped. None without two."""
    out: tuple[dict[str, list[Moments]], dict[str, list[Moments]]] = ({}, {})
    before = 0
    for r in sorted(results, key=lambda r: r.index):
        even, odd = r.halves if (before // max(batch_size, 1)) % 2 == 0 else r.halves[::-1]
        for whole, half in ((out[0], even), (out[1], odd)):
            for name, m in half.items():
                whole.setdefault(name, []).append(m)
        before += r.samples
    if not out[0] or not out[1]:
        return None
    return tuple({name: merge_all(ms) for name, ms in h.items()} for h in out)  # type: ignore[return-value]

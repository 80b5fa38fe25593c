"""Running ONNX models with onnxruntime and observing the input of every BatchNormalization
node inside onnxruntime (no torch import on this path).

The runner works on copies of the graph: the *moments* graph (:mod:`.moments_graph`, with the
:mod:`.one_pass` and :mod:`.two_pass` forms) adds reductions of every observed BN input as
extra outputs, and the *train* graph (:mod:`.train_graph`) makes every BatchNormalization
normalise with the statistics of the batch. Only (N, C) values leave the runtime. Sessions
(:mod:`.session`) use the CPU execution provider with every graph optimisation enabled and
default intra-op threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import onnx

from bncheck.backends.onnx import bn_nodes
from bncheck.backends.onnx.bn_nodes import BnGraph
from bncheck.backends.onnx.graph import static_dims
from bncheck.backends.onnx.in_memory import Weights, split_weights
from bncheck.backends.onnx.input_sizes import total_strides
from bncheck.backends.onnx.inputs import input_spec
from bncheck.backends.onnx.moments_graph import MomentsGraph, MomentsPlan, build_moments_graph
from bncheck.backends.onnx.naming import NameMaker
from bncheck.backends.onnx.one_pass import MAX_RECENTRES, one_pass_statistics, shifted_moments
from bncheck.backends.onnx.packing import Packing
from bncheck.backends.onnx.pool_first import find_pool_first
from bncheck.backends.onnx.row_pool import block_size
from bncheck.backends.onnx.session import open_session
from bncheck.backends.onnx.train_graph import TrainGraph, build_train_graph
from bncheck.backends.onnx.two_pass import moments_from_outputs
from bncheck.backends.runner import ModelRunner, dedupe, select_layers
from bncheck.errors import DataError, UsageError, first_line
from bncheck.numerics.moments import Moments, SampleMoments

#: eval passes are split so that the largest BN input of a chunk, and its output, take at most this many bytes
CHUNK_BYTES = 1 << 24
#: a runner's first batch runs this many of its samples, spread over it, first, in a chunk of
#: their own that places the one-pass shifts (:mod:`.one_pass`) and tells the output's size:
#: where the data mean sits more than a std from the running mean, the move re-runs these
#: samples, not the whole batch (PP-OCRv4's recogniser on its own text lines: a batch of 32
#: re-run, +16% of a 96-line run); their figures count like any chunk's
PROBE_SAMPLES = 4


class OnnxRunner(ModelRunner):
    """A :class:`ModelRunner` for an ``OnnxSource``."""

    def __init__(
        self, source, *, layers: list[str] | None = None, intra_op_threads: int | None = None, outputs: bool = True
    ) -> None:
        """``layers``: names of the BN layers to observe (default: all; train passes rewrite every
        BN node whatever the selection); ``intra_op_threads``: onnxruntime's (default: its own);
        ``outputs`` False: ``moments`` return None for the outputs (a truncated model's)."""
        self._with_outputs = outputs
        model: onnx.ModelProto = source.model
        self._model = model
        self._threads = intra_op_threads
        self._device = getattr(source, "device", "cpu")
        self.input_spec = input_spec(model)
        _check_feeds(model)
        self._output = model.graph.output[0].name
        all_layers = list(source.bn_layers())
        wanted = select_layers([layer.name for layer in all_layers], layers)
        self._graph = BnGraph.of(source, all_layers)
        self.channels = dict(self._graph.channels)
        self.frozen = bn_nodes.unobservable(all_layers, self._graph)
        self.unhookable = {k: v for k, v in self.frozen.items() if k in wanted}
        #: every layer whose node the train graph rewrites (the selection does not matter there)
        self._rewritten = dedupe([la.name for la in all_layers if la.name not in self.frozen])
        self.layers = dedupe([la.name for la in all_layers if la.name in wanted and la.name not in self.unhookable])
        self._names = NameMaker(model)
        by_name = {layer.name: layer for layer in all_layers}
        shifts = {name: bn_nodes.first_shift(self._graph, by_name[name]) for name in self.layers}
        self._plan = MomentsPlan(
            layers=self.layers,
            shifts=shifts,
            pool_first=find_pool_first(self._graph, [by_name[n] for n in self.layers if shifts[n] is not None]),
            running_means=bn_nodes.running_means(all_layers),
        )
        self._finite_stats = bn_nodes.finite_statistics(all_layers)
        self._recentres = 0
        self._probed = False
        #: input sample shape -> layer -> elements of the BN input per sample (None: unknown)
        self._per_sample: dict[tuple[int, ...], dict[str, int | None]] = {}
        #: input sample shape -> layer -> block size of its large map (:mod:`.row_pool`)
        self._blocks: dict[tuple[int, ...], dict[str, int]] = {}
        #: input sample shape -> elements of the model's output per sample (from the first run)
        self._output_elements: dict[tuple[int, ...], int] = {}
        self._sessions: dict[str, object] = {}
        #: the model's large weights, split off once for the sessions of a pass (:func:`split_weights`)
        self._weights: Weights | None = None
        self._moments_graph: MomentsGraph | None = None
        self._train_graph: TrainGraph | None = None

    @property
    def recentres(self) -> int:
        """How often the one-pass moments have moved their shift so far (see
        :mod:`~bncheck.backends.onnx.one_pass`); past ``MAX_RECENTRES`` every layer uses the
        two-pass form."""
        return self._recentres

    @property
    def one_pass_layers(self) -> list[str]:
        """Observed layers whose moments use the one-pass (shifted) form now."""
        return [name for name in self.layers if self._plan.shifts[name] is not None]

    @property
    def pool_first_layers(self) -> list[str]:
        """Observed layers whose one-pass graph max-pools before the BN (CNN stems)."""
        return list(self._plan.pool_first)

    def moments_graph(self) -> onnx.ModelProto:
        """The model the moments passes run now (with the current shifts)."""
        return build_moments_graph(self._graph, self._plan, self._names).model

    def train_graph(self) -> onnx.ModelProto:
        """The model the train passes run."""
        return build_train_graph(self._graph, self._rewritten, self._finite_stats, self._names).model

    def close(self) -> None:
        self._sessions.clear()
        self._weights = None

    def release(self) -> None:
        self._sessions.clear()  # rebuilt by _session when a pass needs one again
        self._weights = None  # and the weights with them: a later pass's other sessions need memory

    def _session(self, kind: str):
        if kind not in self._sessions:
            if self._weights is None:  # split once: every session of this runner shares them
                self._weights = split_weights(self._model)
            lean = self._weights.lean
            if kind == "moments":
                self._moments_graph = build_moments_graph(self._graph, self._plan, self._names, lean)
                model = self._moments_graph.model
            elif kind == "train":
                self._train_graph = build_train_graph(self._graph, self._rewritten, self._finite_stats, self._names, lean)
                model = self._train_graph.model
            else:
                model = lean
            # the train graph runs without onnxruntime's memory arena (it would grow to the largest
            # set of activations of a whole train batch ever alive and keep it: +160 MB on a
            # ResNet-18 at 16 x 3 x 224 x 224, for 2% of its time); the moments graph, whose eval
            # passes run in chunks of at most CHUNK_BYTES per BN input, keeps it (+5% memory,
            # -10% CPU). The rewritten graphs' protos are let go once the session holds the model
            self._sessions[kind] = open_session(
                model, threads=self._threads, device=self._device, arena=kind != "train", weights=self._weights
            )
            if kind == "moments":
                self._moments_graph = replace(self._moments_graph, model=None)
            elif kind == "train":
                self._train_graph = replace(self._train_graph, model=None)
        return self._sessions[kind]

    def _chunks(self, x: np.ndarray) -> list[np.ndarray]:
        """Eval passes run in chunks whose largest BN input and whose output are at most ``CHUNK_BYTES`` (the
        moments graph keeps a few more activations alive than the plain model, whose Conv, BN
        and Relu onnxruntime fuses: at 32 x 3 x 224 x 224 a ResNet-18 peaked at 2.4x the plain
        model's memory); per-sample statistics merge exactly, so chunks change nothing else."""
        if self.input_spec.batch is not None or not self.layers:
            return super()._chunks(x)
        per_sample = [v for v in self._element_counts(x[:1]).values() if v]
        output = self._output_elements.get(tuple(int(d) for d in x.shape[1:]))
        if per_sample and output:  # and whose output too (a CTC recogniser's 40 x 6,625 scores a sample)
            per_sample.append(output)
        if not per_sample:
            return [x]
        size = max(1, CHUNK_BYTES // (4 * max(per_sample)))
        return np.array_split(x, -(-x.shape[0] // size))  # chunks of even sizes: no small last one

    def _run(self, kind: str, names: list[str], x: np.ndarray) -> list:
        session = self._session(kind)
        try:
            values = session.run(names, {self.input_spec.name: x})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise self._run_failed(exc, x) from exc
        key = tuple(int(d) for d in x.shape[1:])
        if kind != "train" and key not in self._output_elements and len(x) and names[0] == self._output:
            self._output_elements[key] = int(np.size(values[0])) // len(x)  # as it came (see _chunks)
        return values

    def _run_failed(self, exc: BaseException, x: np.ndarray):
        """The runtime's refusal of a batch; where the batch's spatial sides are not multiples
        of the model's total down-sampling (a detector or segmenter whose skip connections add
        maps of halved sides), the sentence says so and names sides that fit."""
        error = super()._run_failed(exc, x)
        if x.ndim < 4:
            return error
        strides = total_strides(self._model)
        sides = [int(d) for d in x.shape[2:]]
        strides = (strides + [strides[-1]] * len(sides))[: len(sides)]
        if all(s <= 1 or side % s == 0 for side, s in zip(sides, strides, strict=True)):
            return error
        fit = [max(s, -(-side // s) * s) for side, s in zip(sides, strides, strict=True)]
        return DataError(
            f"the model cannot run on a batch of shape {tuple(x.shape)} ({first_line(exc)}); it down-samples its input by "
            f"{'x'.join(str(s) for s in strides)}, and sides that are not multiples of that break models that join maps of "
            f"several scales: resize DATA to fit (e.g. --size {','.join(str(f) for f in fit)})."
        )

    def _forward(self, x: np.ndarray, bn: str) -> np.ndarray:
        kind = "train" if bn == "train" else "plain"
        return np.asarray(self._run(kind, [self._output], x)[0])

    def _moments(self, x: np.ndarray):
        out, result, _ = self._sample_moments(x)
        return out, result

    def _lead(self, x: np.ndarray) -> np.ndarray | None:
        """The first batch's :data:`PROBE_SAMPLES` samples spread over it, which run first and
        place the one-pass shifts (their run tells the output's size a sample too)."""
        if self._probed:
            return None
        self._probed = True
        # a graph whose batch size is fixed runs whole padded batches only (32 x 3 x 32 x 32
        # exported without dynamic axes refused the probe's 4 samples, and the run ended, exit 2)
        if len(x) > 2 * PROBE_SAMPLES and self.layers and self.input_spec.batch is None:
            return np.linspace(0, len(x) - 1, PROBE_SAMPLES).round().astype(int)
        return None

    def _sample_moments(self, x: np.ndarray):
        """Outputs, moments and per-sample moments (the one-pass layers': their outputs are per
        sample; two-pass layers have only the batch's) of one chunk."""
        counts = self._element_counts(x)
        unknown = {name for name in self.layers if counts[name] is None} - self._plan.sized
        if unknown:  # a Size output for them (rare: shapes inference cannot follow)
            self._plan.sized.update(unknown)
            self._sessions.pop("moments", None)
        blocks = self._blocks[tuple(int(d) for d in x.shape[1:])]
        if blocks != self._plan.blocks:  # large maps averaged in blocks of this shape's size
            self._plan.blocks = dict(blocks)
            self._sessions.pop("moments", None)
        while True:
            values = self._run("moments", self._moments_names(), x)
            result, moved = self._read_moments(values[1:], counts)
            if not moved:
                return (np.asarray(values[0]) if self._with_outputs else None), result, self._read_samples(values[1:], counts, len(x))
            self._recentre(moved)

    def _read_moments(self, values: list, counts: dict) -> tuple[dict[str, Moments], dict[str, np.ndarray]]:
        """Every layer's moments from the stats outputs, and the data means of the layers whose
        one-pass shift is off-centre."""
        graph = self._moments_graph
        result: dict[str, Moments] = {}
        moved: dict[str, np.ndarray] = {}
        position = 0
        if graph.packing.layers:  # every packed layer at once: one output, vectorised float64
            result, moved = _read_packed(graph.packing, values[0], counts)
            position = 1
        for name, stats, elements in self._unpacked_outputs(values[position:], counts):
            shift = self._plan.shifts[name]
            if shift is None:
                result[name] = moments_from_outputs(*stats, elements)
                continue
            first, second = stats
            pool = self._plan.pool_first.get(name)
            signs = pool.signs if pool is not None else None
            result[name], off_centre = shifted_moments(first, second, elements, shift, signs)
            if off_centre:
                moved[name] = result[name].mean
        return {name: result[name] for name in self.layers}, moved

    def _unpacked_outputs(self, values: list, counts: dict) -> Iterator[tuple[str, list, int]]:
        """``(name, stats, elements)`` of each layer outside the packing, in order, from the
        stats outputs that follow the packed one: ``stats`` its float outputs (one-pass: 2,
        two-pass: 3), ``elements`` the graph's own Size output when it has one, else ``counts``."""
        graph = self._moments_graph
        position = 0
        for name in self.layers:
            if name in graph.packing.layers:
                continue
            width = len(graph.outputs[name])
            floats = 2 if self._plan.shifts[name] is not None else 3
            stats, size = values[position : position + floats], values[position + floats : position + width]
            position += width
            yield name, stats, int(np.asarray(size[0])) if size else int(counts[name])

    def _read_samples(self, values: list, counts: dict, n: int) -> dict[str, SampleMoments]:
        """Per-sample moments of the one-pass layers (packed or not) from the stats outputs: the
        same float64 step as the batch's, on each sample's row."""
        graph = self._moments_graph
        out: dict[str, SampleMoments] = {}
        position = 0
        if graph.packing.layers:
            packing = graph.packing
            total = packing.shift.size
            packed = np.asarray(values[0], np.float64)
            if packed.shape[0] == n:
                mean, var, _ = one_pass_statistics(packed[:, :total], packed[:, total:], packing.shift, packing.signs)
                for name, part in packing.layers.items():
                    per = int(counts[name]) // (n * (part.stop - part.start))
                    out[name] = SampleMoments.of(per, mean[:, part], var[:, part] * per)
            position = 1
        for name, stats, elements in self._unpacked_outputs(values[position:], counts):
            shift = self._plan.shifts[name]
            channels = self.channels[name]
            if shift is None or np.asarray(stats[0]).size != n * channels:
                continue  # two-pass: the runtime gives the batch's moments only
            first, second = stats
            pool = self._plan.pool_first.get(name)
            m, q = (np.asarray(v, np.float64).reshape(n, channels) for v in (first, second))
            mean, var, _ = one_pass_statistics(m, q, shift.astype(np.float64), pool.signs if pool is not None else None)
            per = elements // (n * channels)
            out[name] = SampleMoments.of(per, mean, var * per)
        return out

    def _element_counts(self, x: np.ndarray) -> dict[str, int | None]:
        """Layer -> number of elements of its BN input for batch ``x``, from shape inference
        with ``x``'s shape (cached per sample shape); None where inference cannot tell."""
        key = tuple(int(d) for d in x.shape[1:])
        if key not in self._per_sample:
            dims = static_dims(self._model, self.input_spec.name, tuple(x.shape))
            per_sample: dict[str, int | None] = {}
            blocks: dict[str, int] = {}
            for name in self.layers:
                shape = dims.get(self._graph.node(name).input[0])
                known = (
                    shape is not None
                    and len(shape) >= 2
                    and None not in shape
                    and shape[0] == x.shape[0]
                    and shape[1] == self.channels[name]
                )
                per_sample[name] = int(np.prod(shape[1:])) if known else None
                block = block_size(shape) if known else None
                if block is not None:
                    blocks[name] = block
            self._per_sample[key] = per_sample
            self._blocks[key] = blocks
        n = int(x.shape[0])
        return {k: (None if v is None else n * v) for k, v in self._per_sample[key].items()}

    def _recentre(self, means: dict[str, np.ndarray]) -> None:
        """Move the shifts of ``means``' layers to those data means (the batch is then run
        again), or, after ``MAX_RECENTRES`` moves, use the two-pass form everywhere."""
        self._recentres += 1
        shifts = self._plan.shifts
        if self._recentres > MAX_RECENTRES:
            for name in shifts:
                shifts[name] = None
        else:
            for name, mean in means.items():
                shifts[name] = np.where(np.isfinite(mean), mean, shifts[name]).astype(np.float32)
        self._sessions.pop("moments", None)

    def _train_moments(self, x: np.ndarray):
        self._session("train")
        names = [self._output]
        for name in self.layers:
            names.extend(self._train_graph.outputs[name])
        values = self._run("train", names, x)
        result: dict[str, Moments] = {}
        for k, name in enumerate(self.layers):
            mean, var, size = values[1 + 3 * k : 4 + 3 * k]
            mean = np.asarray(mean, np.float64).reshape(-1)
            count = int(np.asarray(size)) // max(mean.size, 1)
            result[name] = Moments.from_batch(count, mean, np.asarray(var, np.float64).reshape(-1) * count)
        return np.asarray(values[0]), result

    def _moments_names(self) -> list[str]:
        self._session("moments")
        graph = self._moments_graph
        names = [self._output]
        if graph.packing.layers:
            names.append(graph.packing.output)
        for name in self.layers:
            if name not in graph.packing.layers:
                names.extend(graph.outputs[name])
        return names


def _check_feeds(model: onnx.ModelProto) -> None:
    inits = {i.name for i in model.graph.initializer}
    feeds = [i.name for i in model.graph.input if i.name not in inits]
    if len(feeds) > 1:
        raise UsageError(
            f"the ONNX model has {len(feeds)} inputs ({', '.join(feeds)}); bncheck feeds a single input tensor."
        )
    if not model.graph.output:
        raise UsageError("the ONNX model has no output.")


def _read_packed(packing: Packing, packed, counts: dict) -> tuple[dict[str, Moments], dict[str, np.ndarray]]:
    mean, var, off = packing.statistics(packed)
    result, moved = {}, {}
    for name, part in packing.layers.items():
        count = int(counts[name]) // (part.stop - part.start)
        result[name] = Moments(count, mean[part], var[part] * count)
        if off[part].any():
            moved[name] = result[name].mean
    return result, moved

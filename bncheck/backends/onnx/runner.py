"""Running ONNX models with onnxruntime and observing the input of every BatchNormalization
node inside onnxruntime (no torch import on this path).

The runner works on copies of the graph:

* the *moments* graph adds, for every BN input ``X``, reduction nodes whose results become extra
  graph outputs. For float32 inputs of known rank >= 3 (``N, C, spatial...``) whose running mean
  is a constant, the form is one pass over a *shifted* input::

      D    = X + (-s)                     # onnxruntime folds this Add into the producing Conv's bias
      Y    = BatchNormalization(D, mean = running_mean - s)   # the model's node, same output
      m_nc = GlobalAveragePool(D)         # per-sample means of D, (N, C, 1, ...)
      q_nc = GlobalAveragePool(D * D)     # per-sample mean squares of D

  and, in float64, ``mean = s + mean_n m_nc``, ``m2 = n / C * (mean_n q_nc - (mean_n m_nc)**2)``.
  The shift ``s`` starts at the running mean and every batch is checked: the float32 rounding
  error of the one-pass form is that of a centred sum times ``A = E[D**2] / var``, so when a
  channel has ``A`` above 2 (its data mean is more than one standard deviation from ``s``) the
  graph is rebuilt with ``s`` = the measured data mean and the batch is run again; after a few
  such re-centrings the runner switches for good to the two-pass form below. All the added
  ops run in onnxruntime's blocked NCHWc layout next to the convolutions, and no elementwise
  ``Sub`` pass is needed: on a ResNet-18 this costs about half of what the two-pass form costs.
  Channels whose spread is below ~16 float32 ulps of their magnitude (constant channels) are
  left out of the check: no float32 computation resolves their variance better.
  A layer followed only by [Relu ->] MaxPool (a CNN stem) gets its MaxPool on ``D`` *before*
  the BN and Relu, which then work on a tensor ``kernel`` times smaller: for a positive BN
  scale ``a``, ``maxpool(relu(a x + b)) = relu(a maxpool(x) + b)`` exactly, and ``D`` is
  multiplied by -1 in the channels whose scale is negative (a Mul folded into the Conv too).
  Every other BN input (rank 2 or unknown, half precision, a running mean computed at run time)
  uses the *two-pass* form::

      m_nc = GlobalAveragePool(X)                  # per-sample means, (N, C, 1, ...)
      m    = ReduceMean(m_nc, axes=[0])            # channel mean of the batch, (1, C, 1, ...)
      q_nc = GlobalAveragePool((X - m) * (X - m))  # mean squared deviation per sample

  with ``m2_c = n / (N C) * sum_n q_nc`` in float64: every element is centred at the batch's
  channel mean before squaring, so the variance is exact to float32 rounding whatever the
  mean/std ratio (the error of ``m`` enters squared only). Inputs of rank 2 or unknown rank are
  reshaped to (N, C, L) and reduced over (N, L) with ReduceMean the same way. float16/bfloat16
  inputs are cast to float32 first. Only (N, C) values leave the runtime.

  The element count ``n`` of each BN input comes from shape inference on the batch's input
  shape (once per shape). Only where inference cannot tell it does the graph get a
  ``Size(X)`` output: any op outside the NCHWc set that reads a blocked tensor (Size and Shape
  included) makes onnxruntime copy it back to NCHW, which costs about 1% of the forward pass
  per layer on a ResNet-18.
* the *train* graph makes every BatchNormalization normalise with the statistics of the batch.
  From opset 14 a float32 node becomes the same node with ``training_mode=1, momentum=0``,
  whose extra outputs are then exactly the batch mean and population variance (onnxruntime's
  kernel, about 15% faster than the composition below); older opsets and other types get
  batch-statistics normalisation written with standard ops::

      X3 = Reshape(X, [0, 0, -1]);  mean = ReduceMean(X3, axes=[0, 2])
      D = X3 - mean;  var = ReduceMean(D * D, axes=[0, 2])
      Y = Reshape(D / Sqrt(var + eps) * scale + B, Shape(X))

  and also returns ``mean``, ``var`` and ``Size(X)`` as outputs for :meth:`train_moments`.

Sessions use the CPU execution provider with every graph optimisation enabled and default
intra-op threads.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bncheck.backends.onnx.graph import static_dims
from bncheck.backends.runner import InputSpec, ModelRunner, dedupe, select_layers
from bncheck.errors import ModelLoadError, UsageError, first_line
from bncheck.numerics.moments import Moments

#: protobuf cannot serialise more than this; larger models go through a temporary file
_PROTO_LIMIT = 2**31 - 2**20
_HALF_TYPES = (TensorProto.FLOAT16, TensorProto.BFLOAT16)
_SUBGRAPH_REASON = (
    "inside a control-flow subgraph (If/Loop/Scan body), whose values cannot be graph outputs"
)
_SPATIAL_REASON = "spatial=0 (per-activation statistics), not per-channel"
#: the one-pass moments may carry up to this many times the float32 error of a centred sum;
#: beyond it (a channel's data mean more than one std away from the shift) the shift moves
_SHIFT_TOLERANCE = 2.0
#: re-centrings of the one-pass graph before the runner settles on the two-pass form for good
_MAX_RECENTRES = 4
#: a channel whose std is below this fraction of its magnitude (about 16 float32 ulps) is
#: constant as far as float32 can tell, and is left out of the re-centring check
_CONSTANT_SPREAD = 2.0**-20


def onnx_input_spec(model: onnx.ModelProto) -> InputSpec:
    """The first graph input that is not an initializer."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise UsageError("the ONNX model has no input to feed data into.")
    first = inputs[0]
    ttype = first.type.tensor_type if first.type.HasField("tensor_type") else None
    dtype = "float32"
    if ttype is not None and ttype.elem_type:
        try:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type)).name
        except (KeyError, TypeError, ValueError):
            dtype = "float32"
    if ttype is None or not ttype.HasField("shape"):
        return InputSpec(name=first.name, shape=None, dtype=dtype)
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in ttype.shape.dim
    ]
    return InputSpec(
        name=first.name,
        shape=tuple(dims[1:]) if dims else None,
        dtype=dtype,
        batch=dims[0] if dims else None,
    )


@dataclass(frozen=True)
class _PoolFirst:
    """A layer whose one-pass graph max-pools the shifted input before the BN (and Relu)."""

    #: indices of the nodes the rewrite replaces: (Relu, MaxPool) or (MaxPool,)
    replaced: tuple[int, ...]
    #: +1 / -1 per channel: the sign of the BN scale factor, applied to D
    signs: np.ndarray
    #: the BN scale times ``signs`` (float32), for the BN on the pooled tensor
    signed_scale: np.ndarray


@dataclass(frozen=True)
class _Packing:
    """Where the one-pass layers' moments sit in the packed output, and their shifts."""

    output: str = ""
    #: layer -> its channels' slice of the packed means (and of the packed squares after them)
    layers: dict[str, slice] = field(default_factory=dict)
    shift: np.ndarray = field(default_factory=lambda: np.zeros(0))
    signs: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def statistics(self, packed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-channel mean and population variance of X and the off-centre flags, for every
        packed channel, from the ``(N, 2 * channels)`` packed output."""
        total = self.shift.size
        m = packed[:, :total].mean(axis=0, dtype=np.float64)
        q = packed[:, total:].mean(axis=0, dtype=np.float64)
        return _one_pass_statistics(m, q, self.shift, self.signs)


class OnnxRunner(ModelRunner):
    """A :class:`ModelRunner` for an ``OnnxSource``."""

    def __init__(
        self, source, *, layers: list[str] | None = None, intra_op_threads: int | None = None
    ) -> None:
        """``layers``: names of the BN layers to observe (default: all; train passes rewrite every
        BN node whatever the selection); ``intra_op_threads``: onnxruntime's (default: its own)."""
        self._source = source
        self._model: onnx.ModelProto = source.model
        self._opset = source.opset
        self._threads = intra_op_threads
        self.input_spec = onnx_input_spec(self._model)
        inits = {i.name for i in self._model.graph.initializer}
        feeds = [i.name for i in self._model.graph.input if i.name not in inits]
        if len(feeds) > 1:
            raise UsageError(
                f"the ONNX model has {len(feeds)} inputs ({', '.join(feeds)}); bncheck feeds a single "
                "input tensor."
            )
        if not self._model.graph.output:
            raise UsageError("the ONNX model has no output.")
        self._output = self._model.graph.output[0].name
        all_layers = list(source.bn_layers())
        wanted = select_layers([layer.name for layer in all_layers], layers)
        self.channels = {layer.name: int(layer.num_features) for layer in all_layers}
        self.unhookable: dict[str, str] = {}
        self.frozen: dict[str, str] = {}
        #: layer name -> index of its BatchNormalization node in the main graph
        self._nodes: dict[str, int] = {}
        for index, node in enumerate(self._model.graph.node):
            if node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx"):
                self._nodes.setdefault(node.name or node.output[0], index)
        for layer in all_layers:
            index = self._nodes.get(layer.name)
            node = self._model.graph.node[index] if index is not None else None
            if node is None:
                self.unhookable[layer.name] = self.frozen[layer.name] = _SUBGRAPH_REASON
            elif any(a.name == "spatial" and a.i == 0 for a in node.attribute):
                self.unhookable[layer.name] = self.frozen[layer.name] = _SPATIAL_REASON
        #: every layer whose node the train graph rewrites (the selection does not matter there)
        self._rewritten = dedupe([la.name for la in all_layers if la.name not in self.frozen])
        self.unhookable = {k: v for k, v in self.unhookable.items() if k in wanted}
        self.layers = dedupe(
            [la.name for la in all_layers if la.name in wanted and la.name not in self.unhookable]
        )
        self._types = source.value_types()
        self._init_types = {i.name: i.data_type for i in self._model.graph.initializer}
        self._names = _NameMaker(self._model)
        by_name = {layer.name: layer for layer in all_layers}
        #: layer -> float32 shift of its one-pass moments, or None for the two-pass form
        self._shifts: dict[str, np.ndarray | None] = {
            name: self._first_shift(by_name[name]) for name in self.layers
        }
        self._recentres = 0
        self._running_means = {
            la.name: np.asarray(la.running_mean, np.float64).reshape(-1)
            for la in all_layers
            if la.running_mean is not None
        }
        #: layers followed by [Relu ->] MaxPool alone, whose one-pass graph pools first
        self._pool_first = self._find_pool_first(by_name)
        #: layers whose running statistics are finite (the native training-mode node needs them)
        self._finite_stats = {
            layer.name
            for layer in all_layers
            if all(
                v is not None and np.all(np.isfinite(v))
                for v in (layer.running_mean, layer.running_var)
            )
        }
        self._stats_outputs: dict[str, tuple[str, ...]] = {}
        #: one-pass layers whose per-sample moments travel in the one packed output
        self._packing = _Packing()
        #: layers whose moments graph has a Size output (their count is not inferable)
        self._sized: set[str] = set()
        #: input sample shape -> layer -> elements of the BN input per sample (None: unknown)
        self._per_sample: dict[tuple[int, ...], dict[str, int | None]] = {}
        self._train_outputs: dict[str, tuple[str, str, str]] = {}
        self._sessions: dict[str, object] = {}

    @property
    def recentres(self) -> int:
        """How often the one-pass moments have moved their shift so far (see the module
        docstring); past :data:`_MAX_RECENTRES` every layer uses the two-pass form."""
        return self._recentres

    @property
    def one_pass_layers(self) -> list[str]:
        """Observed layers whose moments use the one-pass (shifted) form now."""
        return [name for name in self.layers if self._shifts[name] is not None]

    # ------------------------------------------------------------------ sessions

    def _session(self, kind: str):
        if kind not in self._sessions:
            build = {
                "plain": lambda: self._model,
                "moments": self._moments_model,
                "train": self._train_model,
            }
            self._sessions[kind] = self._make_session(build[kind]())
        return self._sessions[kind]

    def _make_session(self, model: onnx.ModelProto):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if self._threads:
            options.intra_op_num_threads = int(self._threads)
        try:
            if _fits_in_one_message(model):
                return ort.InferenceSession(
                    model.SerializeToString(), options, providers=["CPUExecutionProvider"]
                )
            with tempfile.TemporaryDirectory(prefix="bncheck-") as tmp:
                path = Path(tmp) / "model.onnx"
                onnx.save_model(
                    model, str(path), save_as_external_data=True, location="weights.bin"
                )
                return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            first = first_line(exc)
            raise ModelLoadError(f"onnxruntime cannot load the model ({first}).") from exc

    def close(self) -> None:
        self._sessions.clear()

    # ------------------------------------------------------------------ running

    def _run(self, kind: str, names: list[str], x: np.ndarray) -> list:
        session = self._session(kind)
        try:
            return session.run(names, {self.input_spec.name: x})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise self._run_failed(exc, x) from exc

    def _forward(self, x: np.ndarray, bn: str) -> np.ndarray:
        kind = "train" if bn == "train" else "plain"
        return np.asarray(self._run(kind, [self._output], x)[0])

    def _moments(self, x: np.ndarray):
        counts = self._element_counts(x)
        unknown = {name for name in self.layers if counts[name] is None} - self._sized
        if unknown:  # a Size output for them (rare: shapes inference cannot follow)
            self._sized |= unknown
            self._sessions.pop("moments", None)
        while True:
            session_names = self._moments_names()
            values = self._run("moments", session_names, x)
            out = np.asarray(values[0])
            result: dict[str, Moments] = {}
            moved: dict[str, np.ndarray] = {}
            position = 1
            packing = self._packing
            if packing.layers:  # every packed layer at once: one output, vectorised float64
                mean, var, off = packing.statistics(values[1])
                position = 2
                for name, part in packing.layers.items():
                    count = int(counts[name]) // (part.stop - part.start)
                    result[name] = Moments(count, mean[part], var[part] * count)
                    if off[part].any():
                        moved[name] = result[name].mean
            for name in self.layers:
                if name in packing.layers:
                    continue
                width = len(self._stats_outputs[name])
                first, second, *size = values[position : position + width]
                position += width
                elements = int(np.asarray(size[0])) if size else int(counts[name])
                shift = self._shifts[name]
                if shift is None:
                    result[name] = _moments_from_outputs(first, second, elements)
                    continue
                pool = self._pool_first.get(name)
                signs = pool.signs if pool is not None else None
                result[name], off_centre = _shifted_moments(first, second, elements, shift, signs)
                if off_centre:
                    moved[name] = result[name].mean
            if not moved:
                return out, result
            self._recentre(moved)

    def _element_counts(self, x: np.ndarray) -> dict[str, int | None]:
        """Layer -> number of elements of its BN input for batch ``x``, from shape inference
        with ``x``'s shape (cached per sample shape); None where inference cannot tell."""
        key = tuple(int(d) for d in x.shape[1:])
        if key not in self._per_sample:
            dims = static_dims(self._model, self.input_spec.name, tuple(x.shape))
            per_sample: dict[str, int | None] = {}
            for name in self.layers:
                shape = dims.get(self._model.graph.node[self._nodes[name]].input[0])
                known = (
                    shape is not None
                    and len(shape) >= 2
                    and None not in shape
                    and shape[0] == x.shape[0]
                    and shape[1] == self.channels[name]
                )
                per_sample[name] = int(np.prod(shape[1:])) if known else None
            self._per_sample[key] = per_sample
        n = int(x.shape[0])
        return {k: (None if v is None else n * v) for k, v in self._per_sample[key].items()}

    def _recentre(self, means: dict[str, np.ndarray]) -> None:
        """Move the shifts of ``means``' layers to those data means (the batch is then run
        again), or, after :data:`_MAX_RECENTRES` moves, use the two-pass form everywhere."""
        self._recentres += 1
        if self._recentres > _MAX_RECENTRES:
            self._shifts = dict.fromkeys(self._shifts)
        else:
            for name, mean in means.items():
                old = self._shifts[name]
                self._shifts[name] = np.where(np.isfinite(mean), mean, old).astype(np.float32)
        self._sessions.pop("moments", None)

    def _train_moments(self, x: np.ndarray):
        self._session("train")
        names = [self._output]
        for name in self.layers:
            names.extend(self._train_outputs[name])
        values = self._run("train", names, x)
        result: dict[str, Moments] = {}
        for k, name in enumerate(self.layers):
            mean, var, size = values[1 + 3 * k : 4 + 3 * k]
            mean = np.asarray(mean, np.float64).reshape(-1)
            count = int(np.asarray(size)) // max(mean.size, 1)
            result[name] = Moments.from_batch(
                count, mean, np.asarray(var, np.float64).reshape(-1) * count
            )
        return np.asarray(values[0]), result

    def _moments_names(self) -> list[str]:
        self._session("moments")
        names = [self._output]
        if self._packing.layers:
            names.append(self._packing.output)
        for name in self.layers:
            if name not in self._packing.layers:
                names.extend(self._stats_outputs[name])
        return names

    # ------------------------------------------------------------------ graph rewrites

    def _first_shift(self, layer) -> np.ndarray | None:
        """The running mean as the first shift of ``layer``'s one-pass moments, or None when the
        layer needs the two-pass form (not float32, rank < 3 or unknown, no constant running
        mean of float32 type)."""
        node = self._model.graph.node[self._nodes[layer.name]]
        elem, rank = self._types.get(node.input[0], (TensorProto.UNDEFINED, None))
        if elem != TensorProto.FLOAT or rank is None or rank < 3 or len(node.input) < 5:
            return None
        mean_type = self._init_types.get(node.input[3]) or self._types.get(node.input[3], (0,))[0]
        running = layer.running_mean
        if mean_type != TensorProto.FLOAT or running is None:
            return None
        shift = np.asarray(running, np.float32).reshape(-1)
        if shift.size != self.channels[layer.name]:
            return None
        return np.where(np.isfinite(shift), shift, np.float32(0))

    def _moments_model(self) -> onnx.ModelProto:
        model = copy.deepcopy(self._model)
        graph = model.graph
        by_index = {self._nodes[name]: name for name in self.layers}
        pooled = {
            name: pool
            for name, pool in self._pool_first.items()
            if name in by_index.values() and self._shifts[name] is not None
        }
        replaced = {index for pool in pooled.values() for index in pool.replaced}
        nodes, new_outputs, new_inits = [], [], []
        for index, node in enumerate(graph.node):
            if index in replaced:  # the Relu/MaxPool after a pooled-first layer: rewritten there
                continue
            name = by_index.get(index)
            if name is None:
                nodes.append(node)
                continue
            prefix = self._names.prefix(name)
            shift = self._shifts[name]
            if shift is None:
                stats, outputs = self._two_pass_nodes(node, name, prefix, new_inits)
            else:
                pool = pooled.get(name)
                after = None if pool is None else [graph.node[i] for i in pool.replaced]
                shifted, stats, outputs = self._one_pass_nodes(
                    node, name, shift, prefix, new_inits, pool, after
                )
                nodes.extend(shifted)  # the Add, [MaxPool,] the BN node [and Relu]
            if shift is None:
                nodes.append(node)
            # right after the layer, so that onnxruntime runs them while its input is in cache
            nodes += stats
            self._stats_outputs[name] = tuple(out for out, _ in outputs)
            if shift is None or name in self._sized:
                new_outputs += [helper.make_tensor_value_info(out, t, None) for out, t in outputs]
        packed = [n for n in self.layers if self._shifts[n] is not None and n not in self._sized]
        nodes += self._pack(packed, new_inits)
        if packed:
            new_outputs.insert(
                0, helper.make_tensor_value_info(self._packing.output, TensorProto.FLOAT, None)
            )
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(new_inits)
        graph.output.extend(new_outputs)
        return model

    def _pack(self, names: list[str], inits: list) -> list[onnx.NodeProto]:
        """Nodes concatenating the per-sample means of every one-pass layer in ``names``, then
        their mean squares, into one ``(N, 2 * channels)`` output (one fetch and one vectorised
        float64 step per batch instead of two per layer); sets :attr:`_packing`."""
        self._packing = _Packing()
        if not names:
            return []
        prefix = self._names.prefix("packed")
        inits.append(numpy_helper.from_array(np.array([0, -1], np.int64), prefix + "flat"))
        nodes, means, squares, layers, offset = [], [], [], {}, 0
        for name in names:
            first, second = self._stats_outputs[name][:2]
            for value, into in ((first, means), (second, squares)):
                nodes.append(
                    helper.make_node("Reshape", [value, prefix + "flat"], [value + "/flat"])
                )
                into.append(value + "/flat")
            layers[name] = slice(offset, offset + self.channels[name])
            offset += self.channels[name]
        nodes.append(helper.make_node("Concat", means + squares, [prefix + "all"], axis=1))
        signs = [
            self._pool_first[n].signs if n in self._pool_first else np.ones(self.channels[n])
            for n in names
        ]
        self._packing = _Packing(
            output=prefix + "all",
            layers=layers,
            shift=np.concatenate([self._shifts[n] for n in names]).astype(np.float64),
            signs=np.concatenate(signs).astype(np.float64),
        )
        return nodes

    def _one_pass_nodes(
        self,
        node: onnx.NodeProto,
        name: str,
        shift: np.ndarray,
        prefix: str,
        inits: list,
        pool: _PoolFirst | None = None,
        after: list[onnx.NodeProto] | None = None,
    ):
        """``D = X - s`` (an Add onnxruntime folds into a producing Conv), the BN node reading D
        with its mean moved by ``s``, and the per-sample means of D and D*D.

        With ``pool`` (the layer is followed by [Relu ->] MaxPool alone; ``after`` are those
        nodes, in order), D is ``sign * (X - s)`` per channel and the MaxPool runs on D, before
        the BN and Relu: for a channel whose BN scale ``a = gamma / sqrt(var + eps)`` is
        positive, ``maxpool(relu(a x + b)) = relu(a maxpool(x) + b)`` exactly (the same float
        operations on the same selected element), and a negative scale is made positive by
        the sign. The BN then works on a tensor ``kernel`` times smaller."""
        x = node.input[0]
        rank = self._types[x][1]
        channel_shape = (-1,) + (1,) * (rank - 2)
        inits.append(numpy_helper.from_array((-shift).reshape(channel_shape), prefix + "neg_shift"))
        signs = pool.signs if pool is not None else np.ones_like(shift)
        moved = signs * (self._running_means[name] - shift.astype(np.float64))
        inits.append(numpy_helper.from_array(moved.astype(np.float32), prefix + "mean_shifted"))
        d = prefix + "d"
        bn = copy.deepcopy(node)
        bn.input[3] = prefix + "mean_shifted"
        flipped = bool(np.any(signs < 0))
        centred = prefix + "centred" if flipped else d
        shifted = [helper.make_node("Add", [x, prefix + "neg_shift"], [centred])]
        if flipped:  # folded into the Conv's weights and bias by onnxruntime, like the Add
            inits.append(numpy_helper.from_array(signs.reshape(channel_shape), prefix + "signs"))
            shifted.append(helper.make_node("Mul", [centred, prefix + "signs"], [d]))
            inits.append(numpy_helper.from_array(pool.signed_scale, prefix + "scale_signed"))
            bn.input[1] = prefix + "scale_signed"
        if pool is None:
            bn.input[0] = d
            shifted.append(bn)
        else:
            *relu, maxpool = after
            pooled = copy.deepcopy(maxpool)
            pooled.input[0], pooled.output[0] = d, prefix + "pooled"
            bn.input[0] = prefix + "pooled"
            shifted += [pooled, bn]
            if relu:
                bn.output[0] = prefix + "pooled_y"
                activation = copy.deepcopy(relu[0])
                activation.input[0], activation.output[0] = prefix + "pooled_y", maxpool.output[0]
                shifted.append(activation)
            else:
                bn.output[0] = maxpool.output[0]
        stats = [
            helper.make_node("GlobalAveragePool", [d], [prefix + "mean_nc"]),
            helper.make_node("Mul", [d, d], [prefix + "d2"]),
            helper.make_node("GlobalAveragePool", [prefix + "d2"], [prefix + "msq_nc"]),
        ]
        outputs = [(prefix + "mean_nc", TensorProto.FLOAT), (prefix + "msq_nc", TensorProto.FLOAT)]
        if name in self._sized:
            stats.append(helper.make_node("Size", [d], [prefix + "size"]))
            outputs.append((prefix + "size", TensorProto.INT64))
        return shifted, stats, outputs

    def _find_pool_first(self, layers: dict) -> dict[str, _PoolFirst]:
        """Layers on the one-pass form whose BN output feeds only a Relu that feeds only a
        MaxPool (or feeds only a MaxPool), none of them a graph output, in inference mode, with
        a float32 constant scale and finite scale factors: see :meth:`_one_pass_nodes`."""
        graph = self._model.graph
        users: dict[str, list[int]] = {}
        for index, n in enumerate(graph.node):
            for value in n.input:
                users.setdefault(value, []).append(index)
        graph_outputs = {o.name for o in graph.output}

        def sole_user(value: str, op: str) -> int | None:
            found = users.get(value, [])
            if len(found) != 1 or value in graph_outputs:
                return None
            user = graph.node[found[0]]
            return found[0] if user.op_type == op and user.domain in ("", "ai.onnx") else None

        result: dict[str, _PoolFirst] = {}
        for name in self.layers:
            layer = layers[name]
            node = graph.node[self._nodes[name]]
            training = any(a.name == "training_mode" and a.i for a in node.attribute)
            if self._shifts.get(name) is None or training or any(o for o in node.output[1:]):
                continue  # a training-mode node normalises with the batch it sees: not poolable
            relu = sole_user(node.output[0], "Relu")
            pool = sole_user(
                graph.node[relu].output[0] if relu is not None else node.output[0], "MaxPool"
            )
            if pool is None or len([o for o in graph.node[pool].output if o]) != 1:
                continue
            scale_type = (
                self._init_types.get(node.input[1]) or self._types.get(node.input[1], (0,))[0]
            )
            if scale_type != TensorProto.FLOAT or layer.running_var is None or layer.weight is None:
                continue
            gamma = np.asarray(layer.weight, np.float64).reshape(-1)
            factor = gamma / np.sqrt(
                np.asarray(layer.running_var, np.float64).reshape(-1) + (layer.eps or 0.0)
            )
            if gamma.size != self.channels[name] or not np.all(np.isfinite(factor)):
                continue
            signs = np.where(factor < 0, -1.0, 1.0).astype(np.float32)
            replaced = (relu, pool) if relu is not None else (pool,)
            result[name] = _PoolFirst(replaced, signs, (gamma * signs).astype(np.float32))
        return result

    def _two_pass_nodes(self, node: onnx.NodeProto, name: str, prefix: str, inits: list):
        """Per-sample means, their batch mean, and the per-sample mean squared deviations from
        it (see the module docstring)."""
        x = node.input[0]
        elem, rank = self._types.get(x, (TensorProto.UNDEFINED, None))
        nodes, xf, out_type = _as_float(x, elem, prefix)
        mean, sq = prefix + "mean_c", prefix + "msd_nc"
        if rank is not None and rank >= 3:
            # per-sample means (cheap, NCHWc), their mean over the batch, then every element
            # centred at that channel mean; squares averaged per sample and channel
            nodes.append(helper.make_node("GlobalAveragePool", [xf], [prefix + "mean_nc"]))
            nodes += self._reduce_mean(prefix + "mean_nc", mean, (0,), inits)
            centred, sq_op = xf, "GlobalAveragePool"
        else:
            centred = prefix + "x3"
            inits.append(numpy_helper.from_array(np.array([0, 0, -1], np.int64), prefix + "shape3"))
            nodes.append(helper.make_node("Reshape", [xf, prefix + "shape3"], [centred]))
            nodes += self._reduce_mean(centred, mean, (0, 2), inits)
            sq_op = None
        nodes += [
            helper.make_node("Sub", [centred, mean], [prefix + "dev"]),
            helper.make_node("Mul", [prefix + "dev", prefix + "dev"], [prefix + "dev2"]),
        ]
        if sq_op:
            nodes.append(helper.make_node(sq_op, [prefix + "dev2"], [sq]))
        else:
            nodes += self._reduce_mean(prefix + "dev2", sq, (0, 2), inits)
        outputs = [(mean, out_type), (sq, out_type)]
        if name in self._sized:
            nodes.append(helper.make_node("Size", [xf], [prefix + "size"]))
            outputs.append((prefix + "size", TensorProto.INT64))
        return nodes, outputs

    def _train_model(self) -> onnx.ModelProto:
        model = copy.deepcopy(self._model)
        graph = model.graph
        consumers: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                consumers[name] = consumers.get(name, 0) + 1
        graph_outputs = {o.name for o in graph.output}
        rewritten: list[onnx.NodeProto] = []
        new_outputs, new_inits = [], []
        targets = {self._nodes[name]: name for name in self._rewritten}
        for index, node in enumerate(self._model.graph.node):  # the untouched original
            name = targets.get(index)
            if name is None:
                rewritten.append(node)
                continue
            prefix = self._names.prefix(name + "/train")
            elem = self._types.get(node.input[0], (TensorProto.UNDEFINED, None))[0]
            extra_used = any(
                o and (consumers.get(o) or o in graph_outputs) for o in node.output[1:]
            )
            if not extra_used and self._native_training(node, name, elem):
                nodes, mean, var, size = _training_mode_nodes(node, prefix)
            else:
                nodes, mean, var, size = self._batch_norm_nodes(node, elem, prefix, new_inits)
            if extra_used:  # keep the original node for its other outputs; Y comes from the rewrite
                kept = copy.deepcopy(node)
                kept.output[0] = prefix + "unused_y"
                rewritten.append(kept)
            rewritten.extend(nodes)
            self._train_outputs[name] = (mean, var, size)
            out_type = elem if elem not in (TensorProto.UNDEFINED,) else TensorProto.FLOAT
            new_outputs += [
                helper.make_tensor_value_info(mean, out_type, None),
                helper.make_tensor_value_info(var, out_type, None),
                helper.make_tensor_value_info(size, TensorProto.INT64, None),
            ]
        del graph.node[:]
        graph.node.extend(rewritten)
        graph.initializer.extend(new_inits)
        graph.output.extend(new_outputs)
        return model

    def _native_training(self, node: onnx.NodeProto, name: str, elem: int) -> bool:
        """Whether onnxruntime's own training-mode kernel can stand in for ``node``: opset 14+
        (the ``training_mode`` attribute), float32 input and statistics, and finite running
        statistics (``momentum=0`` multiplies them by 0)."""
        if self._opset < 14 or elem != TensorProto.FLOAT or name not in self._finite_stats:
            return False
        stats_types = {
            self._init_types.get(n) or self._types.get(n, (0,))[0] for n in node.input[3:5]
        }
        return stats_types == {TensorProto.FLOAT}

    def _batch_norm_nodes(self, node: onnx.NodeProto, elem: int, prefix: str, inits: list):
        """Nodes computing Y of ``node`` with batch statistics; returns (nodes, mean, var, size)."""
        x, scale, bias = node.input[0], node.input[1], node.input[2]
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        np_type = (
            helper.tensor_dtype_to_np_dtype(elem) if elem != TensorProto.UNDEFINED else np.float32
        )
        inits += [
            numpy_helper.from_array(np.array([0, 0, -1], np.int64), prefix + "shape3"),
            numpy_helper.from_array(np.array([1, -1, 1], np.int64), prefix + "shape_c"),
            numpy_helper.from_array(np.array(eps, dtype=np_type), prefix + "eps"),
        ]
        p = prefix
        mean, var = p + "mean", p + "var"
        nodes = [helper.make_node("Reshape", [x, p + "shape3"], [p + "x3"])]
        nodes += self._reduce_mean(p + "x3", mean, (0, 2), inits)
        nodes += [
            helper.make_node("Sub", [p + "x3", mean], [p + "dev"]),
            helper.make_node("Mul", [p + "dev", p + "dev"], [p + "dev2"]),
        ]
        nodes += self._reduce_mean(p + "dev2", var, (0, 2), inits)
        nodes += [
            helper.make_node("Add", [var, p + "eps"], [p + "var_eps"]),
            helper.make_node("Sqrt", [p + "var_eps"], [p + "std"]),
            helper.make_node("Div", [p + "dev", p + "std"], [p + "xhat"]),
            helper.make_node("Reshape", [scale, p + "shape_c"], [p + "scale3"]),
            helper.make_node("Reshape", [bias, p + "shape_c"], [p + "bias3"]),
            helper.make_node("Mul", [p + "xhat", p + "scale3"], [p + "scaled"]),
            helper.make_node("Add", [p + "scaled", p + "bias3"], [p + "y3"]),
            helper.make_node("Shape", [x], [p + "xshape"]),
            helper.make_node("Reshape", [p + "y3", p + "xshape"], [node.output[0]]),
            helper.make_node("Size", [x], [p + "size"]),
        ]
        return nodes, mean, var, p + "size"

    def _reduce_mean(self, x: str, out: str, axes: tuple[int, ...], inits: list) -> list:
        """ReduceMean keeping dims: axes as an attribute before opset 18, as an input from 18."""
        if self._opset < 18:
            return [helper.make_node("ReduceMean", [x], [out], axes=list(axes), keepdims=1)]
        name = out + "/axes"
        inits.append(numpy_helper.from_array(np.array(axes, np.int64), name))
        return [helper.make_node("ReduceMean", [x, name], [out], keepdims=1)]


# ------------------------------------------------------------------------ helpers


def _moments_from_outputs(mean, msd, size: int) -> Moments:
    """Moments from the stats outputs: the channel mean ``(1, C, 1...)``, the mean squared
    deviation from it per group ``(G, C, 1...)`` (G = samples, or 1), and ``size`` = the number
    of elements of the BN input. ``m2 = (size / (G C)) * sum_g msd_g``."""
    mean = np.asarray(mean, np.float64).reshape(-1)
    msd = np.asarray(msd, np.float64)
    groups = msd.shape[0]
    if size == 0:
        return Moments.empty(mean.size)
    per_group = size // (groups * mean.size)
    return Moments.from_batch(
        size // mean.size, mean, per_group * msd.reshape(groups, -1).sum(axis=0)
    )


def _training_mode_nodes(node: onnx.NodeProto, prefix: str):
    """``node`` in training mode with ``momentum=0``: its running-statistics outputs are then the
    batch mean and population variance it normalises with. Returns (nodes, mean, var, size)."""
    bn = copy.deepcopy(node)
    for attribute in [a for a in bn.attribute if a.name in ("training_mode", "momentum")]:
        bn.attribute.remove(attribute)
    bn.attribute.extend(
        [helper.make_attribute("training_mode", 1), helper.make_attribute("momentum", 0.0)]
    )
    del bn.output[1:]
    mean, var, size = prefix + "mean", prefix + "var", prefix + "size"
    bn.output.extend([mean, var])
    return [bn, helper.make_node("Size", [node.input[0]], [size])], mean, var, size


def _one_pass_statistics(
    m: np.ndarray, q: np.ndarray, shift: np.ndarray, signs: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and population variance of ``X`` per channel from the batch means ``m`` of
    ``D = signs * (X - shift)`` and ``q`` of ``D**2`` (float64), and whether each channel is
    off-centre: ``E[D**2] > tolerance * var`` (the float32 error of ``E[D**2] - E[D]**2`` is
    ``E[D**2] / var`` times that of a centred sum), where channels constant to float32 precision
    count as centred and values that are not finite never are off-centre."""
    var = np.maximum(q - m * m, 0.0)
    mean = shift + (m if signs is None else signs * m)  # float64: float32 values promote exactly
    floor = np.square(_CONSTANT_SPREAD * np.maximum(np.abs(mean), np.abs(shift)))
    with np.errstate(invalid="ignore"):
        off = np.isfinite(q) & (q > _SHIFT_TOLERANCE * np.maximum(var, floor))
    return mean, var, off


def _shifted_moments(
    mean_nc, msq_nc, size: int, shift: np.ndarray, signs: np.ndarray | None = None
) -> tuple[Moments, bool]:
    """Moments of ``X`` from one layer's one-pass outputs: per-sample means and mean squares of
    ``D = signs * (X - shift)`` ``(N, C, 1...)`` and ``size`` = the number of elements of X;
    and whether some channel is off-centre (see :func:`_one_pass_statistics`)."""
    channels = shift.size
    groups = mean_nc.shape[0] if mean_nc.ndim else 0
    if size == 0 or groups == 0:
        return Moments.empty(channels), False
    m = mean_nc.reshape(groups, channels).mean(axis=0, dtype=np.float64)
    q = msq_nc.reshape(groups, channels).mean(axis=0, dtype=np.float64)
    shift64 = shift.astype(np.float64)
    mean, var, off = _one_pass_statistics(m, q, shift64, signs)
    count = size // channels
    return Moments(count, mean, var * count), bool(off.any())


def _tensor_data_bytes(model: onnx.ModelProto) -> int | None:
    """Bytes of tensor data held in ``model`` (initializers, sparse initializers and tensor
    attributes such as Constant values, in every graph and local function), from their shapes
    and element types; None when a size cannot be told that way (strings, unknown types)."""

    def size(tensor: onnx.TensorProto) -> int | None:
        if tensor.data_location == TensorProto.EXTERNAL:
            return 0  # not stored in the message
        if tensor.data_type == TensorProto.STRING:
            return None
        try:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        except (KeyError, TypeError, ValueError):
            return None
        return (
            int(np.prod(tensor.dims, dtype=np.int64)) * itemsize if len(tensor.dims) else itemsize
        )

    tensors: list[onnx.TensorProto] = []

    def collect(graph: onnx.GraphProto) -> None:
        tensors.extend(graph.initializer)
        for sparse in graph.sparse_initializer:
            tensors.extend((sparse.values, sparse.indices))
        collect_nodes(graph.node)

    def collect_nodes(nodes) -> None:
        for node in nodes:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    tensors.append(attr.t)
                elif attr.type == onnx.AttributeProto.TENSORS:
                    tensors.extend(attr.tensors)
                elif attr.type == onnx.AttributeProto.SPARSE_TENSOR:
                    tensors.extend((attr.sparse_tensor.values, attr.sparse_tensor.indices))
                elif attr.type == onnx.AttributeProto.GRAPH:
                    collect(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for graph in attr.graphs:
                        collect(graph)

    collect(model.graph)
    for function in model.functions:
        collect_nodes(function.node)
    total = 0
    for tensor in tensors:
        n = size(tensor)
        if n is None:
            return None
        total += n
    return total


def _fits_in_one_message(model: onnx.ModelProto) -> bool:
    """Whether ``model`` serialises to less than protobuf's 2 GiB. ``ByteSize()`` costs as much
    as serialising (60 ms for a 45 MB ResNet-18), so it is asked only when the tensor data
    alone comes near the limit; the rest of a model (nodes, names) is small."""
    data = _tensor_data_bytes(model)
    if data is not None and data < _PROTO_LIMIT // 2:
        return True
    return model.ByteSize() < _PROTO_LIMIT


def _as_float(x: str, elem: int, prefix: str) -> tuple[list, str, int]:
    """Cast half-precision BN inputs to float32 before reducing them."""
    if elem in _HALF_TYPES:
        return (
            [helper.make_node("Cast", [x], [prefix + "xf"], to=TensorProto.FLOAT)],
            prefix + "xf",
            TensorProto.FLOAT,
        )
    if elem == TensorProto.DOUBLE:
        return [], x, TensorProto.DOUBLE
    return [], x, TensorProto.FLOAT


class _NameMaker:
    """Unique value names for the nodes bncheck adds (never clashing with the model's)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self._used: set[str] = set()
        graph = model.graph
        for node in graph.node:
            self._used.update(node.input)
            self._used.update(node.output)
        self._used.update(i.name for i in graph.input)
        self._used.update(i.name for i in graph.initializer)
        self._count = 0

    def prefix(self, label: str) -> str:
        while True:
            self._count += 1
            prefix = f"bncheck/{self._count}/{label}/"
            if not any(name.startswith(prefix) for name in self._used):
                self._used.add(prefix)
                return prefix

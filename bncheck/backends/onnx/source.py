"""ONNX backend: every ``BatchNormalization`` node with its parameters, across opsets 1..latest,
whether they come from initializers or from constant subgraphs (as converters write them)."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import Future
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from bncheck.backends.interface import ModelSource
from bncheck.backends.onnx.before_sites import (
    CONSUMER_REASON,
    consumer_blocker,
    feeds_consumers,
    label,
)
from bncheck.backends.onnx.bn_params import bn_parameters, value_readers
from bncheck.backends.onnx.external_data import uses_external_data
from bncheck.backends.onnx.graph import GraphIndex, iter_graphs, model_opset, value_types
from bncheck.backends.onnx.inputs import input_spec
from bncheck.backends.onnx.naming import check_names, check_wiring
from bncheck.backends.onnx.session import executable
from bncheck.backends.onnx.through import THROUGH_OPS, chain_through
from bncheck.errors import ModelLoadError, first_line
from bncheck.layer import BNLayer
from bncheck.numerics import fold_math

PRODUCER_KINDS = {"Conv": "conv", "ConvTranspose": "convtranspose", "Gemm": "gemm", "MatMul": "matmul"}
#: Ops that read only the shape of their input, not its values.
SHAPE_ONLY_OPS = ("Shape", "Size")
ONNX_DEFAULT_EPS = 1e-5
ONNX_DEFAULT_MOMENTUM = 0.9


def read_onnx(path: Path) -> tuple[onnx.ModelProto, Future[str]]:
    """The model at ``path`` (with its external data) and the sha256 of the file's bytes,
    hashed in a thread while protobuf parses the same bytes (the file is read once: hashing it
    again after the parse cost 35 ms of a ResNet-18's 0.35 s of fixed cost)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path} cannot be read ({first_line(exc)}).") from exc
    digest = _hashing(data)
    try:
        model = onnx.load_model_from_string(data)
        del data
        onnx.load_external_data_for_model(model, str(path.parent))  # as onnx.load does
    except (DecodeError, ValueError, RuntimeError, OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"{path} is not a valid ONNX model ({first_line(exc)}); "
            "it is probably truncated or corrupt: export or download it again."
        ) from exc
    except Exception as exc:  # external-data errors come in several kinds
        raise ModelLoadError(f"{path} cannot be read as ONNX ({type(exc).__name__}: {first_line(exc)}).") from exc
    if not model.graph.node and not model.graph.input:
        raise ModelLoadError(f"{path} parses as ONNX but holds no graph; it is probably not an ONNX file.")
    check_names(model, path)
    check_wiring(model, path)
    return model, digest


def _hashing(data: bytes) -> Future[str]:
    """The sha256 of ``data``, computed in a thread (hashlib lets go of the GIL on large data)."""
    done: Future[str] = Future()

    def run() -> None:
        done.set_result(hashlib.sha256(data).hexdigest())

    threading.Thread(target=run, name="bncheck-sha256", daemon=True).start()
    return done


class OnnxSource(ModelSource):
    family = "onnx"
    format = "onnx"

    @property
    def runner_class(self):
        """:class:`~bncheck.backends.onnx.runner.OnnxRunner`, imported when a command runs the
        model with it (drift, recalibrate): fold and audit never do (issue 14: per-process cost)."""
        from bncheck.backends.onnx.runner import OnnxRunner  # optional: drift's machinery

        return OnnxRunner

    def __init__(self, model: onnx.ModelProto, *, path: Path | None):
        super().__init__(path)
        if model.functions:
            try:
                from onnx import inliner

                model = inliner.inline_local_functions(model)
                self.notes.append("local functions inlined to reach BN nodes inside them")
            except Exception:  # pragma: no cover - very old onnx
                pass
        self.model = model
        self.opset = model_opset(model)
        self._layers: list[BNLayer] | None = None
        self._types: dict[str, tuple[int, int | None]] | None = None
        self._executables: dict[bool, object] = {}
        #: this exact model was read from ``path`` (nothing inlined): onnxruntime may read the file
        self._as_read = False
        #: the sha256 of the file's bytes, hashed as they were parsed (:func:`read_onnx`)
        self._digest: Future[str] | None = None

    @classmethod
    def load(cls, path: Path) -> OnnxSource:
        model, digest = read_onnx(path)
        source = cls(model, path=path)
        source._as_read = not source.notes
        source._digest = digest
        return source

    @cached_property
    def sha256(self) -> str:
        return self._digest.result() if self._digest is not None else super().sha256

    def executable(self, *, optimize: bool = False):
        """An onnxruntime executable of this model, made once per ``optimize`` setting (the
        input-size search, verification and timing share it)."""
        if optimize not in self._executables:
            one_file = self._as_read and self.path is not None and not uses_external_data(self.path)
            self._executables[optimize] = executable(self.model, optimize=optimize, file=Path(self.path) if one_file else None)
        return self._executables[optimize]

    def op_count(self) -> int:
        return sum(len(g.node) for _, g in iter_graphs(self.model.graph))

    def input_spec(self):
        return input_spec(self.model)

    def bn_layers(self) -> list[BNLayer]:
        if self._layers is None:
            self._layers = self._inventory()
            if not self._layers and self._has_producers():
                self.notes.append(folded_note(self.model.producer_name))
        return self._layers

    def _has_producers(self) -> bool:
        return any(n.op_type in PRODUCER_KINDS for _, g in iter_graphs(self.model.graph) for n in g.node)

    def value_types(self) -> dict[str, tuple[int, int | None]]:
        """name -> (ONNX element type, rank or None) of the main graph's values, from shape
        inference (run once per source; the inventory and the runner share it)."""
        if self._types is None:
            self._types = value_types(self.model)
        return self._types

    def _ranks(self) -> dict[str, int]:
        return {name: rank for name, (_, rank) in self.value_types().items() if rank is not None}

    def _inventory(self) -> list[BNLayer]:
        layers: list[BNLayer] = []
        ranks = _LazyRanks(self._ranks)  # shape inference only for a BN behind a MatMul
        main_inits = {i.name: i for i in self.model.graph.initializer}
        for path, graph in iter_graphs(self.model.graph):
            if not any(n.op_type == "BatchNormalization" for n in graph.node):
                continue
            index = GraphIndex(graph, self.opset, outer=main_inits if path else None)
            for node in graph.node:
                if node.op_type == "BatchNormalization" and node.domain in ("", "ai.onnx"):
                    layers.append(self._layer(node, index, path, ranks))
        return layers

    def _layer(self, node: onnx.NodeProto, index: GraphIndex, path: str, ranks) -> BNLayer:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        name = path + (node.name or node.output[0])
        values = bn_parameters(index, node)
        scale, bias, mean, var = values
        notes = []
        sources = {index.constant_source(n) for n in node.input[1:5] if n}
        if sources - {"initializer"}:
            notes.append("parameters from " + ", ".join(sorted(sources - {"initializer"})))
        missing = [label for label, v in zip(("scale", "B", "input_mean", "input_var"), values, strict=True) if v is None]
        if missing:
            notes.append("non-constant inputs: " + ", ".join(missing))
        training = False
        if self.opset >= 14:
            training = bool(attrs.get("training_mode", 0))
        elif self.opset < 7 and not attrs.get("is_test", 0):
            training = True
        if attrs.get("spatial", 1) == 0:
            notes.append("spatial=0 (per-activation statistics)")
        layer = BNLayer.from_arrays(
            name,
            "BatchNormalization",
            scale,
            bias,
            mean,
            var,
            eps=_float32_attr(attrs.get("epsilon", ONNX_DEFAULT_EPS)),
            momentum=_float32_attr(attrs.get("momentum", ONNX_DEFAULT_MOMENTUM)),
            momentum_convention="onnx",
            affine=True,  # scale is an input of the op, constant or not
            training=training,
            input_name=node.input[0],
            notes=notes,
        )
        self._set_producer(layer, node, index, ranks, path)
        if not layer.foldable and not training and not missing and attrs.get("spatial", 1) != 0:
            _consider_consumers(layer, node, index, ranks, values, layer.eps)
        return layer

    def _set_producer(
        self, layer: BNLayer, bn: onnx.NodeProto, index: GraphIndex, ranks, path: str = ""
    ) -> None:
        x = bn.input[0]
        prod = index.producer.get(x)
        if prod is None and path and x not in index.graph_inputs:
            layer.producer, layer.producer_kind = x, "other"
            layer.foldable = False
            layer.fold_reason = "input comes from the enclosing graph (BN inside a subgraph)"
            return
        if prod is None:
            layer.producer, layer.producer_kind = x, "input"
            layer.foldable, layer.fold_reason = False, "normalises a graph input directly (no producer op)"
            return
        kind = PRODUCER_KINDS.get(prod.op_type)
        label = prod.name or prod.output[0]
        blockers: list[str] = []
        chain = None
        if prod.op_type in THROUGH_OPS and (prod.op_type != "Add" or self.matmul_under_add(prod, index) is None):
            chain = chain_through(prod, index)
        if chain is not None:
            kind, label = PRODUCER_KINDS[chain.producer.op_type], chain.label()
            blockers += self._weight_blockers(chain.producer, index)
        elif prod.op_type == "Add":
            matmul = self.matmul_under_add(prod, index)
            if matmul is not None:
                kind, label = "matmul", f"{matmul.name or matmul.output[0]}+{label}"
                blockers += self._weight_blockers(matmul, index)
                if len(index.consumers[matmul.output[0]]) > 1:
                    blockers.append("the MatMul output is also used elsewhere")
                if ranks.get(x) not in (2,):
                    blockers.append("MatMul+Add output is not 2-D (channel axis is not the last)")
        elif kind is not None:
            blockers += self._weight_blockers(prod, index)
            if kind == "matmul" and ranks.get(x) != 2:
                blockers.append("MatMul output is not 2-D (channel axis is not the last)")
            if kind == "gemm" and len(prod.input) > 2 and prod.input[2] and not index.is_constant(prod.input[2]):
                blockers.append("Gemm bias C is not a constant")
        layer.producer, layer.producer_kind = label, kind or "other"
        if kind is None:
            layer.foldable, layer.fold_reason = False, f"fed by {prod.op_type} {label}, not by a conv/gemm"
            return
        if len(value_readers(index, x)) > 1 or x in index.graph_outputs:
            blockers.append(f"{label} output is also used elsewhere")
        if not layer.uses_running_stats:
            blockers.append("no running statistics to fold")
        layer.foldable = not blockers
        into = f"{chain.producer.op_type} {label}" if chain is not None else f"{prod.op_type} {label}"
        layer.fold_reason = "; ".join(blockers) if blockers else f"into {into}"

    @staticmethod
    def matmul_under_add(add: onnx.NodeProto, index: GraphIndex) -> onnx.NodeProto | None:
        for i, inp in enumerate(add.input[:2]):
            other = add.input[1 - i]
            node = index.producer.get(inp)
            if node is not None and node.op_type == "MatMul" and index.is_constant(other):
                return node
        return None

    @staticmethod
    def _weight_blockers(prod: onnx.NodeProto, index: GraphIndex) -> list[str]:
        if len(prod.input) < 2:
            return ["the producer has no weight input"]
        weight = prod.input[1]
        if not index.is_constant(weight):
            return [f"the weight {weight} is not a constant"]
        # Shape/Size read only the weight's shape, which folding keeps (dynamo exports compute
        # a conv's default bias from Shape(weight)).
        users = [n for n in index.consumers[weight] if n is not prod and n.op_type not in SHAPE_ONLY_OPS]
        if users:
            return [f"the weight {weight} is shared with {users[0].name or users[0].op_type}"]
        return []


def _consider_consumers(layer: BNLayer, bn: onnx.NodeProto, index: GraphIndex, ranks, values, eps: float) -> None:
    """A BN its producer cannot take may fold into the Conv/Gemm/MatMul ops after it
    (:mod:`~bncheck.backends.onnx.before_sites`): foldable then, else the reason says why not."""
    if not layer.uses_running_stats or not feeds_consumers(index, bn):
        return
    if any(out and (index.consumers.get(out) or out in index.graph_outputs) for out in bn.output[1:]):
        return
    scale, bias, mean, var = (np.ravel(v) for v in values)
    try:
        _, shift = fold_math.bn_scale_shift(mean, var, eps, weight=scale, bias=bias)
    except ValueError:
        return
    why = consumer_blocker(index, bn, shift_is_zero=not np.any(shift != 0), rank_of=ranks.get)
    if why is None:
        into = ", ".join(label(n) for n in value_readers(index, bn.output[0]))
        layer.foldable, layer.fold_reason = True, f"{CONSUMER_REASON}{into} (BN before it)"
    else:
        layer.fold_reason = f"{layer.fold_reason}; not into the ops after it either: {why}"


class _LazyRanks:
    """``name -> rank`` from shape inference, run on the first question (most models never ask:
    only a BN fed by a MatMul needs its input's rank)."""

    def __init__(self, compute) -> None:
        self._compute = compute
        self._ranks: dict[str, int] | None = None

    def get(self, name: str, default=None):
        if self._ranks is None:
            self._ranks = self._compute()
        return self._ranks.get(name, default)


def _float32_attr(value: float) -> float:
    """An ONNX float attribute (stored as float32) as the shortest decimal that round-trips,
    so that epsilon=1e-5 reads 1e-05 and not 9.999999747378752e-06."""
    return float(str(np.float32(value)))


def folded_note(producer: str) -> str:
    """The note on a graph with convolutions or matmuls and no BatchNormalization node: what its
    exporter does with BN (from the model's ``producer_name``), and where the statistics are."""
    name = (producer or "").strip()
    if name.lower() == "pytorch":
        return (
            "no BatchNormalization nodes: torch.onnx.export folds BN into the conv/gemm "
            "weights by default (do_constant_folding=True in eval mode); audit the PyTorch "
            "checkpoint instead, or export with do_constant_folding=False and "
            "training=torch.onnx.TrainingMode.PRESERVE"
        )
    if name.lower() in ("tf2onnx", "keras2onnx"):
        return (
            f"no BatchNormalization nodes: this graph was converted by {name}, which folds a frozen "
            "TensorFlow graph's BN into the convolution weights, so no running statistics are left in "
            "this file; check the model's BN layers before conversion"
        )
    by = f" ({name})" if name else ""
    return (
        f"no BatchNormalization nodes: its exporter{by} may have folded BN into the conv/gemm weights, "
        "so no running statistics are left in this file; check the model before export"
    )


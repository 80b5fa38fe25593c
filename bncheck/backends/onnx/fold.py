"""Folding BatchNormalization nodes of an ONNX graph into the Conv / ConvTranspose / Gemm /
MatMul(+Add) that feeds them: a rewrite of a copy of the model (no torch involved).

For every BN of the main graph that the inventory (:class:`~bncheck.backends.onnx.source.
OnnxSource`) found foldable, the producer gets new weight and bias initializers computed by
:mod:`bncheck.numerics.fold_math` (float64, cast once), the producer's output takes over the
BN output's name (so consumers, graph outputs and their ``value_info`` stay valid), and the
BN node disappears. A Conv without bias gets a bias input; a bare MatMul gets an ``Add``.
Parameters held in constant subgraphs (``Constant``, ``Cast``, ``CastLike``, ``Expand``... as
converters and unoptimised dynamo exports write them) are read as constants; the chains
that become dead are removed, and nothing else is touched: opset, IR version, metadata,
doc strings, the remaining value_info (stale entries dropped) and node names are kept.

With ``affine=True`` a BN that cannot be folded but uses constant running statistics becomes
``Mul(x, scale) -> Add(., shift)`` with per-channel constants shaped ``(C, 1, ..., 1)`` (opset 7+,
numpy broadcasting).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from bncheck.backends.interface import FoldedModel, FoldOutcome
from bncheck.backends.onnx.before_sites import CONSUMER_REASON, feeds_consumers, into_consumers
from bncheck.backends.onnx.bn_params import bn_parameters, type_readers, value_readers
from bncheck.backends.onnx.external_data import fits_in_one_message
from bncheck.backends.onnx.fold_affine import InputTypes, affine_rewrite
from bncheck.backends.onnx.fold_before import fold_before
from bncheck.backends.onnx.fold_edits import (
    CannotFold,
    GraphEdits,
    Rewrite,
    all_names,
    prune_initializers,
)
from bncheck.backends.onnx.fold_through import PATTERNS
from bncheck.backends.onnx.graph import GraphIndex, iter_graphs
from bncheck.backends.onnx.serialized import remember
from bncheck.backends.onnx.source import OnnxSource
from bncheck.errors import BncheckError, first_line
from bncheck.numerics import fold_math

SUBGRAPH_REASON = "not found in the model's graphs (main graph and If/Loop/Scan bodies)"


class FoldCheckError(BncheckError):
    """The rewritten graph fails ``onnx.checker`` (a bncheck defect: nothing is written)."""


def fold_onnx(source: OnnxSource, *, affine: bool = False, keep: dict[str, str] | None = None) -> FoldedModel:
    """Fold every foldable BN of ``source`` into its producer, in a copy of the model: the
    If/Loop/Scan bodies first (their new initializers live in the body), then the main graph;
    the BNs named in ``keep`` stay (with that reason)."""
    model = onnx.ModelProto()
    model.CopyFrom(source.model)
    layers = {layer.name: layer for layer in source.bn_layers()}
    taken = all_names(model)
    types = InputTypes(model)
    if affine:
        types.rank_and_type("")  # shape inference once, before the graph is edited
    main_inits = {i.name: i for i in model.graph.initializer}
    outcomes: dict[str, FoldOutcome] = {}
    released: list[str] = []
    graphs = [(path, graph) for path, graph in iter_graphs(model.graph) if _has_bn(graph)]
    for path, graph in sorted(graphs, key=lambda pg: pg[0] == ""):  # subgraphs, then the main graph
        folder = _GraphFolder(model, graph, path, source, layers, affine=affine, taken=taken, types=types,
                              outer=main_inits if path else None, keep=keep or {})
        outcomes.update(folder.run())
        released += folder.edits.released_outer
    prune_initializers(model.graph, released)
    for name in layers:
        outcomes.setdefault(name, FoldOutcome("kept", None, SUBGRAPH_REASON))
    check_model(model, source.model)
    return FoldedModel(model=model, outcomes=outcomes, notes=[])


def _has_bn(graph: onnx.GraphProto) -> bool:
    return any(n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx") for n in graph.node)


def check_model(folded: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """``onnx.checker`` on the result; a failure the input already had is not ours."""
    try:
        onnx.checker.check_model(remember(folded) if fits_in_one_message(folded) else folded)
    except onnx.checker.ValidationError as exc:
        try:
            onnx.checker.check_model(original)
        except onnx.checker.ValidationError:
            return  # the input model already fails the checker; onnxruntime is the judge then
        raise FoldCheckError(
            f"the folded ONNX model fails onnx.checker ({first_line(exc)}) although the input passes; "
            "nothing was written: this is a bncheck defect, please report it with --debug output."
        ) from exc


class _GraphFolder:
    """Plans a rewrite for every BN of one graph (the main graph or a body), then applies them all."""

    def __init__(self, model: onnx.ModelProto, graph: onnx.GraphProto, path: str, source: OnnxSource, layers, *,
                 affine: bool, taken: set[str], types: InputTypes, outer=None, keep: dict[str, str] | None = None):
        self.keep = keep or {}
        self.graph = graph
        self.path = path
        self.opset = source.opset
        self.affine = affine
        self.layers = layers
        self.index = GraphIndex(graph, self.opset, outer=outer)
        self.edits = GraphEdits(model, self.index, graph=graph, taken=taken)
        self.types = types
        self.source = source

    def run(self) -> dict[str, FoldOutcome]:
        """Every BN into its producer first; those left into the ops reading them
        (:mod:`~bncheck.backends.onnx.fold_before`), from the weights the first pass gave them."""
        outcomes: dict[str, FoldOutcome] = {}
        rewrites: dict[int, Rewrite] = {}
        left = []
        for node in self.graph.node:
            if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx"):
                continue
            name = self.path + (node.name or node.output[0])
            outcome, rewrite = self._plan(node, self.layers.get(name))
            outcomes[name] = outcome
            if rewrite is not None:
                rewrites[id(node)] = rewrite
            else:
                left.append((name, node))
        for name, node in left:
            outcome, rewrite = self._plan_after(node, self.layers.get(name), outcomes[name].reason)
            outcomes[name] = outcome
            if rewrite is not None:
                rewrites[id(node)] = rewrite
        if rewrites:
            self.edits.apply(rewrites)
        return outcomes

    def _problems(self, bn: onnx.NodeProto, layer) -> list[str]:
        problems = self._bn_problems(bn)
        if layer is not None and layer.name in self.keep:
            problems.append(self.keep[layer.name])
        return problems

    def _plan(self, bn: onnx.NodeProto, layer) -> tuple[FoldOutcome, Rewrite | None]:
        """Into its producer, or kept with the reason (see :meth:`_plan_after`)."""
        problems = self._problems(bn, layer)
        if problems:
            return FoldOutcome("kept", None, "; ".join(problems)), None
        if layer is None or not layer.foldable or into_consumers(layer):
            return FoldOutcome("kept", None, layer.fold_reason if layer is not None else "unknown layer"), None
        try:
            rewrite, into = self._fold(bn)
        except (ValueError, CannotFold) as exc:
            return FoldOutcome("kept", None, str(exc)), None
        return FoldOutcome("folded", into, layer.fold_reason or f"into {into}"), rewrite

    def _plan_after(self, bn: onnx.NodeProto, layer, reason: str) -> tuple[FoldOutcome, Rewrite | None]:
        """A BN its producer did not take: into the Conv/Gemm/MatMul ops reading it when it
        feeds some, else kept (``affine``: as Mul+Add)."""
        problems = self._problems(bn, layer)
        if not problems and layer is not None and layer.uses_running_stats and feeds_consumers(self.index, bn):
            try:
                s, t = self._scale_shift(bn)
                rewrite, into = fold_before(self.edits, bn, s, t, rank_of=self._rank)
                return FoldOutcome("folded", into, f"{CONSUMER_REASON}{into} (BN before it)", side="consumer"), rewrite
            except (ValueError, CannotFold) as exc:
                if "not into the ops after it" not in reason:  # the inventory said it already
                    reason = f"{reason}; not into the ops after it either: {exc}"
        if self.affine and not problems:
            try:
                s, t = self._scale_shift(bn)
                rewrite = affine_rewrite(self.edits, bn, s, t, self.types, self.opset)
                return FoldOutcome("affine", None, f"kept as Mul+Add: {reason}"), rewrite
            except (ValueError, CannotFold) as exc:
                reason = f"{reason}; no Mul+Add either: {exc}"
        return FoldOutcome("kept", None, reason), None

    def _rank(self, name: str) -> int | None:
        """The rank of a main-graph value (shape inference, shared with the inventory)."""
        return self.source.value_types().get(name, (None, None))[1] if not self.path else None

    def _bn_problems(self, bn: onnx.NodeProto) -> list[str]:
        attrs = {a.name: helper.get_attribute_value(a) for a in bn.attribute}
        problems = []
        if self.opset >= 14 and attrs.get("training_mode", 0):
            problems.append("the node runs in training mode (training_mode=1): it normalises with batch statistics")
        elif self.opset < 7 and not attrs.get("is_test", 0):
            problems.append("the node runs in training mode (is_test=0): it normalises with batch statistics")
        if attrs.get("spatial", 1) == 0:
            problems.append("spatial=0 (per-activation statistics) is not a per-channel affine map")
        labels = ("scale", "B", "input_mean", "input_var")
        for label, value in zip(labels, bn_parameters(self.index, bn), strict=True):
            if value is None:
                problems.append(f"its {label} input is not a constant")
        for out in bn.output[1:]:
            if out and (self.index.consumers.get(out) or out in self.index.graph_outputs):
                problems.append(f"its statistics output {out} is used")
                break
        return problems

    def _scale_shift(self, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
        attrs = {a.name: helper.get_attribute_value(a) for a in bn.attribute}
        eps = float(attrs.get("epsilon", 1e-5))
        scale, bias, mean, var = bn_parameters(self.index, bn)
        return fold_math.bn_scale_shift(
            np.ravel(mean), np.ravel(var), eps, weight=np.ravel(scale), bias=np.ravel(bias)
        )

    def _fold(self, bn: onnx.NodeProto) -> tuple[Rewrite, str]:
        x, y = bn.input[0], bn.output[0]
        prod = self.index.producer.get(x)
        if prod is None:
            raise CannotFold("no producer node")
        if len(value_readers(self.index, x)) != 1 or x in self.index.graph_outputs:
            raise CannotFold(f"{x} is also used elsewhere")
        s, t = self._scale_shift(bn)
        rewrite = Rewrite(bn=bn, released=[n for n in bn.input[1:5] if n])
        for reader in type_readers(self.index, x):
            rewrite.retargeted += [(reader, i, y) for i, name in enumerate(reader.input) if name == x]
        fold_into = PATTERNS.get(prod.op_type)
        if fold_into is None:
            raise CannotFold(f"fed by {prod.op_type}, not by Conv/ConvTranspose/Gemm/MatMul")
        return rewrite, fold_into(self.edits, prod, x, y, s, t, rewrite)

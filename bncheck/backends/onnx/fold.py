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

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bncheck.backends.interface import FoldedModel, FoldOutcome
from bncheck.backends.onnx.graph import GraphIndex, iter_graphs
from bncheck.backends.onnx.source import SHAPE_ONLY_OPS, OnnxSource
from bncheck.errors import BncheckError, first_line
from bncheck.numerics import fold_math


class FoldCheckError(BncheckError):
    """The rewritten graph fails ``onnx.checker`` (a bncheck defect: nothing is written)."""


@dataclass
class _Rewrite:
    """The edits for one BN node, applied after every BN has been planned."""

    bn: onnx.NodeProto
    #: nodes that take the BN node's place in the node list (empty: the BN is just removed)
    replacement: list[onnx.NodeProto] = field(default_factory=list)
    #: value names whose consumer went away (candidates for dead-code removal)
    released: list[str] = field(default_factory=list)


def fold_onnx(source: OnnxSource, *, affine: bool = False) -> FoldedModel:
    """Fold every foldable BN of ``source`` into its producer, in a copy of the model."""
    model = onnx.ModelProto()
    model.CopyFrom(source.model)
    folder = _GraphFolder(model, source, affine=affine)
    outcomes = folder.run()
    notes = list(folder.notes)
    check_model(model, source.model)
    return FoldedModel(model=model, outcomes=outcomes, notes=notes)


def check_model(folded: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """``onnx.checker`` on the result; a failure the input already had is not ours."""
    try:
        onnx.checker.check_model(folded)
    except onnx.checker.ValidationError as exc:
        try:
            onnx.checker.check_model(original)
        except onnx.checker.ValidationError:
            return  # the input model already fails the checker; onnxruntime is the judge then
        first = first_line(exc)
        raise FoldCheckError(
            f"the folded ONNX model fails onnx.checker ({first}) although the input passes; "
            "nothing was written: this is a bncheck defect, please report it with --debug output."
        ) from exc


class _GraphFolder:
    def __init__(self, model: onnx.ModelProto, source: OnnxSource, *, affine: bool):
        self.model = model
        self.graph = model.graph
        self.opset = source.opset
        self.affine = affine
        self.layers = {layer.name: layer for layer in source.bn_layers()}
        self.index = GraphIndex(self.graph, self.opset)
        self.notes: list[str] = []
        self.taken = _all_names(model)
        self.new_initializers: list[onnx.TensorProto] = []
        self.dropped_initializers: set[str] = set()
        self._inferred: dict[str, tuple[int | None, int | None]] | None = None

    # ------------------------------------------------------------------ driver

    def run(self) -> dict[str, FoldOutcome]:
        if self.affine:
            self._rank_and_type("")  # shape inference once, before the graph is edited
        outcomes: dict[str, FoldOutcome] = {}
        rewrites: dict[int, _Rewrite] = {}
        main_names = set()
        for node in self.graph.node:
            if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx"):
                continue
            name = node.name or node.output[0]
            main_names.add(name)
            layer = self.layers.get(name)
            outcome, rewrite = self._plan(node, layer)
            outcomes[name] = outcome
            if rewrite is not None:
                rewrites[id(node)] = rewrite
        for name in self.layers:
            if name not in main_names:
                outcomes[name] = FoldOutcome(
                    "kept", None, "inside a control-flow subgraph (If/Loop/Scan body): only the main graph is folded"
                )
        if rewrites:
            self._apply(rewrites)
        return outcomes

    def _plan(self, bn: onnx.NodeProto, layer) -> tuple[FoldOutcome, _Rewrite | None]:
        problems = self._bn_problems(bn)
        foldable = layer is not None and layer.foldable and not problems
        if foldable:
            try:
                rewrite, into = self._fold(bn)
                return FoldOutcome("folded", into, layer.fold_reason or f"into {into}"), rewrite
            except (ValueError, _CannotFold) as exc:
                reason = str(exc)
        else:
            reason = "; ".join(problems) if problems else (layer.fold_reason if layer is not None else "unknown layer")
        if self.affine and not problems:
            try:
                return FoldOutcome("affine", None, f"kept as Mul+Add: {reason}"), self._affine(bn)
            except (ValueError, _CannotFold) as exc:
                reason = f"{reason}; no Mul+Add either: {exc}"
        return FoldOutcome("kept", None, reason), None

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
        for label, name in zip(labels, list(bn.input[1:5]) + [""] * 4):
            if not name or self.index.constant(name) is None:
                problems.append(f"its {label} input is not a constant")
        for out in bn.output[1:]:
            if out and (self.index.consumers.get(out) or out in self.index.graph_outputs):
                problems.append(f"its statistics output {out} is used")
                break
        return problems

    def _scale_shift(self, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray]:
        attrs = {a.name: helper.get_attribute_value(a) for a in bn.attribute}
        eps = float(attrs.get("epsilon", 1e-5))
        scale, bias, mean, var = (self.index.constant(n) for n in bn.input[1:5])
        return fold_math.bn_scale_shift(
            np.ravel(mean), np.ravel(var), eps, weight=np.ravel(scale), bias=np.ravel(bias)
        )

    # ------------------------------------------------------------------ folding

    def _fold(self, bn: onnx.NodeProto) -> tuple[_Rewrite, str]:
        x, y = bn.input[0], bn.output[0]
        prod = self.index.producer.get(x)
        if prod is None:
            raise _CannotFold("no producer node")
        if len(self.index.consumers.get(x, [])) != 1 or x in self.index.graph_outputs:
            raise _CannotFold(f"{x} is also used elsewhere")
        s, t = self._scale_shift(bn)
        rewrite = _Rewrite(bn=bn, released=[n for n in bn.input[1:5] if n])
        label = prod.name or prod.output[0]
        if prod.op_type in ("Conv", "ConvTranspose"):
            weight, bias = self._param(prod, 1), self._param(prod, 2, optional=True)
            groups = int(_attr(prod, "group", 1))
            new_w, new_b = fold_math.fold_bn_into_conv(
                weight, bias, s, t, transposed=prod.op_type == "ConvTranspose", groups=groups
            )
            wname = prod.input[1]
            self._set_param(prod, 1, new_w, rewrite)
            self._set_param(prod, 2, new_b, rewrite, bias_of=wname)
            prod.output[0] = y
        elif prod.op_type == "Gemm":
            weight, c = self._param(prod, 1), self._param(prod, 2, optional=True)
            trans_b = bool(_attr(prod, "transB", 0))
            alpha, beta = float(_attr(prod, "alpha", 1.0)), float(_attr(prod, "beta", 1.0))
            if beta == 0.0:  # C is ignored: start from no C and set beta to 1
                new_w, new_c = fold_math.fold_bn_into_linear(weight, None, s, t, trans_b=trans_b, alpha=alpha, beta=1.0)
                _set_attr(prod, "beta", 1.0)
            else:
                new_w, new_c = fold_math.fold_bn_into_linear(weight, c, s, t, trans_b=trans_b, alpha=alpha, beta=beta)
            wname = prod.input[1]
            self._set_param(prod, 1, new_w, rewrite)
            self._set_param(prod, 2, new_c, rewrite, bias_of=wname)
            prod.output[0] = y
        elif prod.op_type == "Add":
            matmul = OnnxSource._matmul_under_add(prod, self.index)
            if matmul is None:
                raise _CannotFold("the Add is not MatMul + constant")
            if len(self.index.consumers.get(matmul.output[0], [])) != 1:
                raise _CannotFold("the MatMul output is also used elsewhere")
            j = 1 if self.index.producer.get(prod.input[0]) is matmul else 0
            new_w, new_b = fold_math.fold_bn_into_matmul_add(self._param(matmul, 1), self.index.constant(prod.input[j]), s, t)
            wname = matmul.input[1]
            self._set_param(matmul, 1, new_w, rewrite)
            self._set_param(prod, j, new_b, rewrite, bias_of=wname)
            prod.output[0] = y
            label = f"{matmul.name or matmul.output[0]}+{label}"
        elif prod.op_type == "MatMul":
            new_w, new_b = fold_math.fold_bn_into_matmul_add(self._param(prod, 1), None, s, t)
            wname = prod.input[1]
            self._set_param(prod, 1, new_w, rewrite)
            bias_name = self._add_initializer(new_b, _bias_name(wname, label))
            add = helper.make_node("Add", [x, bias_name], [y], name=self._unique(f"{label}/bn_fold_add"))
            rewrite.replacement.append(add)
        else:
            raise _CannotFold(f"fed by {prod.op_type}, not by Conv/ConvTranspose/Gemm/MatMul")
        return rewrite, label

    def _param(self, node: onnx.NodeProto, i: int, *, optional: bool = False) -> np.ndarray | None:
        if i >= len(node.input) or not node.input[i]:
            if optional:
                return None
            raise _CannotFold(f"{node.op_type} has no input {i}")
        value = self.index.constant(node.input[i])
        if value is None:
            raise _CannotFold(f"{node.op_type} input {node.input[i]} is not a constant")
        return value

    def _set_param(
        self, node: onnx.NodeProto, i: int, value: np.ndarray, rewrite: _Rewrite, *, bias_of: str | None = None
    ) -> None:
        """Point input ``i`` of ``node`` at a new initializer holding ``value``.

        An initializer used by this node alone is replaced under its own name; a value from a
        constant chain (or a shared name) gets a fresh name and the old one is released."""
        old = node.input[i] if i < len(node.input) else ""
        if old and old in self.index.initializers and self._sole_user(old, node):
            self.dropped_initializers.add(old)
            self.new_initializers.append(numpy_helper.from_array(np.asarray(value), old))
            return
        preferred = _bias_name(bias_of, node.name or node.output[0]) if bias_of is not None else f"{old or node.name}.bn_folded"
        name = self._add_initializer(value, preferred)
        if old:
            rewrite.released.append(old)
        while len(node.input) <= i:
            node.input.append("")
        node.input[i] = name

    def _sole_user(self, name: str, node: onnx.NodeProto) -> bool:
        users = [u for u in self.index.consumers.get(name, []) if u.op_type not in SHAPE_ONLY_OPS]
        return all(u is node for u in users) and name not in self.index.graph_outputs and not _used_in_subgraphs(self.graph, name)

    def _add_initializer(self, value: np.ndarray, preferred: str) -> str:
        name = self._unique(preferred)
        self.new_initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def _unique(self, preferred: str) -> str:
        name, k = preferred, 1
        while name in self.taken:
            k += 1
            name = f"{preferred}_{k}"
        self.taken.add(name)
        return name

    # ------------------------------------------------------------------ affine

    def _affine(self, bn: onnx.NodeProto) -> _Rewrite:
        x, y = bn.input[0], bn.output[0]
        s, t = self._scale_shift(bn)
        rank, elem = self._rank_and_type(x)
        if elem is None:
            elem = self.index.elem_type(bn.input[1]) or onnx.TensorProto.FLOAT
        dtype = helper.tensor_dtype_to_np_dtype(elem)
        label = bn.name or y
        rewrite = _Rewrite(bn=bn, released=[n for n in bn.input[1:5] if n])
        if self.opset < 7:
            raise _CannotFold("Mul/Add before opset 7 broadcast differently; re-export at opset 7 or later")
        if rank is None:
            raise _CannotFold("the rank of its input is unknown (shape inference failed)")
        shape = (s.size,) + (1,) * max(rank - 2, 0)
        scale = self._add_initializer(_cast_checked(s, dtype).reshape(shape), f"{label}.affine_scale")
        shift = self._add_initializer(_cast_checked(t, dtype).reshape(shape), f"{label}.affine_shift")
        mid = self._unique(f"{y}_scaled")
        rewrite.replacement = [
            helper.make_node("Mul", [x, scale], [mid], name=self._unique(f"{label}/affine_mul")),
            helper.make_node("Add", [mid, shift], [y], name=self._unique(f"{label}/affine_add")),
        ]
        return rewrite

    def _rank_and_type(self, name: str) -> tuple[int | None, int | None]:
        if self._inferred is None:
            self._inferred = {}
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model)
            except Exception:  # shape inference fails on some valid models
                inferred = self.model
            for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
                if not vi.type.HasField("tensor_type"):
                    continue
                tt = vi.type.tensor_type
                rank = len(tt.shape.dim) if tt.HasField("shape") else None
                self._inferred[vi.name] = (rank, tt.elem_type or None)
        return self._inferred.get(name, (None, None))

    # ------------------------------------------------------------------ applying

    def _apply(self, rewrites: dict[int, _Rewrite]) -> None:
        nodes: list[onnx.NodeProto] = []
        released: list[str] = []
        for node in self.graph.node:
            rewrite = rewrites.get(id(node))
            if rewrite is None:
                nodes.append(node)
                continue
            nodes.extend(rewrite.replacement)
            released.extend(rewrite.released)
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        inits = [i for i in self.graph.initializer if i.name not in self.dropped_initializers]
        as_inputs = self.model.ir_version < 4 or (
            len(self.graph.initializer) > 0 and all(i.name in {v.name for v in self.graph.input} for i in self.graph.initializer)
        )
        del self.graph.initializer[:]
        self.graph.initializer.extend(inits + self.new_initializers)
        listed = {v.name: i for i, v in enumerate(self.graph.input)}
        for init in self.new_initializers:
            declared = helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            if init.name in listed:  # replaced in place: keep its input declaration in step
                self.graph.input[listed[init.name]].CopyFrom(declared)
            elif as_inputs:
                self.graph.input.append(declared)
        self._remove_dead(released)
        self._drop_stale_value_info()

    def _remove_dead(self, candidates: list[str]) -> None:
        """Remove the nodes and initializers that only fed what was folded away."""
        pending = list(dict.fromkeys(candidates))
        while pending:
            used = _used_names(self.graph)
            producers = {o: n for n in self.graph.node for o in n.output if o}
            dead_nodes: list[onnx.NodeProto] = []
            dead_inits: set[str] = set()
            next_pending: list[str] = []
            for name in pending:
                if name in used:
                    continue
                node = producers.get(name)
                if node is not None:
                    if all(not o or o not in used for o in node.output) and all(n is not node for n in dead_nodes):
                        dead_nodes.append(node)
                        next_pending.extend(i for i in node.input if i)
                elif any(i.name == name for i in self.graph.initializer):
                    dead_inits.add(name)
            if not dead_nodes and not dead_inits:
                break
            keep = [n for n in self.graph.node if all(n is not d for d in dead_nodes)]
            del self.graph.node[:]
            self.graph.node.extend(keep)
            if dead_inits:
                inits = [i for i in self.graph.initializer if i.name not in dead_inits]
                del self.graph.initializer[:]
                self.graph.initializer.extend(inits)
                inputs = [v for v in self.graph.input if v.name not in dead_inits]
                del self.graph.input[:]
                self.graph.input.extend(inputs)
            pending = list(dict.fromkeys(next_pending))

    def _drop_stale_value_info(self) -> None:
        alive = {o for n in self.graph.node for o in n.output if o}
        alive |= {i.name for i in self.graph.initializer} | {v.name for v in self.graph.input}
        keep = [vi for vi in self.graph.value_info if vi.name in alive]
        if len(keep) != len(self.graph.value_info):
            del self.graph.value_info[:]
            self.graph.value_info.extend(keep)


class _CannotFold(Exception):
    """A foldable-looking BN whose producer turns out not to be rewritable (a reason)."""


# ------------------------------------------------------------------------------ helpers


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    node.attribute.append(helper.make_attribute(name, value))


def _bias_name(weight_name: str | None, label: str) -> str:
    if weight_name and weight_name.endswith("weight"):
        return weight_name[: -len("weight")] + "bias"
    return f"{label}.bias"


def _cast_checked(values: np.ndarray, dtype) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = np.asarray(values, dtype=np.float64).astype(dtype)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"the per-channel scale/shift overflows {np.dtype(dtype).name}")
    return out


def _all_names(model: onnx.ModelProto) -> set[str]:
    names: set[str] = set()
    for _, graph in iter_graphs(model.graph):
        names.update(i.name for i in graph.initializer)
        names.update(v.name for v in (*graph.input, *graph.output, *graph.value_info))
        for node in graph.node:
            names.update(n for n in (*node.input, *node.output) if n)
            if node.name:
                names.add(node.name)
    return names


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Names read by any node of ``graph`` or of its subgraphs, and the graph outputs."""
    used = {o.name for o in graph.output}
    for _, g in iter_graphs(graph):
        for node in g.node:
            used.update(i for i in node.input if i)
        if g is not graph:
            used.update(o.name for o in g.output)
    return used


def _used_in_subgraphs(graph: onnx.GraphProto, name: str) -> bool:
    for path, g in iter_graphs(graph):
        if path and any(name in node.input for node in g.node):
            return True
    return False


# ------------------------------------------------------------------------------ figures


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements stored in the model: initializers and Constant-node tensors, every graph."""
    total = 0
    for _, graph in iter_graphs(model.graph):
        total += sum(int(np.prod(i.dims)) if i.dims else 1 for i in graph.initializer)
        for node in graph.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value":
                        total += int(np.prod(a.t.dims)) if a.t.dims else 1
                    elif a.name in ("value_floats", "value_ints"):
                        total += len(a.floats) + len(a.ints)
    return total


def node_count(model: onnx.ModelProto) -> int:
    return sum(len(g.node) for _, g in iter_graphs(model.graph))


def uses_external_data(path: Path | None) -> bool:
    """Whether the ONNX file at ``path`` keeps tensors in external files."""
    if path is None:
        return False
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    for _, graph in iter_graphs(model.graph):
        for init in graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                return True
    return False


def external_data_files(path: Path | None) -> list[Path]:
    """The external-data files an ONNX file at ``path`` refers to (to protect them)."""
    if path is None:
        return []
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return []
    files: set[Path] = set()
    for _, graph in iter_graphs(model.graph):
        for init in graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                for entry in init.external_data:
                    if entry.key == "location":
                        files.add(Path(path).parent / entry.value)
    return sorted(files)


# ------------------------------------------------------------------------------ running


def input_specs(model: onnx.ModelProto) -> list[tuple[str, tuple[int | None, ...], np.dtype]]:
    """(name, shape with None for dynamic axes, numpy dtype) of each real graph input."""
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
        specs.append((vi.name, shape, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))))
    return specs


def ort_runner(model: onnx.ModelProto, *, optimize: bool):
    """``batch (tuple of arrays, graph-input order) -> list of outputs`` with onnxruntime on
    CPU; ``optimize=False`` runs the graph exactly as written (no fusion)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = first_line(exc, limit=200)
        raise BncheckError(f"onnxruntime cannot run the model ({first}); bncheck verifies with onnxruntime on CPU.") from exc
    names = [i.name for i in session.get_inputs()]

    def run(batch: tuple) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, batch)))

    return run

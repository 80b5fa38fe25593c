"""The *moments* graph: a copy of the model in which, for every observed BN input ``X``,
reduction nodes (:mod:`.one_pass` or :mod:`.two_pass`) placed right after the layer, while its
input is in cache, produce extra graph outputs; the one-pass layers' results travel in one
packed output (:mod:`.packing`).

The element count ``n`` of each BN input comes from shape inference on the batch's input
shape (once per shape, in the runner). Only where inference cannot tell it does the graph get
a ``Size(X)`` output (``sized`` layers): any op outside the NCHWc set that reads a blocked
tensor (Size and Shape included) makes onnxruntime copy it back to NCHW, which costs about 1%
of the forward pass per layer on a ResNet-18.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from bncheck.backends.onnx.bn_nodes import BnGraph
from bncheck.backends.onnx.naming import NameMaker
from bncheck.backends.onnx.one_pass import one_pass_nodes
from bncheck.backends.onnx.packing import PackedLayer, Packing, pack
from bncheck.backends.onnx.pool_first import PoolFirst
from bncheck.backends.onnx.two_pass import two_pass_nodes


@dataclass
class MomentsPlan:
    """What the moments graph observes: the layers, their current shifts (None: two-pass; the
    runner moves them), the stems that pool first, the running means and the layers that need
    a Size output (the runner adds them as it meets shapes inference cannot follow)."""

    layers: list[str]
    shifts: dict[str, np.ndarray | None]
    pool_first: dict[str, PoolFirst]
    running_means: dict[str, np.ndarray]
    sized: set[str] = field(default_factory=set)
    #: layer -> block size of the last axis for maps too large for one float32 average
    #: (:mod:`.row_pool`; the runner sets it from the batch's shapes)
    blocks: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class MomentsGraph:
    """The rewritten model, each unpacked layer's stats outputs, and the packing."""

    model: onnx.ModelProto
    #: layer -> its stats outputs (first, second[, size]); packed layers' are inside the pack
    outputs: dict[str, tuple[str, ...]]
    packing: Packing


def build_moments_graph(
    graph: BnGraph, plan: MomentsPlan, names: NameMaker, base: onnx.ModelProto | None = None
) -> MomentsGraph:
    """A copy of ``graph.model`` (or of ``base``, the same model with its weights declared
    only: :func:`~bncheck.backends.onnx.in_memory.split_weights`) with the reductions of every
    layer of ``plan``."""
    model = copy.deepcopy(graph.model if base is None else base)
    by_index = {graph.nodes[name]: name for name in plan.layers}
    pooled = {
        name: pool
        for name, pool in plan.pool_first.items()
        if name in by_index.values() and plan.shifts[name] is not None
    }
    replaced = {index for pool in pooled.values() for index in pool.replaced}
    nodes, new_outputs, new_inits, stats_outputs = [], [], [], {}
    for index, node in enumerate(model.graph.node):
        if index in replaced:  # the Relu/MaxPool after a pooled-first layer: rewritten there
            continue
        name = by_index.get(index)
        if name is None:
            nodes.append(node)
            continue
        layer_nodes, outputs = _layer_nodes(graph, plan, node, name, names.prefix(name), new_inits, pooled)
        nodes += layer_nodes
        stats_outputs[name] = tuple(out for out, _ in outputs)
        if plan.shifts[name] is None or name in plan.sized:
            new_outputs += [helper.make_tensor_value_info(out, t, None) for out, t in outputs]
    packed_nodes, packing = pack(_packed_layers(graph, plan, stats_outputs), names, new_inits)
    nodes += packed_nodes
    if packing.layers:
        new_outputs.insert(0, helper.make_tensor_value_info(packing.output, TensorProto.FLOAT, None))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(new_inits)
    model.graph.output.extend(new_outputs)
    return MomentsGraph(model, stats_outputs, packing)


def _layer_nodes(graph, plan: MomentsPlan, node, name: str, prefix: str, inits: list, pooled: dict):
    """The nodes taking the place of ``node`` (the layer and its stats), and its outputs."""
    shift = plan.shifts[name]
    sized = name in plan.sized
    if shift is None:
        stats, outputs = two_pass_nodes(graph, node, prefix, inits, sized=sized, block=plan.blocks.get(name))
        return [node, *stats], outputs
    shifted, stats, outputs = one_pass_nodes(
        graph, node, shift, plan.running_means[name], prefix, inits, sized=sized, pool=pooled.get(name),
        block=plan.blocks.get(name),
    )
    return [*shifted, *stats], outputs  # the Add, [MaxPool,] the BN node [and Relu], the stats


def _packed_layers(graph: BnGraph, plan: MomentsPlan, outputs: dict) -> dict[str, PackedLayer]:
    """The one-pass layers whose moments go into the packed output (those without Size)."""
    packed = {}
    for name in plan.layers:
        shift = plan.shifts[name]
        if shift is None or name in plan.sized:
            continue
        pool = plan.pool_first.get(name)
        channels = graph.channels[name]
        signs = pool.signs if pool is not None else np.ones(channels)
        packed[name] = PackedLayer(outputs[name][0], outputs[name][1], channels, shift, signs)
    return packed

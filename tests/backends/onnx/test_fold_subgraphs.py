"""BN nodes inside If and Loop bodies fold into the Conv of the same body; checked against
onnxruntime on the unfolded model for every branch."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bncheck.backends.onnx.graph import iter_graphs
from bncheck.commands.fold import fold

RNG = np.random.default_rng(11)
C = 4


def _bn_inits(prefix):
    values = {"scale": RNG.uniform(0.5, 1.5, C), "B": RNG.normal(size=C), "mean": RNG.normal(size=C), "var": RNG.uniform(0.3, 2, C)}
    return [numpy_helper.from_array(v.astype(np.float32), f"{prefix}.{k}") for k, v in values.items()]


def _conv_bn_body(name, x, weight, out, *, own_weight=None, inputs=(), extra_outputs=()):
    inits = _bn_inits(name)
    if own_weight is not None:
        inits.append(own_weight)
    nodes = [
        helper.make_node("Conv", [x, weight], [f"{name}_c"], name=f"{name}_conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", [f"{name}_c", *(f"{name}.{k}" for k in ("scale", "B", "mean", "var"))],
                         [out], name=f"{name}_bn"),
    ]
    outputs = [*extra_outputs, helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, C, 5, 5])]
    return helper.make_graph(nodes, name, list(inputs), outputs, initializer=inits)


def _model(tmp_path):
    w = numpy_helper.from_array(RNG.normal(size=(C, C, 3, 3)).astype(np.float32), "W")
    own = numpy_helper.from_array(RNG.normal(size=(C, C, 3, 3)).astype(np.float32), "W_else")
    then_b = _conv_bn_body("then", "x", "W", "y_then")
    else_b = _conv_bn_body("else", "x", "W_else", "y_else", own_weight=own)
    # Loop body: (iteration, cond, carried) -> (cond, carried'), carried' = BN(Conv(carried))
    loop_b = _conv_bn_body(
        "body", "h", "W", "h_next",
        inputs=[helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, C, 5, 5])],
        extra_outputs=[helper.make_tensor_value_info("c_out", TensorProto.BOOL, [])],
    )
    loop_b.node.insert(0, helper.make_node("Identity", ["c_in"], ["c_out"]))
    nodes = [
        helper.make_node("If", ["cond"], ["branch"], name="if", then_branch=then_b, else_branch=else_b),
        helper.make_node("Constant", [], ["trips"], value=numpy_helper.from_array(np.array(2, np.int64))),
        helper.make_node("Constant", [], ["true"], value=numpy_helper.from_array(np.array(True))),
        helper.make_node("Loop", ["trips", "true", "branch"], ["y"], name="loop", body=loop_b),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 5, 5]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 5, 5])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    onnx.checker.check_model(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return path


def test_bn_in_if_branches_and_loop_body_fold(tmp_path, ort_run):
    src, out = _model(tmp_path), tmp_path / "f.onnx"
    x = RNG.standard_normal((1, C, 5, 5)).astype(np.float32)
    report = fold(src, out, timing=False)
    statuses = {name: e["fold"]["status"] for name, e in report.layer_extras.items()}
    assert len(statuses) == 3 and set(statuses.values()) == {"folded"}, report.layer_extras
    folded = onnx.load(str(out))
    onnx.checker.check_model(folded)
    assert not any(n.op_type == "BatchNormalization" for _, g in iter_graphs(folded.graph) for n in g.node)
    assert "W" not in {i.name for i in folded.graph.initializer}  # both bodies now hold their own copy
    for cond in (True, False):
        flag = np.array(cond)
        (ref,), (got,) = ort_run(src, x, flag), ort_run(out, x, flag)
        assert np.abs(ref - got).max() <= 1e-5 * np.abs(ref).max(), cond


def test_iter_graphs_skips_exactly_the_standard_ops_without_graph_attributes():
    """iter_graphs reads the attributes only of the standard ops that can hold a graph, and of
    every op of another domain: the list it keeps is what onnx's own schemas say."""
    from bncheck.backends.onnx import graph as graph_module

    kinds = {onnx.defs.OpSchema.AttrType.GRAPH, onnx.defs.OpSchema.AttrType.GRAPHS}
    holding = {(s.domain, s.name) for s in onnx.defs.get_all_schemas_with_history() if any(a.type in kinds for a in s.attributes.values())}
    standard = {name for domain, name in holding if domain in graph_module._STANDARD_DOMAINS}
    assert standard == set(graph_module._WITH_SUBGRAPHS)


def test_iter_graphs_finds_a_body_under_a_custom_domain_op():
    body = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "inner",
                             [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1])],
                             [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1])])
    node = helper.make_node("Wrapper", ["x"], ["y"], domain="com.example", name="wrap", body=body)
    outer = helper.make_graph([node], "outer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    assert [path for path, _ in iter_graphs(outer)] == ["", "wrap/body/"]

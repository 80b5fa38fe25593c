"""bncheck fold on ONNX models: every rewrite checked against onnxruntime on the unfolded model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bncheck.backends.onnx import external_data
from bncheck.commands.fold import fold

RNG = np.random.default_rng(0)
SAMPLES = Path(__file__).resolve().parents[3] / "sample_models"


def _check(original, out, ort_run, *inputs, rtol=1e-5):
    """The folded file computes what the original computes (onnxruntime, both unoptimised)."""
    ref = ort_run(original, *inputs)
    got = ort_run(out, *inputs)
    assert len(ref) == len(got)
    for a, b in zip(ref, got, strict=True):
        scale = max(float(np.abs(a).max()), 1e-12)
        assert float(np.abs(a - b).max()) <= rtol * scale, (float(np.abs(a - b).max()), scale)


def _status(report) -> dict[str, str]:
    return {name: extra["fold"]["status"] for name, extra in report.layer_extras.items()}


def _save(model: onnx.ModelProto, path):
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _bn_node(name, x, y, c, prefix, *, eps=1e-5, seed=1):
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.uniform(0.5, 1.5, c).astype(np.float32), f"{prefix}.scale"),
        numpy_helper.from_array(rng.normal(size=c).astype(np.float32), f"{prefix}.B"),
        numpy_helper.from_array(rng.normal(size=c).astype(np.float32), f"{prefix}.mean"),
        numpy_helper.from_array(rng.uniform(0.3, 2.0, c).astype(np.float32), f"{prefix}.var"),
    ]
    node = helper.make_node(
        "BatchNormalization", [x, f"{prefix}.scale", f"{prefix}.B", f"{prefix}.mean", f"{prefix}.var"], [y], name=name, epsilon=eps
    )
    return node, inits


# ------------------------------------------------------------------------------ conv family


def test_grouped_and_depthwise_conv(tmp_path, export_onnx, randomize_bn, ort_run, bn_patterns):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, groups=2, padding=1, dilation=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, groups=8, padding=2, dilation=2, bias=False),  # depthwise, dilated
        nn.BatchNorm2d(8),
    )
    src = export_onnx(randomize_bn(model), torch.randn(2, 4, 9, 9), tmp_path / "m.onnx")
    assert bn_patterns(src)["bn"] == 2
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert report.exit_code == 0
    assert set(_status(report).values()) == {"folded"}
    assert bn_patterns(tmp_path / "f.onnx") == {"bn": 0, "bn_after_producer": 0}
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((3, 4, 9, 9)).astype(np.float32))


def test_convtranspose_with_groups(tmp_path, export_onnx, randomize_bn, ort_run, bn_patterns):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = nn.Sequential(
        nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, bias=False),
        nn.BatchNorm2d(6),
        nn.ConvTranspose2d(6, 9, 2, groups=3),
        nn.BatchNorm2d(9),
    )
    src = export_onnx(randomize_bn(model, seed=3), torch.randn(1, 4, 5, 5), tmp_path / "m.onnx")
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert report.extras["fold"]["layers_folded"] == 2
    assert bn_patterns(tmp_path / "f.onnx")["bn"] == 0
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((2, 4, 5, 5)).astype(np.float32))


def test_convtranspose_1d_grouped(tmp_path, export_onnx, randomize_bn, ort_run):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = nn.Sequential(nn.ConvTranspose1d(6, 4, 3, groups=2), nn.BatchNorm1d(4))
    src = export_onnx(randomize_bn(model), torch.randn(1, 6, 7), tmp_path / "m.onnx")
    fold(src, tmp_path / "f.onnx", timing=False)
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((2, 6, 7)).astype(np.float32))


def test_conv_feeding_bn_and_residual_is_not_folded(tmp_path, export_onnx, randomize_bn, ort_run):
    torch = pytest.importorskip("torch")
    from support.bn_modules import Residual

    src = export_onnx(randomize_bn(Residual()), torch.randn(1, 3, 6, 6), tmp_path / "m.onnx")
    report = fold(src, tmp_path / "f.onnx", timing=False, affine=False)
    (outcome,) = [e["fold"] for e in report.layer_extras.values()]
    assert outcome["status"] == "kept" and "also used" in outcome["reason"]
    assert report.exit_code == 0
    assert (tmp_path / "f.onnx").exists()  # nothing folded: OUT is the model as it is
    assert any("nothing to fold" in n for n in report.notes) and report.result.verification.passed


def test_two_convs_sharing_one_weight(tmp_path, export_onnx, randomize_bn, ort_run):
    torch = pytest.importorskip("torch")

    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(3, 3, 3, padding=1, bias=False)
            self.b = torch.nn.Conv2d(3, 3, 3, padding=1, bias=False)
            self.b.weight = self.a.weight
            self.bn = torch.nn.BatchNorm2d(3)
            self.bn2 = torch.nn.BatchNorm2d(3)
            self.c = torch.nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return self.bn(self.a(x)) + self.b(torch.relu(x)) + self.bn2(self.c(x))

    src = export_onnx(randomize_bn(Shared()), torch.randn(1, 3, 6, 6), tmp_path / "m.onnx")
    model = onnx.load(str(src))
    conv_weights = [n.input[1] for n in model.graph.node if n.op_type == "Conv"]
    assert len(conv_weights) - len(set(conv_weights)) == 1  # one initializer used by two Conv nodes
    report = fold(src, tmp_path / "f.onnx", timing=False)
    status = sorted(_status(report).values())
    assert status == ["folded", "kept"]
    kept = [e["fold"] for e in report.layer_extras.values() if e["fold"]["status"] == "kept"][0]
    assert "shared" in kept["reason"]
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((2, 3, 6, 6)).astype(np.float32))


def test_zero_variance_channel_with_eps(tmp_path, onnx_bn, ort_run):
    var = np.array([0.0, 1.0, 0.0, 2.0], dtype=np.float32)
    model, _ = onnx_bn(4, values={"var": var}, epsilon=1e-3)
    src = _save(model, tmp_path / "m.onnx")
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert report.extras["fold"]["layers_folded"] == 1
    x = RNG.standard_normal((1, 2, 4, 4)).astype(np.float32)  # the fixture's fixed input shape
    _check(src, tmp_path / "f.onnx", ort_run, x)


def test_dynamo_export_conv_without_bias_unoptimised(tmp_path, export_onnx, randomize_bn, ort_run, bn_patterns):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4)))
    src = export_onnx(model, torch.randn(2, 3, 8, 8), tmp_path / "m.onnx", dynamo=True, optimize=False, opset=18)
    before = onnx.load(str(src))
    ops = [n.op_type for n in before.graph.node]
    assert ops.count("BatchNormalization") == 2
    assert "Constant" in ops and "Expand" in ops  # the default bias is a constant subgraph
    conv_bias = [n.input[2] for n in before.graph.node if n.op_type == "Conv"]
    assert all(b not in {i.name for i in before.graph.initializer} for b in conv_bias)
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert report.extras["fold"]["layers_folded"] == 2
    after = onnx.load(str(tmp_path / "f.onnx"))
    after_ops = [n.op_type for n in after.graph.node]
    assert bn_patterns(after)["bn"] == 0
    assert "Expand" not in after_ops and "CastLike" not in after_ops and "Shape" not in after_ops  # dead chain removed
    assert report.extras["fold"]["nodes"]["after"] < report.extras["fold"]["nodes"]["before"] - 2
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((2, 3, 8, 8)).astype(np.float32))


# ------------------------------------------------------------------------------ Gemm / MatMul


@pytest.mark.parametrize(
    "trans_b,alpha,beta,with_c",
    [(0, 1.0, 1.0, True), (0, 0.5, 2.0, True), (1, 1.5, 0.0, True), (0, 1.0, 1.0, False), (1, 1.0, 1.0, True)],
)
def test_gemm(tmp_path, ort_run, bn_patterns, trans_b, alpha, beta, with_c):
    k, n = 5, 4
    w = RNG.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["x", "W"]
    if with_c:
        inits.append(numpy_helper.from_array(RNG.standard_normal(n).astype(np.float32), "C"))
        inputs.append("C")
    gemm = helper.make_node("Gemm", inputs, ["g"], name="gemm", transB=trans_b, alpha=alpha, beta=beta)
    bn, bn_inits = _bn_node("bn", "g", "y", n, "bn")
    graph = helper.make_graph(
        [gemm, bn], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])], initializer=inits + bn_inits,
    )
    src = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)]), tmp_path / "m.onnx")
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert _status(report) == {"bn": "folded"}
    assert bn_patterns(tmp_path / "f.onnx")["bn"] == 0
    out = onnx.load(str(tmp_path / "f.onnx"))
    (node,) = out.graph.node
    assert helper.get_attribute_value(next(a for a in node.attribute if a.name == "transB")) == trans_b
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((6, k)).astype(np.float32))


def test_matmul_add_and_bare_matmul_on_2d(tmp_path, ort_run, bn_patterns):
    k, n = 6, 3
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["m1"], name="mm1"),
        helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
    ]
    bn1, i1 = _bn_node("bn1", "a1", "h", n, "bn1")
    nodes += [bn1, helper.make_node("MatMul", ["h", "W2"], ["m2"], name="mm2")]
    bn2, i2 = _bn_node("bn2", "m2", "y", n, "bn2", seed=2)
    nodes.append(bn2)
    inits = [
        numpy_helper.from_array(RNG.standard_normal((k, n)).astype(np.float32), "W1"),
        numpy_helper.from_array(RNG.standard_normal(n).astype(np.float32), "b1"),
        numpy_helper.from_array(RNG.standard_normal((n, n)).astype(np.float32), "W2"),
    ] + i1 + i2
    graph = helper.make_graph(
        nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])], initializer=inits,
    )
    src = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert _status(report) == {"bn1": "folded", "bn2": "folded"}
    out = onnx.load(str(tmp_path / "f.onnx"))
    assert [n.op_type for n in out.graph.node] == ["MatMul", "Add", "MatMul", "Add"]
    assert bn_patterns(out)["bn"] == 0
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((5, k)).astype(np.float32))


def test_bn1d_after_linear_on_nc_and_ncl(tmp_path, export_onnx, randomize_bn, ort_run):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    nc = randomize_bn(nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)))
    src = export_onnx(nc, torch.randn(3, 5), tmp_path / "nc.onnx")
    report = fold(src, tmp_path / "nc_f.onnx", timing=False)
    assert list(_status(report).values()) == ["folded"]
    _check(src, tmp_path / "nc_f.onnx", ort_run, RNG.standard_normal((7, 5)).astype(np.float32))

    # (N, C, L): Linear acts on L, BN1d normalises C: not the same axis, so it must stay.
    ncl = randomize_bn(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(3)))
    src = export_onnx(ncl, torch.randn(2, 3, 4), tmp_path / "ncl.onnx")
    report = fold(src, tmp_path / "ncl_f.onnx", timing=False)
    (outcome,) = [e["fold"] for e in report.layer_extras.values()]
    assert outcome["status"] == "kept" and "2-D" in outcome["reason"]
    report = fold(src, tmp_path / "ncl_f.onnx", timing=False, affine=True, force=True)  # OUT written unchanged above
    assert [e["fold"]["status"] for e in report.layer_extras.values()] == ["affine"]
    _check(src, tmp_path / "ncl_f.onnx", ort_run, RNG.standard_normal((2, 3, 4)).astype(np.float32))


# ------------------------------------------------------------------------------ parameters


@pytest.mark.parametrize("params", ["constant", "cast", "expand"])
def test_bn_parameters_from_constant_nodes(tmp_path, onnx_bn, ort_run, params):
    model, _ = onnx_bn(3, params=params, epsilon=1e-3)
    assert any(n.op_type == "Constant" for n in model.graph.node)
    src = _save(model, tmp_path / "m.onnx")
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert report.extras["fold"]["layers_folded"] == 1
    out = onnx.load(str(tmp_path / "f.onnx"))
    assert [n.op_type for n in out.graph.node] == ["Conv"]  # the Constant chains went with the BN
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((1, 2, 4, 4)).astype(np.float32))


def test_tf_converter_style_sample_model(tmp_path, ort_run):
    src = SAMPLES / "broken" / "digits_cnn_converted.onnx"
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert report.extras["fold"]["layers_folded"] == 3
    assert all(layer.eps == pytest.approx(1e-3) for layer in report.layers)
    _check(src, tmp_path / "f.onnx", ort_run, RNG.uniform(0, 1, (4, 1, 8, 8)).astype(np.float32))


def test_affine_false_and_eps_1e3(tmp_path, export_onnx, randomize_bn, ort_run):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4, affine=False, eps=1e-3))
    src = export_onnx(randomize_bn(model), torch.randn(1, 2, 5, 5), tmp_path / "m.onnx")
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert report.layers[0].eps == pytest.approx(1e-3)
    assert report.extras["fold"]["layers_folded"] == 1
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((2, 2, 5, 5)).astype(np.float32))


# ------------------------------------------------------------------------------ kept / affine


def _relu_and_add_model():
    c = 3
    w = numpy_helper.from_array(RNG.standard_normal((c, c, 1, 1)).astype(np.float32), "W")
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
    ]
    bn1, i1 = _bn_node("bn_after_relu", "r", "b1", c, "bn1")
    nodes += [bn1, helper.make_node("Add", ["b1", "x"], ["s"], name="add")]
    bn2, i2 = _bn_node("bn_after_add", "s", "y", c, "bn2", seed=3)
    nodes.append(bn2)
    graph = helper.make_graph(
        nodes, "kept", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, 4, 4])], initializer=[w] + i1 + i2,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def test_bn_fed_by_activation_or_add_is_kept_or_affine(tmp_path, ort_run):
    src = _save(_relu_and_add_model(), tmp_path / "m.onnx")
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert _status(report) == {"bn_after_relu": "kept", "bn_after_add": "kept"}
    reasons = {n: e["fold"]["reason"] for n, e in report.layer_extras.items()}
    assert "Relu" in reasons["bn_after_relu"] and "Add" in reasons["bn_after_add"]
    assert (tmp_path / "f.onnx").exists()  # the model as it is

    report = fold(src, tmp_path / "f.onnx", timing=False, affine=True, force=True)
    assert _status(report) == {"bn_after_relu": "affine", "bn_after_add": "affine"}
    out = onnx.load(str(tmp_path / "f.onnx"))
    ops = [n.op_type for n in out.graph.node]
    assert "BatchNormalization" not in ops and ops.count("Mul") == 2
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((2, 3, 4, 4)).astype(np.float32))


def test_no_foldable_bn(tmp_path, onnx_bn):
    model, _ = onnx_bn(3, producer="input")
    src = _save(model, tmp_path / "m.onnx")
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert report.exit_code == 0
    assert report.extras["fold"]["layers_folded"] == 0 and report.extras["fold"]["output"]["written"] is True
    assert (tmp_path / "f.onnx").exists()
    assert any("no BN layer can be folded" in n for n in report.notes)
    assert report.extras["verification"]["passed"] is True


def test_bn_in_subgraph_is_reported_kept(tmp_path, onnx_bn):
    model, _ = onnx_bn(3, in_if=True)
    src = _save(model, tmp_path / "m.onnx")
    report = fold(src, tmp_path / "f.onnx", timing=False)
    (outcome,) = [e["fold"] for e in report.layer_extras.values()]
    assert outcome["status"] == "kept" and "subgraph" in outcome["reason"]


# ------------------------------------------------------------------------------ opsets, metadata, files


@pytest.mark.parametrize("opset", [9, 15, 20])
def test_opsets(tmp_path, export_onnx, randomize_bn, ort_run, opset):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = randomize_bn(nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(36, 3), nn.BatchNorm1d(3)))
    src = export_onnx(model, torch.randn(1, 2, 5, 5), tmp_path / "m.onnx", opset=opset, dynamo=opset == 20, optimize=False)
    report = fold(src, tmp_path / "f.onnx", timing=False, affine=True)
    assert sorted(_status(report).values()) == ["affine", "folded", "folded"]
    out = onnx.load(str(tmp_path / "f.onnx"))
    assert out.opset_import[0].version == onnx.load(str(src)).opset_import[0].version == opset
    onnx.checker.check_model(out, full_check=True)
    batch = 1 if opset == 20 else 3  # the dynamo export has a static batch
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((batch, 2, 5, 5)).astype(np.float32))


def test_metadata_and_value_info_kept_consistent(tmp_path, onnx_bn, ort_run):
    model, _ = onnx_bn(3)
    model = onnx.shape_inference.infer_shapes(model)
    model.producer_name, model.doc_string = "my-exporter", "docs"
    helper.set_model_props(model, {"author": "me", "license": "MIT"})
    assert {vi.name for vi in model.graph.value_info} == {"c"}
    src = _save(model, tmp_path / "m.onnx")
    fold(src, tmp_path / "f.onnx", timing=False)
    out = onnx.load(str(tmp_path / "f.onnx"))
    assert (out.producer_name, out.doc_string, out.ir_version) == ("my-exporter", "docs", model.ir_version)
    assert {p.key: p.value for p in out.metadata_props} == {"author": "me", "license": "MIT"}
    produced = {o for n in out.graph.node for o in n.output}
    assert all(vi.name in produced for vi in out.graph.value_info)  # "c" was dropped: no stale entry
    assert {i.name for i in out.graph.initializer} == {"W", "conv.bias"}  # W replaced under its own name
    onnx.checker.check_model(out, full_check=True)


def test_external_data_is_kept_external(tmp_path, export_onnx, randomize_bn, ort_run):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = randomize_bn(nn.Sequential(nn.Conv2d(8, 32, 3), nn.BatchNorm2d(32)))
    tmp = export_onnx(model, torch.randn(1, 8, 6, 6), tmp_path / "plain.onnx")
    proto = onnx.load(str(tmp))
    src = tmp_path / "ext.onnx"
    onnx.save_model(proto, str(src), save_as_external_data=True, location="ext.weights", size_threshold=64)
    assert (tmp_path / "ext.weights").exists()
    before = (tmp_path / "ext.weights").read_bytes()
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert report.extras["fold"]["output"]["files"] == [str(tmp_path / "f.onnx"), str(tmp_path / "f.onnx.data")]
    assert (tmp_path / "f.onnx.data").exists()
    assert (tmp_path / "ext.weights").read_bytes() == before
    raw = onnx.load(str(tmp_path / "f.onnx"), load_external_data=False)
    assert any(i.data_location == TensorProto.EXTERNAL for i in raw.graph.initializer)
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((2, 8, 6, 6)).astype(np.float32))


def test_onnx_path_does_not_import_torch(tmp_path, onnx_bn):
    model, _ = onnx_bn(3)
    src = _save(model, tmp_path / "m.onnx")
    code = (
        "import sys; from bncheck import fold; "
        f"r = fold({str(src)!r}, {str(tmp_path / 'f.onnx')!r}, timing=False); "
        "assert r.extras['fold']['layers_folded'] == 1; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_verify_on_data(tmp_path, ort_run):
    src = SAMPLES / "digits_cnn.onnx"
    report = fold(src, tmp_path / "f.onnx", verify=SAMPLES / "data" / "digits" / "reference.npz", samples=100, timing=False)
    v = report.extras["verification"]
    assert v["inputs"] == "data" and v["samples"] == 100 and v["passed"]
    assert v["max_rel_err"] < 1e-5
    x = np.load(SAMPLES / "data" / "digits" / "reference.npz")["x"][:50]
    _check(src, tmp_path / "f.onnx", ort_run, x)


@pytest.mark.parametrize("over_limit", [False, True])
def test_a_model_with_external_data_folds_and_verifies(tmp_path, onnx_bn, ort_run, monkeypatch, over_limit):
    """A model saved with ``save_as_external_data=True`` folds, verifies on onnxruntime and is
    written with its data external; ``over_limit`` lowers protobuf's 2 GiB limit so that every
    session (original, folded) goes through the factory's external-data path, as a model of
    more than 2 GiB does."""
    model, _ = onnx_bn(4)
    src = tmp_path / "ext.onnx"
    onnx.save_model(model, str(src), save_as_external_data=True, location="ext.weights", size_threshold=0)
    assert onnx.load(str(src), load_external_data=False).graph.initializer[0].data_location == TensorProto.EXTERNAL
    if over_limit:
        monkeypatch.setattr(external_data, "PROTO_LIMIT", 64)
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert report.extras["fold"]["layers_folded"] == 1
    verification = report.extras["verification"]
    assert verification["passed"] and verification["samples"] > 0
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((1, 2, 4, 4)).astype(np.float32))

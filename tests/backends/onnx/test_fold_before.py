"""BN *before* a Conv / Gemm / MatMul (``x -> BN -> op``) folded into the ops after it, in ONNX:
every folded file checked against onnxruntime on the original model, every kept BN with its
reason, and the per-site proofs of the new sites."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bncheck.backends.onnx.before_sites import PADDED_REASON
from bncheck.backends.onnx.fold_proof import prove_sites
from bncheck.commands.fold import fold

RNG = np.random.default_rng(7)


def _check(original, out, ort_run, x, rtol=1e-5):
    ref, got = ort_run(original, x), ort_run(out, x)
    assert len(ref) == len(got)
    for a, b in zip(ref, got, strict=True):
        scale = max(float(np.abs(a).max()), 1e-12)
        assert float(np.abs(a - b).max()) <= rtol * scale, (float(np.abs(a - b).max()), scale)


def _fold_info(report) -> dict[str, dict]:
    return {name: extra["fold"] for name, extra in report.layer_extras.items()}


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _bn_inits(prefix: str, c: int, *, seed: int = 1, shift: bool = True) -> list[onnx.TensorProto]:
    rng = np.random.default_rng(seed)
    values = {
        "scale": rng.uniform(0.5, 1.5, c),
        "B": rng.normal(size=c) if shift else np.zeros(c),
        "mean": rng.normal(size=c) if shift else np.zeros(c),
        "var": rng.uniform(0.3, 2.0, c),
    }
    return [numpy_helper.from_array(v.astype(np.float32), f"{prefix}.{k}") for k, v in values.items()]


def _bn(x: str, y: str, prefix: str = "bn") -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x, *(f"{prefix}.{k}" for k in ("scale", "B", "mean", "var"))], [y], name=prefix)


def _save(nodes, inits, inputs, outputs, path, opset: int = 17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _f32(name, shape):
    """A float tensor; an int ``shape`` is a rank (symbolic dims)."""
    dims = [f"{name}_{k}" for k in range(shape)] if isinstance(shape, int) else shape
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def _w(name, shape, seed=3):
    return numpy_helper.from_array(np.random.default_rng(seed).normal(size=shape).astype(np.float32), name)


# ------------------------------------------------------------------------------ torch exports


@pytest.mark.parametrize("dynamo", [False, True])
def test_batchnorm1d_mlp_from_torch_export_folds_every_bn(tmp_path, export_onnx, randomize_bn, ort_run, dynamo):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = nn.Sequential(nn.BatchNorm1d(12), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.BatchNorm1d(16), nn.Linear(16, 3))
    src = export_onnx(randomize_bn(model), torch.randn(4, 12), tmp_path / "m.onnx", dynamo=dynamo, optimize=False)
    assert _ops(src).count("BatchNormalization") == 3
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert report.exit_code == 0
    info = _fold_info(report)
    assert [v["status"] for v in info.values()] == ["folded"] * 3, info
    assert sum(v.get("side") == "consumer" for v in info.values()) == 2
    assert "BatchNormalization" not in _ops(tmp_path / "f.onnx")
    assert report.extras["fold"]["site_proofs"] == {"passed": 3, "failed": 0, "not_proved": 0}
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((4, 12)).astype(np.float32))


def test_bn_before_1x1_conv_and_padded_conv_from_torch(tmp_path, export_onnx, randomize_bn, ort_run):
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn_in, self.pw = nn.BatchNorm2d(4), nn.Conv2d(4, 6, 1)
            self.bn_mid, self.conv = nn.BatchNorm2d(6), nn.Conv2d(6, 5, 3, padding=1)

        def forward(self, x):
            return self.conv(self.bn_mid(torch.relu(self.pw(self.bn_in(x)))))

    src = export_onnx(randomize_bn(Net()), torch.randn(2, 4, 8, 8), tmp_path / "m.onnx")
    report = fold(src, tmp_path / "f.onnx", timing=False)
    info = {name.split("/")[1]: v for name, v in _fold_info(report).items()}
    assert info["bn_in"]["status"] == "folded" and info["bn_in"]["side"] == "consumer"
    assert info["bn_in"]["into"].startswith("Conv ")
    assert info["bn_mid"]["status"] == "kept"
    assert PADDED_REASON in info["bn_mid"]["reason"]
    assert _ops(tmp_path / "f.onnx").count("BatchNormalization") == 1
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((3, 4, 8, 8)).astype(np.float32))


# ------------------------------------------------------------------------------ hand-built graphs


def test_bn_before_grouped_conv_and_two_convs(tmp_path, ort_run):
    """One BN read by a grouped 3x3 conv (pads 0) and a 1x1 conv without bias: both absorb it."""
    nodes = [
        _bn("x", "n"),
        helper.make_node("Conv", ["n", "wa", "ba"], ["a"], name="grouped", group=2, kernel_shape=[3, 3], pads=[0, 0, 0, 0]),
        helper.make_node("Conv", ["n", "wb"], ["b"], name="pointwise", kernel_shape=[1, 1], strides=[2, 2]),
    ]
    inits = [*_bn_inits("bn", 4), _w("wa", (6, 2, 3, 3)), _w("ba", (6,), 4), _w("wb", (3, 4, 1, 1), 5)]
    src = _save(nodes, inits, [_f32("x", [2, 4, 9, 9])], [_f32("a", 4), _f32("b", 4)], tmp_path / "m.onnx")
    report = fold(src, tmp_path / "f.onnx", timing=False)
    info = _fold_info(report)["bn"]
    assert info["status"] == "folded" and info["into"] == "Conv grouped, Conv pointwise", info
    assert report.layer_extras["bn"]["fold"]["site_proof"]["passed"] is True
    assert _ops(tmp_path / "f.onnx") == ["Conv", "Conv"]
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((2, 4, 9, 9)).astype(np.float32))


def test_bn_also_read_by_a_relu_or_a_graph_output_is_kept(tmp_path):
    conv = helper.make_node("Conv", ["n", "w"], ["c"], name="conv", kernel_shape=[1, 1])
    inits = [*_bn_inits("bn", 4), _w("w", (3, 4, 1, 1))]
    relu = helper.make_node("Relu", ["n"], ["r"], name="relu")
    src = _save([_bn("x", "n"), conv, relu], inits, [_f32("x", [1, 4, 5, 5])], [_f32("c", 4), _f32("r", 4)],
                tmp_path / "relu.onnx")
    info = _fold_info(fold(src, tmp_path / "f1.onnx", timing=False))["bn"]
    assert info["status"] == "kept" and "feeds Relu relu, not only Conv/Gemm/MatMul ops" in info["reason"]
    src = _save([_bn("x", "n"), conv], inits, [_f32("x", [1, 4, 5, 5])], [_f32("c", 4), _f32("n", 4)],
                tmp_path / "out.onnx")
    info = _fold_info(fold(src, tmp_path / "f2.onnx", timing=False))["bn"]
    assert info["status"] == "kept" and "its output (n) is also a graph output" in info["reason"]


@pytest.mark.parametrize("auto_pad", ["VALID", "SAME_UPPER"])
def test_auto_pad_valid_folds_and_same_with_a_shift_is_kept(tmp_path, ort_run, auto_pad):
    nodes = [_bn("x", "n"), helper.make_node("Conv", ["n", "w", "b"], ["y"], name="conv", kernel_shape=[3, 3], auto_pad=auto_pad)]
    inits = [*_bn_inits("bn", 3), _w("w", (2, 3, 3, 3)), _w("b", (2,), 6)]
    src = _save(nodes, inits, [_f32("x", ["N", 3, 7, 7])], [_f32("y", 4)], tmp_path / "m.onnx")
    info = _fold_info(fold(src, tmp_path / "f.onnx", timing=False))["bn"]
    if auto_pad == "VALID":
        assert info["status"] == "folded"
        _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((2, 3, 7, 7)).astype(np.float32))
    else:
        assert info["status"] == "kept" and PADDED_REASON in info["reason"]


def test_padded_conv_absorbs_a_bn_without_shift(tmp_path, ort_run):
    """Zero mean and zero bias: BN(0) = 0, so the zero-padded border is unchanged."""
    nodes = [_bn("x", "n"), helper.make_node("Conv", ["n", "w"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    inits = [*_bn_inits("bn", 3, shift=False), _w("w", (2, 3, 3, 3))]
    src = _save(nodes, inits, [_f32("x", ["N", 3, 6, 6])], [_f32("y", 4)], tmp_path / "m.onnx")
    assert _fold_info(fold(src, tmp_path / "f.onnx", timing=False))["bn"]["status"] == "folded"
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((2, 3, 6, 6)).astype(np.float32))


@pytest.mark.parametrize(("trans_b", "beta"), [(0, 1.0), (1, 0.5), (1, 0.0)])
def test_bn_before_gemm_with_trans_b_and_beta(tmp_path, ort_run, trans_b, beta):
    w_shape = (5, 3) if trans_b else (3, 5)
    nodes = [_bn("x", "n"), helper.make_node("Gemm", ["n", "w", "c"], ["y"], name="gemm", transB=trans_b, alpha=1.5, beta=beta)]
    inits = [*_bn_inits("bn", 3), _w("w", w_shape), _w("c", (5,), 8)]
    src = _save(nodes, inits, [_f32("x", ["N", 3])], [_f32("y", 2)], tmp_path / "m.onnx")
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert _fold_info(report)["bn"]["status"] == "folded"
    assert report.layer_extras["bn"]["fold"]["site_proof"]["passed"] is True
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((4, 3)).astype(np.float32))


@pytest.mark.parametrize("with_add", [True, False])
def test_bn_before_matmul_on_2d_input(tmp_path, ort_run, with_add):
    nodes = [_bn("x", "n"), helper.make_node("MatMul", ["n", "w"], ["m"], name="mm")]
    inits = [*_bn_inits("bn", 3), _w("w", (3, 4))]
    if with_add:
        nodes.append(helper.make_node("Add", ["m", "b"], ["y"], name="add"))
        inits.append(_w("b", (4,), 9))
    src = _save(nodes, inits, [_f32("x", ["N", 3])], [_f32("y" if with_add else "m", 2)], tmp_path / "m.onnx")
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert _fold_info(report)["bn"]["status"] == "folded"
    assert report.layer_extras["bn"]["fold"]["site_proof"]["passed"] is True
    assert _ops(tmp_path / "f.onnx") == ["MatMul", "Add"]
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((6, 3)).astype(np.float32))


def test_bn_before_matmul_on_3d_input_is_kept(tmp_path):
    """(N, C, L) @ W multiplies the last axis, not the BN channels."""
    nodes = [_bn("x", "n"), helper.make_node("MatMul", ["n", "w"], ["y"], name="mm")]
    inits = [*_bn_inits("bn", 3), _w("w", (5, 4))]
    src = _save(nodes, inits, [_f32("x", [2, 3, 5])], [_f32("y", 3)], tmp_path / "m.onnx")
    info = _fold_info(fold(src, tmp_path / "f.onnx", timing=False))["bn"]
    assert info["status"] == "kept" and "3-D" in info["reason"]


def test_tampered_consumer_fold_fails_its_site_proof(tmp_path):
    nodes = [_bn("x", "n"), helper.make_node("Conv", ["n", "w"], ["y"], name="conv", kernel_shape=[1, 1])]
    inits = [*_bn_inits("bn", 4), _w("w", (3, 4, 1, 1))]
    src = _save(nodes, inits, [_f32("x", [1, 4, 5, 5])], [_f32("y", 4)], tmp_path / "m.onnx")
    fold(src, tmp_path / "f.onnx", timing=False)
    original, folded = onnx.load(str(src)), onnx.load(str(tmp_path / "f.onnx"))
    assert prove_sites(original, folded, ["bn"], atol=1e-5, rtol=1e-5)["bn"].passed is True
    conv = folded.graph.node[0]
    init = next(i for i in folded.graph.initializer if i.name == conv.input[2])
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + np.float32(0.05), init.name))
    proof = prove_sites(original, folded, ["bn"], atol=1e-5, rtol=1e-5)["bn"]
    assert proof.passed is False and proof.max_abs_err > 1e-2


def test_conv_between_two_bns_absorbs_both(tmp_path, ort_run):
    """BN -> Conv -> BN: the Conv takes the BN after it (producer pass), then the one before it,
    from its already folded weights; both site proofs run across the composed op."""
    nodes = [_bn("x", "n", "bn_a"), helper.make_node("Conv", ["n", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3]),
             _bn("c", "y", "bn_b")]
    inits = [*_bn_inits("bn_a", 3), *_bn_inits("bn_b", 5, seed=2), _w("w", (5, 3, 3, 3)), _w("b", (5,), 4)]
    src = _save(nodes, inits, [_f32("x", ["N", 3, 6, 6])], [_f32("y", 4)], tmp_path / "m.onnx")
    report = fold(src, tmp_path / "f.onnx", timing=False)
    info = _fold_info(report)
    assert info["bn_a"]["side"] == "consumer" and info["bn_b"]["status"] == "folded"
    assert report.extras["fold"]["site_proofs"] == {"passed": 2, "failed": 0, "not_proved": 0}
    assert _ops(tmp_path / "f.onnx") == ["Conv"]
    _check(src, tmp_path / "f.onnx", ort_run, RNG.standard_normal((2, 3, 6, 6)).astype(np.float32))

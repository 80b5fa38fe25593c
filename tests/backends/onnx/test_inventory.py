"""The BN inventory: which layers are found, their parameters, who feeds them and whether
they can be folded, for ONNX; and the two backends agreeing on the same model exported both
ways (the PyTorch inventory: tests/backends/torch/test_inventory.py)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from support.bn_modules import Plain  # noqa: E402
from torch import nn  # noqa: E402

from bncheck.backends import load_model  # noqa: E402
from bncheck.backends.onnx.source import OnnxSource  # noqa: E402
from bncheck.backends.torch.source import TorchModuleSource  # noqa: E402


@pytest.mark.parametrize("opset", [6, 7, 9, 13, 14, 15, 17, 21])
def test_onnx_opsets(onnx_bn, opset):
    model, values = onnx_bn(opset=opset, epsilon=2e-5)
    (layer,) = OnnxSource(model, path=None).bn_layers()
    assert layer.kind == "BatchNormalization" and layer.num_features == 3
    assert layer.eps == 2e-5 and layer.momentum == 0.9 and layer.momentum_convention == "onnx"
    assert layer.uses_running_stats and layer.training is False
    for field, key in (("weight", "scale"), ("bias", "B"), ("running_mean", "mean"), ("running_var", "var")):
        np.testing.assert_array_equal(getattr(layer, field), values[key].astype(np.float64))
    assert (layer.producer, layer.producer_kind, layer.foldable) == ("conv", "conv", True)


def test_onnx_training_mode_opset14(onnx_bn):
    (layer,) = OnnxSource(onnx_bn(opset=14, training_mode=1)[0], path=None).bn_layers()
    assert layer.training is True and layer.uses_running_stats is False and layer.foldable is False
    (layer,) = OnnxSource(onnx_bn(opset=14, training_mode=0)[0], path=None).bn_layers()
    assert layer.training is False and layer.uses_running_stats is True


@pytest.mark.parametrize("params, note", [("initializer", None), ("constant", "Constant node"), ("cast", "Cast"), ("expand", "Expand")])
def test_onnx_parameters_from_constant_chains(onnx_bn, params, note):
    model, values = onnx_bn(channels=5, params=params, epsilon=1e-3, momentum=0.99)
    (layer,) = OnnxSource(model, path=None).bn_layers()
    assert layer.num_features == 5
    np.testing.assert_array_equal(layer.running_mean, values["mean"].astype(np.float64))
    np.testing.assert_array_equal(layer.running_var, values["var"].astype(np.float64))
    np.testing.assert_array_equal(layer.weight, values["scale"].astype(np.float64))
    assert layer.eps == 1e-3 and layer.momentum == 0.99
    if note is None:
        assert layer.notes == []
    else:
        assert any(note in n for n in layer.notes), layer.notes


def test_onnx_bn_inside_an_if_subgraph(onnx_bn):
    model, values = onnx_bn(in_if=True)
    (layer,) = OnnxSource(model, path=None).bn_layers()
    assert layer.name.endswith("then_branch/bn")
    np.testing.assert_array_equal(layer.running_var, values["var"].astype(np.float64))
    assert layer.foldable is False and "enclosing graph" in layer.fold_reason


def test_onnx_bn_on_the_graph_input(onnx_bn):
    (layer,) = OnnxSource(onnx_bn(producer="input")[0], path=None).bn_layers()
    assert (layer.producer, layer.producer_kind, layer.foldable) == ("x", "input", False)


def test_onnx_folded_by_exporter_note(tmp_path, save_model):
    model = Plain().eval()
    path = save_model(model, tmp_path, "onnx_folded", torch.rand(1, 3, 5, 5))
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)
    source = load_model(path)
    assert source.bn_layers() == []
    assert any("folds BN into the conv" in note for note in source.notes)


@pytest.mark.parametrize(
    ("producer", "says", "not_says"),
    [("pytorch", "torch.onnx.export folds BN", None), ("tf2onnx", "converted by tf2onnx", "torch"), ("", "its exporter may have folded", "torch")],
)
def test_onnx_folded_note_names_the_models_own_exporter(tmp_path, save_model, producer, says, not_says):
    """basic-pitch's tf2onnx graph was told to audit its PyTorch checkpoint."""
    path = save_model(Plain().eval(), tmp_path, "onnx_folded", torch.rand(1, 3, 5, 5))
    model = onnx.load(str(path))
    model.producer_name = producer
    onnx.save(model, str(path))
    source = load_model(path)
    assert source.bn_layers() == []
    (note,) = [n for n in source.notes if "no BatchNormalization nodes" in n]
    assert says in note and (not_says is None or not_says not in note), note


def test_onnx_folded_by_the_default_exporter(tmp_path):
    """torch.onnx.export with every default (the dynamo exporter, constant folding on)."""
    pytest.importorskip("onnxscript")
    import warnings

    path = tmp_path / "default.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Plain().eval(), (torch.rand(1, 3, 5, 5),), str(path), verbose=False)
    source = load_model(path)
    assert source.bn_layers() == []
    assert any("do_constant_folding=True" in note for note in source.notes)


def test_onnx_without_conv_or_bn_has_no_folding_note(onnx_bn):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )
    source = OnnxSource(helper.make_model(graph), path=None)
    assert source.bn_layers() == [] and source.notes == []


# ------------------------------------------------------------- torch and ONNX agree


class Agreement(nn.Module):
    """conv->BN (foldable), a residual (not foldable), convtranspose->BN, BN after relu,
    linear->BN1d, and BN on the input."""

    def __init__(self):
        super().__init__()
        self.bn_in = nn.BatchNorm2d(2)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4, eps=1e-3)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.up = nn.ConvTranspose2d(4, 3, 2, stride=2)
        self.bn_up = nn.BatchNorm2d(3)
        self.bn_act = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 12 * 12, 6)
        self.bn_fc = nn.BatchNorm1d(6, eps=1e-4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(self.bn_in(x))))
        y = self.conv2(x)
        x = torch.relu(self.bn2(y) + y)
        x = self.bn_act(torch.relu(self.bn_up(self.up(x))))
        return self.bn_fc(self.fc(x.flatten(1)))


def _kind_independent(layer):
    kind = {"linear": "gemm"}.get(layer.producer_kind, layer.producer_kind)
    return (layer.num_features, kind, layer.foldable)


@pytest.mark.parametrize("torch_fmt", ["module", "script", "export"])
def test_torch_and_onnx_backends_agree(tmp_path, calibrate, save_model, torch_fmt):
    torch.manual_seed(0)
    model = calibrate(Agreement(), (8, 2, 6, 6), batches=3, scale=2.0, shift=0.5)
    example = torch.rand(2, 2, 6, 6)
    onnx_layers = load_model(save_model(model, tmp_path, "onnx", example)).bn_layers()
    if torch_fmt == "module":
        torch_layers = TorchModuleSource(model, path=None, format="module").bn_layers()
    else:
        torch_layers = load_model(save_model(model, tmp_path, torch_fmt, example)).bn_layers()
    assert len(onnx_layers) == len(torch_layers) == 6
    assert [_kind_independent(a) for a in torch_layers] == [_kind_independent(b) for b in onnx_layers]
    assert [layer.foldable for layer in torch_layers] == [False, True, False, True, False, True]
    for a, b in zip(torch_layers, onnx_layers, strict=True):
        assert a.eps == pytest.approx(b.eps, rel=1e-6)
        for field in ("running_mean", "running_var", "weight", "bias"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-6, atol=1e-6, err_msg=f"{a.name}.{field}")

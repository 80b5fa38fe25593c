"""The BN inventory of PyTorch models (eager, TorchScript, torch.export, state dicts): which
layers are found, their parameters, who feeds them and whether they can be folded."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import torch.nn.functional as F  # noqa: E402
from support.bn_modules import Plain, Residual  # noqa: E402
from torch import nn  # noqa: E402

from bncheck.backends import load_model  # noqa: E402
from bncheck.backends.torch.source import TorchModuleSource  # noqa: E402


class FrozenBatchNorm2d(nn.Module):
    """torchvision.ops.misc.FrozenBatchNorm2d, copied (torchvision is not a dependency)."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        num_batches_tracked_key = prefix + "num_batches_tracked"
        if num_batches_tracked_key in state_dict:
            del state_dict[num_batches_tracked_key]
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def forward(self, x):
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        bias = b - rm * scale
        return x * scale + bias


class Kinds(nn.Module):
    """Every BN flavour; input (N, 2, 6, 6)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn2d = nn.BatchNorm2d(4)
        self.inorm = nn.InstanceNorm2d(4, track_running_stats=True)  # has running stats, is not BN
        self.frozen = FrozenBatchNorm2d(4, eps=1e-3)
        self.convt = nn.ConvTranspose2d(4, 3, 2)
        self.bnt = nn.BatchNorm2d(3)
        self.sync = nn.SyncBatchNorm(3)  # constructed on CPU, never run
        self.conv3d = nn.Conv3d(3, 2, 1)
        self.bn3d = nn.BatchNorm3d(2)
        self.fc = nn.Linear(2 * 5 * 5, 5)
        self.bn1d = nn.BatchNorm1d(5)
        self.lazy = nn.LazyBatchNorm1d()

    def forward(self, x):
        x = torch.relu(self.bn2d(self.conv(x)))
        x = self.frozen(self.inorm(x))
        x = self.bnt(self.convt(x))
        x = self.bn3d(self.conv3d(x.unsqueeze(2)))
        x = self.bn1d(self.fc(x.flatten(1)))
        return self.lazy(torch.relu(x))


def _register_arch(monkeypatch, module_name: str, factory) -> str:
    """Make ``factory`` importable as ``module_name:build`` for this test; returns the --arch spec."""
    module = types.ModuleType(module_name)
    module.build = factory
    monkeypatch.setitem(sys.modules, module_name, module)
    return f"{module_name}:build"


def _summary(layers):
    return [(layer.name, layer.kind, layer.num_features, layer.producer, layer.producer_kind, layer.foldable) for layer in layers]


def test_every_bn_flavour_is_found_and_instance_norm_is_not(calibrate):
    torch.manual_seed(0)
    model = Kinds()
    with torch.no_grad():
        model.frozen.running_mean.uniform_(-1, 1)
        model.frozen.running_var.uniform_(0.5, 2)
    calibrate(model, (8, 2, 6, 6))
    layers = TorchModuleSource(model, path=None, format="module").bn_layers()
    assert _summary(layers) == [
        ("bn2d", "BatchNorm2d", 4, "conv", "conv", True),
        ("frozen", "FrozenBatchNorm2d", 4, "inorm", "other", False),
        ("bnt", "BatchNorm2d", 3, "convt", "convtranspose", True),
        ("sync", "SyncBatchNorm", 3, None, None, None),
        ("bn3d", "BatchNorm3d", 2, "conv3d", "conv", True),
        ("bn1d", "BatchNorm1d", 5, "fc", "linear", True),
        ("lazy", "BatchNorm1d", 5, "relu", "other", False),  # materialised: now a BatchNorm1d
    ]
    by_name = {layer.name: layer for layer in layers}
    assert by_name["sync"].fold_reason == "not called in forward()"
    frozen = by_name["frozen"]
    assert frozen.eps == pytest.approx(1e-3) and frozen.momentum is None and frozen.training is None
    np.testing.assert_array_equal(frozen.running_var, model.frozen.running_var.double().numpy())
    np.testing.assert_array_equal(by_name["lazy"].running_mean, model.lazy.running_mean.double().numpy())
    assert by_name["bn1d"].num_batches_tracked == 4


def test_lazy_bn_never_materialised():
    model = Kinds().eval()
    layers = {layer.name: layer for layer in TorchModuleSource(model, path=None, format="module").bn_layers()}
    lazy = layers["lazy"]
    assert lazy.kind == "LazyBatchNorm1d" and lazy.num_features == 0
    assert not lazy.has_running_stats
    assert any("never materialised" in note for note in lazy.notes)


@pytest.mark.parametrize("fmt", ["module", "script", "trace", "export", "state_dict_arch"])
def test_frozen_bn_in_every_torch_format(tmp_path, calibrate, save_model, monkeypatch, fmt):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 3, 3, bias=False)
            self.frozen = FrozenBatchNorm2d(3, eps=1e-3)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(torch.relu(self.frozen(self.conv(x))))

    torch.manual_seed(1)
    model = Net()
    with torch.no_grad():
        model.frozen.running_mean.copy_(torch.tensor([0.5, -0.2, 0.1]))
        model.frozen.running_var.copy_(torch.tensor([2.0, 0.7, 1.3]))
    calibrate(model, (4, 1, 6, 6))
    example = torch.rand(2, 1, 6, 6)
    if fmt == "module":
        layers = TorchModuleSource(model, path=None, format="module").bn_layers()
    elif fmt == "state_dict_arch":
        path = save_model(model, tmp_path, "state_dict")
        arch = _register_arch(monkeypatch, "bncheck_frozen_arch_for_test", Net)
        layers = load_model(path, arch=arch).bn_layers()
    else:
        layers = load_model(save_model(model, tmp_path, fmt, example)).bn_layers()
    assert [(layer.name, layer.producer_kind, layer.foldable) for layer in layers] == [
        ("frozen", "conv", True),
        ("bn", "other", False),
    ]
    frozen = layers[0]
    assert frozen.eps == pytest.approx(1e-3), fmt  # read from the module or its graph
    assert frozen.producer == "conv"
    np.testing.assert_allclose(frozen.running_var, [2.0, 0.7, 1.3], rtol=1e-6)
    assert frozen.momentum is None and frozen.num_batches_tracked is None


def test_frozen_bn_in_a_bare_state_dict(tmp_path, calibrate, save_model):
    model = nn.Sequential(nn.Conv2d(1, 3, 3), FrozenBatchNorm2d(3), nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    calibrate(model, (4, 1, 6, 6))
    layers = load_model(save_model(model, tmp_path, "state_dict")).bn_layers()
    assert [(layer.name, layer.kind, layer.num_batches_tracked) for layer in layers] == [
        ("1", "FrozenBatchNorm", None),
        ("3", "BatchNorm", 4),
    ]


@pytest.mark.parametrize("fmt", ["module", "script", "export"])
def test_instance_norm_with_running_stats_is_not_batch_norm(tmp_path, calibrate, save_model, fmt):
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.InstanceNorm2d(3, affine=True, track_running_stats=True),
        nn.Conv2d(3, 2, 1),
        nn.BatchNorm2d(2),
    )
    calibrate(model, (4, 1, 6, 6))
    if fmt == "module":
        source = TorchModuleSource(model, path=None, format="module")
    else:
        source = load_model(save_model(model, tmp_path, fmt, torch.rand(2, 1, 6, 6)))
    assert [layer.name for layer in source.bn_layers()] == ["3"]


def test_instance_norm_with_arch_is_not_batch_norm(tmp_path, calibrate, save_model, monkeypatch):
    def build():
        return nn.Sequential(nn.Conv2d(1, 3, 3), nn.InstanceNorm2d(3, track_running_stats=True), nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))

    model = calibrate(build(), (4, 1, 6, 6))
    arch = _register_arch(monkeypatch, "bncheck_inorm_arch_for_test", build)
    source = load_model(save_model(model, tmp_path, "state_dict"), arch=arch)
    assert [layer.name for layer in source.bn_layers()] == ["3"]


class FunctionalBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.register_buffer("mean", torch.tensor([0.1, -0.3, 0.2, 0.0]))
        self.register_buffer("var", torch.tensor([1.5, 0.5, 2.0, 0.9]))
        self.gamma = nn.Parameter(torch.tensor([1.0, 0.5, 2.0, 1.5]))
        self.beta = nn.Parameter(torch.zeros(4))

    def forward(self, x):
        return F.batch_norm(self.conv(x), self.mean, self.var, self.gamma, self.beta, False, 0.1, 1e-3)


def test_functional_batch_norm_in_a_traceable_model():
    (layer,) = TorchModuleSource(FunctionalBN().eval(), path=None, format="module").bn_layers()
    assert layer.kind == "functional batch_norm"
    assert (layer.producer, layer.producer_kind, layer.foldable) == ("conv", "conv", True)
    assert layer.eps == pytest.approx(1e-3) and layer.num_features == 4
    np.testing.assert_allclose(layer.running_var, [1.5, 0.5, 2.0, 0.9], rtol=1e-7)
    np.testing.assert_allclose(layer.weight, [1.0, 0.5, 2.0, 1.5])


def test_bn_on_the_model_input():
    model = nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 3), nn.BatchNorm1d(3)).eval()
    layers = TorchModuleSource(model, path=None, format="module").bn_layers()
    # no producer, and the Linear after it takes it only if its input is 2-D, which only an
    # example input shows (fold runs one): unknown, not "cannot be folded" (issue 14)
    assert [(layer.producer_kind, layer.foldable) for layer in layers] == [("input", None), ("linear", True)]
    assert "model input" in layers[0].fold_reason and "only if its input is 2-D" in layers[0].fold_reason


class CalledTwice(nn.Module):
    """One conv module used for two BN layers."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(3)
        self.bn_b = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn_a(self.conv(x)) + self.bn_b(self.conv(torch.relu(x)))


class SharedWeight(nn.Module):
    """Two conv modules holding one weight Parameter."""

    PRODUCERS = {"bn_a": "conv_a", "bn_b": "conv_b"}

    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 3, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 3, 3, padding=1)
        self.conv_b.weight = self.conv_a.weight
        self.bn_a = nn.BatchNorm2d(3)
        self.bn_b = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn_a(self.conv_a(x)) + self.bn_b(self.conv_b(x))


FOLD_CASES = {
    # model -> (expected foldable per BN, phrases one of which every blocked reason contains)
    "plain": (Plain, [True], ()),
    "residual": (Residual, [False], ("also used",)),
    "called_twice": (CalledTwice, [False, False], ("called 2 times", "shared", "more than one op")),
    "shared_weight": (SharedWeight, [False, False], ("shared", "more than one op")),
}


def _inventory(model, fmt, tmp_path, save_model):
    example = torch.rand(2, 3, 5, 5)
    if fmt == "module":
        return TorchModuleSource(model, path=None, format="module").bn_layers()
    return load_model(save_model(model, tmp_path, fmt, example)).bn_layers()


@pytest.mark.parametrize("fmt", ["module", "script", "export", "onnx"])
@pytest.mark.parametrize("case", list(FOLD_CASES))
def test_foldable_flags_and_reasons(tmp_path, calibrate, save_model, fmt, case):
    cls, expected, phrases = FOLD_CASES[case]
    torch.manual_seed(0)
    model = calibrate(cls(), (4, 3, 5, 5))
    layers = _inventory(model, fmt, tmp_path, save_model)
    assert [layer.foldable for layer in layers] == expected, [(layer.name, layer.fold_reason) for layer in layers]
    for layer in layers:
        assert layer.producer_kind == "conv"
        if fmt != "onnx":
            assert layer.producer == getattr(cls, "PRODUCERS", {}).get(layer.name, "conv")
        if phrases:
            assert any(p in layer.fold_reason for p in phrases), layer.fold_reason
        else:
            assert layer.fold_reason.startswith("into ")


def test_called_twice_names_the_reason():
    layers = TorchModuleSource(CalledTwice().eval(), path=None, format="module").bn_layers()
    assert all("called 2 times" in layer.fold_reason for layer in layers)


def test_shared_weight_names_the_other_holder():
    layers = TorchModuleSource(SharedWeight().eval(), path=None, format="module").bn_layers()
    assert "conv_b.weight" in layers[0].fold_reason and "conv_a.weight" in layers[1].fold_reason


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.stem(x)
        if x.sum() > 0:
            x = x * 2
        return self.bn(self.conv(x))


def test_untraceable_model_takes_producers_from_jit_trace_dataflow():
    source = TorchModuleSource(Untraceable().eval(), path=None, format="module")
    layers = {layer.name: layer for layer in source.bn_layers()}
    assert (layers["stem.1"].producer, layers["stem.1"].producer_kind, layers["stem.1"].foldable) == ("stem.0", "conv", True)
    assert (layers["stem.3"].producer, layers["stem.3"].producer_kind, layers["stem.3"].foldable) == ("stem.2", "other", False)
    # the BN outside any nn.Sequential: found on the torch.jit.trace graph, as scripting finds it
    assert (layers["bn"].producer, layers["bn"].producer_kind, layers["bn"].foldable) == ("conv", "conv", True)
    assert [n for n in source.notes if "torch.fx could not trace" in n and "torch.jit.trace" in n]


def test_untraceable_model_with_no_inferable_input_uses_sequential_patterns_only():
    class NoInput(Untraceable):
        def forward(self, x, y):  # two inputs: no example can be inferred, so no jit trace
            return super().forward(x + y)

    source = TorchModuleSource(NoInput().eval(), path=None, format="module")
    layers = {layer.name: layer for layer in source.bn_layers()}
    assert layers["stem.1"].foldable is True and layers["bn"].producer is None
    assert "not traceable" in layers["bn"].fold_reason
    assert any("exact nn.Sequential patterns only" in note for note in source.notes)


def test_untraceable_model_scripted_has_every_producer(tmp_path, save_model):
    layers = load_model(save_model(Untraceable().eval(), tmp_path, "script")).bn_layers()
    assert [(layer.name, layer.producer, layer.foldable) for layer in layers] == [
        ("stem.1", "stem.0", True),
        ("stem.3", "stem.2", False),
        ("bn", "conv", True),
    ]

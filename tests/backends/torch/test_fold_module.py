"""Folding PyTorch modules (fold_module and the fold API on nn.Modules and programs): checked against the unfolded model and, where it applies,
against torch.nn.utils.fusion."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
from support.bn_modules import Residual  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval  # noqa: E402

from bncheck.backends.torch.channel_affine import ChannelAffine  # noqa: E402
from bncheck.commands.fold import fold  # noqa: E402


def _fold(model, shape, **kw):
    """Fold with the API (nothing written) and return (report, folded module)."""
    from bncheck.backends.torch.fold_module import fold_module
    from bncheck.backends.torch.source import TorchModuleSource

    report = fold(model, input_shape=shape, timing=False, **kw)
    source = TorchModuleSource(model, path=None, format="module")
    example = (torch.randn(*shape),)
    folded = fold_module(model, source.bn_layers(), affine=kw.get("affine", False), example=example)
    assert {k: v.status for k, v in folded.outcomes.items()} == {k: e["fold"]["status"] for k, e in report.layer_extras.items()}
    return report, folded.model


def _same(a, b, x, rtol=1e-5):
    with torch.no_grad():
        ya, yb = a(x), b(x)
    scale = ya.abs().max().item()
    err = (ya - yb).abs().max().item()
    assert err <= rtol * max(scale, 1e-12), (err, scale)


def _status(report):
    return {k: e["fold"]["status"] for k, e in report.layer_extras.items()}


def _no_bn(module) -> bool:
    from torch.nn.modules.batchnorm import _BatchNorm

    return not any(isinstance(m, _BatchNorm) for m in module.modules())


def test_grouped_and_depthwise_conv_match_torch_fusion(randomize_bn):
    model = randomize_bn(
        nn.Sequential(
            nn.Conv2d(4, 8, 3, groups=2, padding=1),
            nn.BatchNorm2d(8),
            nn.Conv2d(8, 8, 3, groups=8, padding=1, dilation=1, bias=False),
            nn.BatchNorm2d(8),
        )
    )
    report, folded = _fold(model, (2, 4, 7, 7))
    assert _status(report) == {"1": "folded", "3": "folded"}
    assert report.extras["verification"]["passed"]
    assert _no_bn(folded)
    reference = [fuse_conv_bn_eval(model[0], model[1]), fuse_conv_bn_eval(model[2], model[3])]
    mine = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    for ref, got in zip(reference, mine, strict=True):
        torch.testing.assert_close(got.weight, ref.weight, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got.bias, ref.bias, rtol=1e-6, atol=1e-6)
    _same(model, folded, torch.randn(3, 4, 7, 7))


def test_convtranspose_with_groups(randomize_bn):
    model = randomize_bn(nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, bias=False), nn.BatchNorm2d(6)), seed=5)
    report, folded = _fold(model, (1, 4, 5, 5))
    assert _status(report) == {"1": "folded"}
    _same(model, folded, torch.randn(2, 4, 5, 5))
    # torch.nn.utils.fusion scales weight axis 1 by all C_out channels: impossible for groups > 1
    # (the weight is (C_in, C_out/groups, k, k)).
    with pytest.raises(RuntimeError):
        fuse_conv_bn_eval(copy.deepcopy(model[0]), model[1], transpose=True)


def test_conv_with_residual_is_kept(randomize_bn):
    model = randomize_bn(Residual())
    report, folded = _fold(model, (1, 3, 5, 5))
    assert _status(report) == {"bn": "kept"}
    assert "also used" in report.layer_extras["bn"]["fold"]["reason"]
    _same(model, folded, torch.randn(2, 3, 5, 5))


def test_convs_sharing_one_weight_are_kept(randomize_bn):
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 3, padding=1, bias=False)
            self.b = nn.Conv2d(3, 3, 3, padding=1, bias=False)
            self.b.weight = self.a.weight
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.a(x)) + self.b(x)

    model = randomize_bn(Shared())
    report, folded = _fold(model, (1, 3, 5, 5))
    assert _status(report) == {"bn": "kept"}
    assert "shared" in report.layer_extras["bn"]["fold"]["reason"]
    _same(model, folded, torch.randn(2, 3, 5, 5))


def test_conv_module_called_twice_only_one_call_followed_by_bn(randomize_bn):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.conv(x * 2)

    model = randomize_bn(Twice())
    x = torch.randn(2, 3, 5, 5)
    # torch.fx's fuse folds the BN into the shared conv and corrupts the second call:
    from torch.fx.experimental.optimization import fuse

    with torch.no_grad():
        assert (fuse(copy.deepcopy(model))(x) - model(x)).abs().max() > 1e-3
    report, folded = _fold(model, (1, 3, 5, 5))
    assert _status(report) == {"bn": "kept"}
    assert "called 2 times" in report.layer_extras["bn"]["fold"]["reason"]
    assert report.extras["verification"]["passed"]
    _same(model, folded, x)


def test_zero_variance_channel_and_eps(randomize_bn):
    model = randomize_bn(nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4, eps=1e-3)), zero_var_channel=True)
    assert model[1].running_var[0] == 0
    report, folded = _fold(model, (1, 2, 5, 5))
    assert _status(report) == {"1": "folded"}
    ref = fuse_conv_bn_eval(model[0], model[1])
    torch.testing.assert_close(folded.get_submodule("0").weight, ref.weight, rtol=1e-6, atol=1e-6)
    _same(model, folded, torch.randn(3, 2, 5, 5))


def test_affine_false_bn(randomize_bn):
    model = randomize_bn(nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4, affine=False)))
    report, folded = _fold(model, (1, 2, 5, 5))
    assert _status(report) == {"1": "folded"}
    ref = fuse_conv_bn_eval(model[0], model[1])
    torch.testing.assert_close(folded.get_submodule("0").bias, ref.bias, rtol=1e-6, atol=1e-6)
    _same(model, folded, torch.randn(2, 2, 5, 5))


def test_bn1d_after_linear_on_nc_matches_torch_fusion(randomize_bn):
    model = randomize_bn(nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4, eps=1e-3), nn.ReLU(), nn.Linear(4, 2)))
    report, folded = _fold(model, (5, 6))
    assert _status(report) == {"1": "folded"}
    ref = fuse_linear_bn_eval(model[0], model[1])
    torch.testing.assert_close(folded.get_submodule("0").weight, ref.weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(folded.get_submodule("0").bias, ref.bias, rtol=1e-6, atol=1e-6)
    _same(model, folded, torch.randn(8, 6))


def test_bn1d_after_linear_on_ncl_is_kept(randomize_bn):
    model = randomize_bn(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))  # x: (N, C=4, L=4)
    report, folded = _fold(model, (2, 4, 4))
    assert _status(report) == {"1": "kept"}
    assert "3-D" in report.layer_extras["1"]["fold"]["reason"]
    _same(model, folded, torch.randn(3, 4, 4))
    report = fold(model, input_shape="2,4,4", affine=True, timing=False)
    assert _status(report) == {"1": "affine"} and report.extras["verification"]["passed"]


class BatchNormAct2d(nn.BatchNorm2d):
    """BN followed by an activation in one module, as timm's BatchNormAct2d."""

    def __init__(self, num_features):
        super().__init__(num_features)
        self.act = nn.ReLU()

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return self.act(x)


def test_bn_subclass_with_activation_keeps_the_activation(randomize_bn):
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4)))
    report, folded = _fold(model, (1, 3, 6, 6))
    assert _status(report) == {"1": "folded"}
    assert "batch_norm" not in folded.code and "act" in folded.code
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        out, pre = folded(x), folded.get_submodule("0")(x)
    assert (pre < 0).any() and (out >= 0).all()  # the ReLU is still applied after the conv
    _same(model, folded, x)


class FrozenBatchNorm2d(nn.Module):
    """Fixed statistics and affine parameters (torchvision's FrozenBatchNorm2d)."""

    def __init__(self, n, eps=1e-5):
        super().__init__()
        self.eps = eps
        for name, value in (("weight", torch.ones(n)), ("bias", torch.zeros(n)), ("running_mean", torch.zeros(n)), ("running_var", torch.ones(n))):
            self.register_buffer(name, value)

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


def test_frozen_bn_is_folded(randomize_bn):
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4), nn.ReLU()))
    report, folded = _fold(model, (1, 3, 6, 6))
    assert _status(report) == {"1": "folded"}
    _same(model, folded, torch.randn(2, 3, 6, 6))


def test_bn_after_activation_kept_or_affine(randomize_bn):
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)))
    report, folded = _fold(model, (1, 3, 6, 6))
    assert _status(report) == {"2": "kept"}
    report, folded = _fold(model, (1, 3, 6, 6), affine=True)
    assert _status(report) == {"2": "affine"}
    assert isinstance(folded.get_submodule("2"), ChannelAffine)
    _same(model, folded, torch.randn(2, 3, 6, 6))


def test_no_foldable_bn(randomize_bn):
    # (a BN right before a Linear folds into it: see test_fold_before; a ReLU in between stops that)
    model = randomize_bn(nn.Sequential(nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2)))
    report = fold(model, input_shape="4,5", timing=False)
    assert report.exit_code == 0
    assert report.extras["fold"]["layers_folded"] == 0
    assert _status(report) == {"0": "kept"}
    assert any("no BN layer can be folded" in n for n in report.notes)


def test_untraceable_model_falls_back_to_sequential_patterns(randomize_bn):
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.body(x)
            if y.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
                y = y * 2
            return self.bn(y)

    model = randomize_bn(Untraceable())
    report, folded = _fold(model, (1, 3, 6, 6))
    assert _status(report) == {"body.1": "folded", "bn": "kept"}
    assert isinstance(folded.body[1], nn.Identity)
    assert sum("could not trace" in n for n in report.notes + report.model.notes) == 1
    _same(model, folded, torch.randn(2, 3, 6, 6))


def test_users_module_is_not_modified(randomize_bn):
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = fold(model, input_shape="2,3,5,5", timing=False)
    assert report.extras["fold"]["layers_folded"] == 1
    assert model.training and model[1].training and model[0].bias is None
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_functional_conv_and_batch_norm(randomize_bn):
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))
            self.register_buffer("mean", torch.randn(4))
            self.register_buffer("var", torch.rand(4) + 0.5)
            self.gamma = nn.Parameter(torch.rand(4) + 0.5)
            self.beta = nn.Parameter(torch.randn(4))

        def forward(self, x):
            y = F.conv2d(x, self.weight, padding=1)
            return F.batch_norm(y, self.mean, self.var, self.gamma, self.beta, False, 0.1, 1e-5)

    model = Functional().eval()
    report = fold(model, input_shape="1,3,5,5", timing=False)
    (outcome,) = [e["fold"] for e in report.layer_extras.values()]
    assert outcome["status"] == "folded" and report.extras["verification"]["passed"]
    assert report.extras["verification"]["max_rel_err"] < 1e-5


def test_speedup_is_measured():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()).eval()
    report = fold(model, input_shape="4,3,16,16")
    timing = report.extras["fold"]["timing"]
    assert timing["runtime"] == "torch eager" and timing["rounds"] >= 3
    assert timing["original_ms"] > 0 and timing["folded_ms"] > 0
    assert report.extras["fold"]["speedup"] == pytest.approx(timing["original_ms"] / timing["folded_ms"], rel=1e-2)


def test_exported_convtranspose1d_folds_like_the_inventory_says(randomize_bn):
    """torch.export writes ConvTranspose1d as aten.conv_transpose1d.default (2d/3d: .input);
    the inventory called it foldable, and fold must fold it too."""
    model = randomize_bn(nn.Sequential(nn.ConvTranspose1d(3, 4, 3), nn.BatchNorm1d(4)), seed=3)
    x = torch.randn(2, 3, 5)
    program = torch.export.export(model, (x,))
    report = fold(program, timing=False)
    assert _status(report) == {"1": "folded"}
    assert report.layer_extras["1"]["fold"]["into"] == "0"

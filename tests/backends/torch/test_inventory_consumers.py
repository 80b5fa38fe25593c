"""A BN its producer cannot take but the conv/linear after it can (a BN on the model input,
after an activation): the torch inventory says what the fold does and what the ONNX inventory
says of the same model (issue 14: BN011 "normalises the model input directly" on a BN that
fold folds)."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from bncheck.backends.torch.fold_before import PADDED_REASON  # noqa: E402
from bncheck.commands.audit import audit  # noqa: E402
from bncheck.commands.fold import fold  # noqa: E402


class _InputConvs(nn.Module):
    """bn (the model input) -> 1x1 conv a and unpadded grouped conv b; bnp (after a ReLU) ->
    zero-padded conv p (its shift is not zero: kept); bnr (after a ReLU) read by a ReLU too (kept)."""

    def __init__(self):
        super().__init__()
        self.bn, self.a, self.b = nn.BatchNorm2d(4), nn.Conv2d(4, 6, 1), nn.Conv2d(4, 2, 3, groups=2, bias=False)
        self.bnp, self.p = nn.BatchNorm2d(6), nn.Conv2d(6, 3, 3, padding=1)
        self.bnr, self.r = nn.BatchNorm2d(2), nn.Conv2d(2, 2, 1)

    def forward(self, x):
        y = self.bn(x)
        z = self.bnr(torch.relu(self.b(y)))
        return self.p(self.bnp(torch.relu(self.a(y)))), self.r(z) + torch.relu(z)


def _mlp():
    return nn.Sequential(nn.BatchNorm1d(12), nn.Linear(12, 16), nn.ReLU(), nn.BatchNorm1d(16), nn.Linear(16, 3))


def _export_onnx(model, shape, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(*shape),), str(path), dynamo=False, opset_version=17,
                          do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL)
    return path


def _by_module(report) -> dict[str, tuple[bool | None, str]]:
    """layer -> (foldable, fold_reason), ONNX node names (``/bnp/BatchNormalization``) as module paths."""
    return {layer.name.strip("/").split("/")[0]: (layer.foldable, layer.fold_reason) for layer in report.layers}


def _bn011(report) -> set[str]:
    return {f.layer.strip("/").split("/")[0] for f in report.findings if f.rule == "BN011"}


def test_a_bn_on_the_input_before_convs_is_foldable_in_both_backends_and_fold_folds_it(tmp_path, randomize_bn):
    model = randomize_bn(_InputConvs())
    torch_report = audit(model)
    onnx_report = audit(_export_onnx(model, (1, 4, 8, 8), tmp_path / "m.onnx"))
    t, o = _by_module(torch_report), _by_module(onnx_report)
    assert t["bn"] == (True, "into the following conv b, conv a (BN before it)")  # in call order
    assert o["bn"][0] is True and o["bn"][1].startswith("into the following Conv")
    assert "model input directly" not in t["bn"][1]
    for name in ("bnp", "bnr"):  # kept by both, for the same reason
        assert t[name][0] is False and o[name][0] is False, (t[name], o[name])
    assert PADDED_REASON in t["bnp"][1] and PADDED_REASON in o["bnp"][1]
    assert "not into the modules after it either" in t["bnr"][1] and "not into the ops after it either" in o["bnr"][1]
    assert _bn011(torch_report) == _bn011(onnx_report) == {"bnp", "bnr"}
    report = fold(model, tmp_path / "f.safetensors", input_shape=(2, 4, 8, 8), timing=False)
    status = {name: info["fold"]["status"] for name, info in report.layer_extras.items()}
    assert status == {"bn": "folded", "bnp": "kept", "bnr": "kept"}
    assert {layer.name: layer.foldable for layer in report.layers} == {"bn": True, "bnp": False, "bnr": False}


def test_a_bn_on_the_input_before_a_linear_is_not_said_unfoldable(tmp_path, randomize_bn):
    """Without shapes the torch inventory cannot know the BatchNorm1d input is 2-D (fold checks
    it on an example input): unknown, not BN011; an exported program's metadata knows it."""
    model = randomize_bn(_mlp())
    layer = {x.name: x for x in audit(model).layers}["0"]
    assert layer.foldable is None and "only if its input is 2-D" in layer.fold_reason
    assert not [f for f in audit(model).findings if f.rule == "BN011"]
    torch.export.save(torch.export.export(model.eval(), (torch.randn(4, 12),)), str(tmp_path / "m.pt2"))
    exported = {x.name: x for x in audit(tmp_path / "m.pt2").layers}
    assert [(x.foldable, x.fold_reason) for x in exported.values()][0] == (True, "into the following linear 1 (BN before it)")
    onnx_layers = _by_module(audit(_export_onnx(model, (4, 12), tmp_path / "m.onnx")))
    assert all(foldable is True for foldable, _ in onnx_layers.values()), onnx_layers
    report = fold(model, tmp_path / "f.safetensors", input_shape=(4, 12), timing=False)
    assert {k: e["fold"]["status"] for k, e in report.layer_extras.items()} == {"0": "folded", "3": "folded"}


def test_a_bn_on_a_3d_input_before_a_linear_is_kept_in_the_inventory_too(randomize_bn):
    """A BatchNorm2d before a Linear: its input is 4-D whatever the data, so BN011 says why."""

    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn, self.fc = nn.BatchNorm2d(3), nn.Linear(5, 2)

        def forward(self, x):
            return self.fc(self.bn(x))

    layer = audit(randomize_bn(Head())).layers[0]
    assert layer.foldable is False and "its input is 4-D" in layer.fold_reason

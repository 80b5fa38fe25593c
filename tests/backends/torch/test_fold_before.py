"""BN *before* nn.Conv / nn.Linear modules folded into them (torch): every folded model checked
against the original module, every kept BN with its reason, every output kind."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from bncheck.backends.torch.fold_before import PADDED_REASON  # noqa: E402
from bncheck.backends.torch.fold_module import fold_module  # noqa: E402
from bncheck.backends.torch.source import TorchModuleSource  # noqa: E402
from bncheck.commands.fold import fold  # noqa: E402


def _folded(model, shape):
    source = TorchModuleSource(model, path=None, format="module")
    return fold_module(model, source.bn_layers(), example=(torch.randn(*shape),))


def _same(a, b, x, rtol=1e-5):
    with torch.no_grad():
        ya, yb = a(x), b(x)
    ya, yb = (ya, yb) if isinstance(ya, tuple) else ((ya,), (yb,))
    for p, q in zip(ya, yb, strict=True):
        err, scale = (p - q).abs().max().item(), p.abs().max().item()
        assert err <= rtol * max(scale, 1e-12), (err, scale)


def _info(report):
    return {k: e["fold"] for k, e in report.layer_extras.items()}


def _mlp():
    return nn.Sequential(nn.BatchNorm1d(12), nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.BatchNorm1d(16), nn.Linear(16, 3))


def test_batchnorm1d_mlp_folds_every_bn(randomize_bn):
    model = randomize_bn(_mlp())
    folded = _folded(model, (4, 12))
    assert {k: o.status for k, o in folded.outcomes.items()} == {"0": "folded", "2": "folded", "4": "folded"}
    assert folded.outcomes["0"].side == "consumer" and folded.outcomes["0"].into == "linear 1"
    assert folded.outcomes["2"].side == "producer"
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.model.modules())
    _same(model, folded.model, torch.randn(7, 12))
    assert all(check.prove(1e-5, 1e-5).passed for check in folded.site_checks.values())


@pytest.mark.parametrize("ext", ["pt2", "ts", "safetensors", "onnx"])
def test_every_output_kind_folds_the_bn_before_a_linear(tmp_path, randomize_bn, ext):
    model = randomize_bn(_mlp())
    report = fold(model, tmp_path / f"m.{ext}", input_shape=(4, 12), timing=False)
    assert report.exit_code == 0
    info = _info(report)
    assert {k: v["status"] for k, v in info.items()} == {"0": "folded", "2": "folded", "4": "folded"}
    assert info["0"]["side"] == "consumer" and info["0"]["site_proof"]["passed"] is True
    assert report.extras["fold"]["site_proofs"]["failed"] == 0


class _Convs(nn.Module):
    """bn -> (1x1 conv, grouped 3x3 conv pad 0); bnp -> 3x3 conv pad 1 (kept); bnr -> reflect-padded conv."""

    def __init__(self):
        super().__init__()
        self.bn, self.a, self.b = nn.BatchNorm2d(4), nn.Conv2d(4, 6, 1), nn.Conv2d(4, 2, 3, groups=2, bias=False)
        self.bnp, self.p = nn.BatchNorm2d(6), nn.Conv2d(6, 3, 3, padding=1)
        self.bnr, self.r = nn.BatchNorm2d(2), nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")

    def forward(self, x):
        y = self.bn(x)
        return self.p(self.bnp(torch.relu(self.a(y)))), self.r(self.bnr(torch.tanh(self.b(y))))


def test_bn_before_convs_grouped_shared_padded_and_reflect(randomize_bn):
    model = randomize_bn(_Convs())
    folded = _folded(model, (2, 4, 8, 8))
    out = folded.outcomes
    assert out["bn"].status == "folded" and out["bn"].into == "conv a, conv b"
    assert out["bnr"].status == "folded" and out["bnr"].into == "conv r"  # reflect padding is exact
    assert out["bnp"].status == "kept" and PADDED_REASON in out["bnp"].reason
    _same(model, folded.model, torch.randn(3, 4, 8, 8))
    proofs = {k: c.prove(1e-5, 1e-5) for k, c in folded.site_checks.items()}
    assert set(proofs) == {"bn", "bnr"} and all(p.passed for p in proofs.values())


def test_bn_read_by_a_relu_too_or_returned_is_kept(randomize_bn):
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn, self.c = nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1)

        def forward(self, x):
            y = self.bn(x)
            return self.c(y), torch.relu(y)

    class Returned(Both):
        def forward(self, x):
            y = self.bn(x)
            return self.c(y), y

    for cls, why in ((Both, "not only conv/linear modules"), (Returned, "not only conv/linear modules")):
        model = randomize_bn(cls())
        folded = _folded(model, (1, 3, 5, 5))
        assert folded.outcomes["bn"].status == "kept" and why in folded.outcomes["bn"].reason
        _same(model, folded.model, torch.randn(2, 3, 5, 5))


def test_bn_on_3d_input_before_a_linear_is_kept(randomize_bn):
    """(N, C, L) -> Linear multiplies L, not the BN channels."""
    model = randomize_bn(nn.Sequential(nn.BatchNorm1d(3), nn.Linear(5, 2)))
    folded = _folded(model, (2, 3, 5))
    assert folded.outcomes["0"].status == "kept" and "3-D" in folded.outcomes["0"].reason


def test_tampered_consumer_fold_fails_its_proof(randomize_bn):
    model = randomize_bn(nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1)))
    folded = _folded(model, (1, 3, 4, 4))
    check = folded.site_checks["0"]
    assert check.prove(1e-5, 1e-5).passed is True
    with torch.no_grad():
        check.runs[0].folded.bias += 0.05
    proof = check.prove(1e-5, 1e-5)
    assert proof.passed is False and proof.max_abs_err > 1e-2


def test_untraceable_model_folds_a_bn_into_the_next_module_of_its_sequential(randomize_bn):
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Sequential(nn.BatchNorm1d(6), nn.Linear(6, 4))
            self.body = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 6, 1), nn.ReLU(), nn.BatchNorm2d(6),
                                      nn.Conv2d(6, 2, 3, padding=1))

        def forward(self, x):
            if x.sum() > 1e9:  # data-dependent Python: torch.fx cannot trace it
                x = x * 2
            return self.head(self.body(x).mean(dim=(2, 3)).repeat(1, 3))

    model = randomize_bn(Untraceable())
    folded = _folded(model, (2, 3, 6, 6))
    assert folded.extras["mode"] == "module"
    out = folded.outcomes
    assert out["head.0"].status == "folded" and out["head.0"].into == "linear head.1"
    assert out["body.0"].status == "folded" and out["body.0"].side == "consumer"
    assert out["body.3"].status == "kept" and PADDED_REASON in out["body.3"].reason
    _same(model, folded.model, torch.randn(3, 3, 6, 6))
    assert all(c.prove(1e-5, 1e-5).passed for c in folded.site_checks.values())


def test_export_program_input_folds_a_bn_into_the_aten_convs_after_it(tmp_path, randomize_bn):
    """torch.export graphs call aten conv/linear on stored tensors (functional consumers)."""
    model = randomize_bn(_Convs())
    x = torch.randn(2, 4, 8, 8)
    torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "m.pt2"))
    report = fold(tmp_path / "m.pt2", tmp_path / "f.pt2", timing=False)
    info = _info(report)
    assert info["bn"]["status"] == "folded" and info["bn"]["side"] == "consumer", info["bn"]
    assert info["bn"]["site_proof"]["passed"] is True
    assert info["bnp"]["status"] == "kept" and PADDED_REASON in info["bnp"]["reason"]
    folded = torch.export.load(str(tmp_path / "f.pt2")).module()
    _same(model, folded, torch.randn(2, 4, 8, 8))


def test_bn_module_called_twice_is_kept(randomize_bn):
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn, self.a, self.b = nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1), nn.Conv2d(3, 2, 1)

        def forward(self, x):
            return self.a(self.bn(x)) + self.b(self.bn(x * 2))

    model = randomize_bn(Twice())
    folded = _folded(model, (1, 3, 4, 4))
    assert folded.outcomes["bn"].status == "kept" and "called more than once" in folded.outcomes["bn"].reason
    _same(model, folded.model, torch.randn(2, 3, 4, 4))

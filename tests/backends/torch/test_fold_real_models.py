"""Real trained torch models folded with no flags, against torch's own fusion utilities
(``torch.fx.experimental.optimization.fuse`` and ``torch.ao.quantization.fuse_modules``) on the
same model and input, all measured against the original in float64."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from torch.fx.experimental.optimization import fuse as fx_fuse  # noqa: E402

from bncheck.commands.fold import fold, load_folded_state_dict  # noqa: E402
from tests.support.real_models import CREPE_TINY, DEEPSORT_MOBILENETV2, model_file  # noqa: E402

ARCH = Path(__file__).resolve().parents[2] / "support" / "real_arch" / "mobilenetv2.py"


def _build():
    spec = importlib.util.spec_from_file_location("bncheck_test_mobilenetv2", ARCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build()


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _conv_bn_pairs(model) -> list[list[str]]:
    modules = list(model.named_modules())
    return [[name, nxt] for (name, m), (nxt, n) in zip(modules, modules[1:], strict=False)
            if isinstance(m, torch.nn.Conv2d) and isinstance(n, torch.nn.BatchNorm2d)]


def test_deepsort_mobilenetv2_folds_every_bn_like_torch_fusion(tmp_path):
    path = model_file(DEEPSORT_MOBILENETV2)
    arch = f"{ARCH}:build"
    report = fold(path, tmp_path / "m.safetensors", arch=arch, timing=False)
    figures = report.extras["fold"]
    assert figures["layers_folded"] == 52 and figures["layers_kept"] == 0
    assert figures["site_proofs"] == {"passed": 52, "failed": 0, "not_proved": 0}
    assert report.extras["verification"]["inputs_used"]["origin"] == "inferred"

    original = _build()
    original.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    original.eval()
    ours = load_folded_state_dict(_build(), tmp_path / "m.safetensors").eval()
    fx_fused = fx_fuse(copy.deepcopy(original))
    ao_fused = torch.ao.quantization.fuse_modules(copy.deepcopy(original), _conv_bn_pairs(original))
    x = torch.randn(2, 3, 128, 64)
    with torch.no_grad():
        ref = copy.deepcopy(original).double()(x.double())
        errors = {name: _rel(m(x).double(), ref) for name, m in
                  (("bncheck", ours), ("fx.fuse", fx_fused), ("fuse_modules", ao_fused), ("unfolded", original))}
    print(errors)
    assert errors["bncheck"] < 1e-5, errors
    assert errors["bncheck"] <= 3 * max(errors["fx.fuse"], errors["fuse_modules"], errors["unfolded"]), errors


def test_crepe_tiny_nothing_folds_here_or_in_torch_fusion(tmp_path):
    """A ReLU sits between every conv and its BN: bncheck folds none and says why ("fed by
    relu"), and with --affine replaces each BN by its exact multiply-add; torch.fx's fuse cannot
    trace the model, and fuse_modules, given the conv/BN names, fuses across the ReLU wrongly."""
    crepe = Path(__file__).resolve().parents[2] / "support" / "real_arch" / "crepe.py"
    spec = importlib.util.spec_from_file_location("bncheck_test_crepe", crepe)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = model_file(CREPE_TINY)
    original = module.tiny()
    original.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    original.eval()
    with pytest.raises(torch.fx.proxy.TraceError):  # the `if embed:` in forward defeats torch.fx
        fx_fuse(copy.deepcopy(original))
    # fuse_modules trusts the names it is given and fuses across the ReLU: a wrong model
    pairs = [[f"conv{i}", f"conv{i}_BN"] for i in range(1, 7)]
    wrong = torch.ao.quantization.fuse_modules(copy.deepcopy(original), pairs)
    x = torch.randn(2, 1024)
    with torch.no_grad():
        assert _rel(wrong(x), original(x)) > 1e-2
    report = fold(path, tmp_path / "c.pt2", arch=f"{crepe}:tiny", affine=True, timing=False)
    figures = report.extras["fold"]
    assert figures["layers_affine"] == 6 and figures["layers_folded"] == 0
    assert report.extras["verification"]["passed"] and report.extras["verification"]["max_rel_err"] < 1e-5
    assert all("fed by relu" in extra["fold"]["reason"] for extra in report.layer_extras.values())

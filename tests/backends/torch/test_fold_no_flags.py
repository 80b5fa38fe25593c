"""torch models folded with no --input-shape: inferred inputs, fx with concrete_args for
defaulted arguments, torch.jit.trace dataflow when fx fails, true reasons, one trace note."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tests.support.real_models import CREPE_TINY, model_file  # noqa: E402

ARCH = Path(__file__).resolve().parents[2] / "support" / "real_arch"
CONTROL_FLOW = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.b = nn.Conv2d(1, 4, (3, 1)), nn.BatchNorm2d(4)
        self.b3 = nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x, embed=False):
        if x.dim() == 2:  # data-dependent control flow: torch.fx cannot trace this
            x = x[:, None, :, None]
        x = self.b3(torch.relu(self.b(self.c(x))))
        return x if embed else self.b2(self.c2(x))
'''


def _report(result) -> dict:
    return json.loads(result.stdout)


def test_untraceable_model_folds_by_jit_trace_dataflow(cli, tmp_path, randomize_bn):
    (tmp_path / "net.py").write_text(CONTROL_FLOW)
    sys.path.insert(0, str(tmp_path))
    try:
        import net  # noqa: PLC0415 - the architecture file written above
    finally:
        sys.path.remove(str(tmp_path))
    torch.save(randomize_bn(net.Net()).state_dict(), tmp_path / "net.pt")
    result = cli("fold", tmp_path / "net.pt", "--arch", f"{tmp_path / 'net.py'}:Net", "--out", tmp_path / "f.safetensors",
                 "-f", "json", "--no-timing")
    assert result.exit_code == 0, result.stderr
    report = _report(result)
    folds = {layer["name"]: layer["fold"] for layer in report["layers"]}
    assert folds["b"]["status"] == folds["b2"]["status"] == "folded"
    assert folds["b3"] == {"status": "kept", "into": None, "reason": "fed by relu, not by a conv/linear"}
    assert all(folds[n]["site_proof"]["passed"] for n in ("b", "b2"))
    notes = report["notes"] + report["model"].get("notes", [])
    assert sum("could not trace" in n for n in notes) == 1, notes
    assert report["verification"]["passed"] and report["verification"]["inputs_used"]["origin"] == "inferred"


def test_crepe_tiny_without_flags_says_fed_by_relu(cli, tmp_path):
    path = model_file(CREPE_TINY)
    result = cli("fold", path, "--arch", f"{ARCH / 'crepe.py'}:tiny", "--out", tmp_path / "c.pt2", "-f", "json", "--no-timing")
    assert result.exit_code == 0, result.stderr
    report = _report(result)
    # the producers come from tracing the inferred (2, 1024) input; every BN is kept, and OUT,
    # the model as it is converted to torch.export, is still written and verified on that input
    used = report["verification"]["inputs_used"]
    assert used["origin"] == "inferred" and report["verification"]["passed"] and (tmp_path / "c.pt2").exists()
    reasons = {layer["fold"]["reason"] for layer in report["layers"]}
    assert reasons == {"fed by relu, not by a conv/linear"}
    assert not any("could not trace" in n for n in report["notes"] + report["model"].get("notes", []))


TWO_INPUTS = '''
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.b = nn.Conv2d(3, 4, 3, padding=1, groups=1), nn.BatchNorm2d(4)
        self.t, self.bt = nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2), nn.BatchNorm2d(6)

    def forward(self, x, y):  # two inputs: no example input can be inferred
        return self.bt(self.t(self.b(self.c(x + y))))
'''


def test_no_inferable_input_proves_sites_only_and_asks_only_when_needed(cli, tmp_path, randomize_bn):
    (tmp_path / "two.py").write_text(TWO_INPUTS)
    sys.path.insert(0, str(tmp_path))
    try:
        import two  # noqa: PLC0415 - the architecture file written above
    finally:
        sys.path.remove(str(tmp_path))
    torch.save(randomize_bn(two.Net()).state_dict(), tmp_path / "two.pt")
    arch = f"{tmp_path / 'two.py'}:Net"
    result = cli("fold", tmp_path / "two.pt", "--arch", arch, "--out", tmp_path / "f.safetensors", "-f", "json", "--no-timing")
    assert result.exit_code == 0, result.stderr
    report = _report(result)
    assert report["verification"]["inputs"] == "random" and report["verification"]["inputs_used"]["origin"] == "none"
    assert "--input-shape" in report["verification"]["inputs_used"]["why"]
    proofs = {layer["name"]: layer["fold"]["site_proof"] for layer in report["layers"]}
    assert proofs["b"]["input_shape"] == [1, 3, 4, 4] and proofs["bt"]["input_shape"][:2] == [1, 4]
    assert all(p["passed"] and p["max_rel_err"] < 1e-6 for p in proofs.values())
    table = cli("fold", tmp_path / "two.pt", "--arch", arch, "--out", tmp_path / "g.safetensors", "-f", "table", "--no-timing")
    assert table.exit_code == 0 and "whole model not run" in table.stdout, table.stdout
    assert (tmp_path / "f.safetensors").exists()
    needs = cli("fold", tmp_path / "two.pt", "--arch", arch, "--out", tmp_path / "f.pt2")
    assert needs.exit_code == 2 and "needs an example input" in needs.stderr and "--input-shape" in needs.stderr
    assert "Traceback" not in needs.stderr


def test_traced_torchscript_without_layer_attributes_gets_inferred_inputs(cli, tmp_path):
    # a traced TorchScript submodule keeps its weights but not in_channels / num_features:
    # fold read layer.in_channels and died with an AttributeError
    from bncheck.backends.torch.infer_inputs import candidates, first_layer  # noqa: PLC0415

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.BatchNorm2d(8)).eval()
    path = tmp_path / "traced.ts"
    torch.jit.save(torch.jit.trace(net, torch.randn(1, 3, 32, 32)), str(path))
    traced = torch.jit.load(str(path))
    assert not hasattr(dict(traced.named_modules())["0"], "in_channels")
    assert candidates(first_layer(traced)[1])[0] == (3, 224, 224)
    result = cli("fold", path, "--out", tmp_path / "f.ts", "-f", "json", "--no-timing")
    assert result.exit_code == 0, result.stderr
    assert "AttributeError" not in result.stderr
    assert [layer["fold"]["status"] for layer in _report(result)["layers"]] == ["kept"]

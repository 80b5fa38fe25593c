"""What ``bncheck fold`` writes: ONNX, torch.export, TorchScript, state dicts and pickles,
from every PyTorch input kind; each file read back and compared with the original model."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import bncheck  # noqa: E402
from bncheck.commands.fold import fold, load_folded_state_dict  # noqa: E402

SHAPE = "4,1,8,8"


def _close(a, b, rtol=1e-5):
    a, b = np.asarray(a), np.asarray(b)
    assert np.abs(a - b).max() <= rtol * max(np.abs(a).max(), 1e-12)


def _ort(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _bn_names(state) -> set[str]:
    return {k.rsplit(".", 1)[0] for k in state if k.endswith("running_mean")}


def test_state_dict_to_safetensors_loads_into_the_architecture(tmp_path, tiny_cnn, arch_module, save_model):
    src = save_model(tiny_cnn, tmp_path, "state_dict")
    out = tmp_path / "folded.safetensors"
    report = fold(src, out, arch=arch_module.spec(), input_shape=SHAPE, timing=False)
    assert report.result.figures.layers_folded == 3
    assert report.result.figures.output.written
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = load_file(str(out))
    assert not _bn_names(state)
    assert {"conv1.bias", "conv2.bias"} <= set(state)
    with safe_open(str(out), "pt") as handle:
        meta = json.loads(handle.metadata()["bncheck.fold"])
    assert meta["folded"] == ["bn1", "bn2", "bn3"]
    rebuilt = load_folded_state_dict(arch_module.module.tiny_cnn(), out).eval()
    assert isinstance(rebuilt.bn1, nn.Identity)
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        _close(tiny_cnn(x), rebuilt(x))


def test_pt_output_of_a_state_dict_is_a_plain_state_dict(tmp_path, tiny_cnn, arch_module, save_model):
    src = save_model(tiny_cnn, tmp_path, "state_dict")
    out = tmp_path / "folded.pt"
    report = fold(src, out, arch=arch_module.spec(), input_shape=SHAPE, timing=False, affine=True)
    assert report.result.figures.output.kind == "state-dict"
    state = torch.load(out, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    rebuilt = load_folded_state_dict(arch_module.module.tiny_cnn(), out).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        _close(tiny_cnn(x), rebuilt(x))


def test_state_dict_to_export_keeps_a_dynamic_batch(tmp_path, tiny_cnn, arch_module, save_model):
    src = save_model(tiny_cnn, tmp_path, "safetensors")
    out = tmp_path / "folded.pt2"
    report = fold(src, out, arch=arch_module.spec(), input_shape=SHAPE, timing=False)
    assert report.result.verification.passed
    program = torch.export.load(str(out))
    ops = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert not any("batch_norm" in op for op in ops)
    for batch in (1, 5):
        x = torch.randn(batch, 1, 8, 8)
        with torch.no_grad():
            _close(tiny_cnn(x), program.module()(x))


def test_state_dict_to_torchscript_and_onnx(tmp_path, tiny_cnn, arch_module, save_model):
    src = save_model(tiny_cnn, tmp_path, "state_dict")
    fold(src, tmp_path / "f.ts", arch=arch_module.spec(), input_shape=SHAPE, timing=False)
    fold(src, tmp_path / "f.onnx", arch=arch_module.spec(), input_shape=SHAPE, timing=False)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        ref = tiny_cnn(x)
        _close(ref, torch.jit.load(str(tmp_path / "f.ts"))(x))
    import onnx

    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(str(tmp_path / "f.onnx")).graph.node)
    _close(ref, _ort(tmp_path / "f.onnx", x))


def test_export_program_input(tmp_path, tiny_cnn, save_model):
    src = save_model(tiny_cnn, tmp_path, "export", example=torch.randn(4, 1, 8, 8))
    report = fold(src, tmp_path / "f.pt2", timing=False)
    assert report.result.figures.layers_folded == 3
    assert report.result.verification.inputs == "random"
    program = torch.export.load(str(tmp_path / "f.pt2"))
    assert not any("batch_norm" in str(n.target) for n in program.graph.nodes)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        _close(tiny_cnn(x), program.module()(x))
    fold(src, tmp_path / "f.onnx", timing=False)
    _close(tiny_cnn(x).detach(), _ort(tmp_path / "f.onnx", x))
    fold(src, tmp_path / "f.safetensors", timing=False)
    from safetensors.torch import load_file

    assert not _bn_names(load_file(str(tmp_path / "f.safetensors")))


def test_torchscript_input_is_frozen(tmp_path, tiny_cnn, save_model):
    src = save_model(tiny_cnn, tmp_path, "script")
    report = fold(src, tmp_path / "f.ts", input_shape=SHAPE, timing=False)
    assert report.result.figures.mode == "freeze"
    assert report.result.figures.layers_folded == 3
    frozen = torch.jit.load(str(tmp_path / "f.ts"))
    assert not frozen.graph.findAllNodes("aten::batch_norm")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        _close(tiny_cnn(x), frozen(x))


def test_torchscript_input_reports_the_bn_freeze_keeps(tmp_path, randomize_bn):
    model = randomize_bn(nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.BatchNorm2d(3), nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))
    src = tmp_path / "m.ts"
    torch.jit.save(torch.jit.script(model), str(src))
    report = fold(src, tmp_path / "f.ts", input_shape="2,2,5,5", timing=False)
    status = {k: o["status"] for k, o in report.result.outcomes.items()}
    assert status == {"2": "kept", "4": "folded"}
    assert len(torch.jit.load(str(tmp_path / "f.ts")).graph.findAllNodes("aten::batch_norm")) == 1


def test_pickled_module_stays_pickled(tmp_path, tiny_cnn, save_model):
    src = save_model(tiny_cnn, tmp_path, "pickle")
    report = fold(src, tmp_path / "f.pt", input_shape=SHAPE, trust_pickle=True, timing=False)
    assert report.result.figures.output.kind == "pickle"
    module = torch.load(tmp_path / "f.pt", weights_only=False)
    assert isinstance(module.bn1, nn.Identity) and type(module).__name__ == "TinyCNN"
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        _close(tiny_cnn(x), module(x))


def test_a_failing_writer_leaves_no_file(tmp_path, tiny_cnn, arch_module, save_model, monkeypatch):
    src = save_model(tiny_cnn, tmp_path, "state_dict")

    def broken_save(program, path):
        with open(path, "wb") as handle:
            handle.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch.export, "save", broken_save)
    from bncheck.errors import OutputError

    with pytest.raises(OutputError, match="No space left"):
        fold(src, tmp_path / "f.pt2", arch=arch_module.spec(), input_shape=SHAPE, timing=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["arch", src.name])


class _FrozenBN(nn.Module):
    """A frozen BN computing the normalisation with elementwise ops (no batch_norm call)."""

    def __init__(self, n):
        super().__init__()
        self.eps = 1e-5
        for name, value in (("weight", torch.rand(n) + 0.5), ("bias", torch.randn(n)), ("running_mean", torch.randn(n)), ("running_var", torch.rand(n) + 0.5)):
            self.register_buffer(name, value)

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return x * scale.reshape(1, -1, 1, 1) + (self.bias - self.running_mean * scale).reshape(1, -1, 1, 1)


def test_frozen_bn_in_export_and_torchscript_is_reported_kept(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _FrozenBN(4), nn.ReLU()).eval()
    x = torch.randn(2, 3, 6, 6)
    torch.export.save(torch.export.export(model, (x,)), str(tmp_path / "m.pt2"))
    torch.jit.save(torch.jit.script(model), str(tmp_path / "m.ts"))
    exported = fold(tmp_path / "m.pt2", tmp_path / "f.pt2", timing=False)
    scripted = fold(tmp_path / "m.ts", tmp_path / "f.ts", input_shape="2,3,6,6", timing=False)
    assert exported.result.outcomes["1"]["status"] == "kept"
    assert "elementwise ops" in exported.result.outcomes["1"]["reason"]
    assert scripted.result.outcomes["1"]["status"] == "kept"
    assert "aten::batch_norm" in scripted.result.outcomes["1"]["reason"]
    assert exported.result.verification.passed and scripted.result.verification.passed
    # the eager module is traced with the frozen BN as one call, which folds:
    assert fold(model, input_shape="2,3,6,6", timing=False).result.outcomes["1"]["status"] == "folded"


def test_loading_a_folded_state_dict_into_a_non_torch_model_is_refused(tmp_path, tiny_cnn, arch_module, save_model, onnx_bn):
    src = save_model(tiny_cnn, tmp_path, "state_dict")
    out = tmp_path / "folded.safetensors"
    fold(src, out, arch=arch_module.spec(), input_shape=SHAPE, timing=False)
    proto, _ = onnx_bn()
    with pytest.raises(bncheck.BncheckError, match="a ModelProto cannot load a folded state dict"):
        load_folded_state_dict(proto, out)
    with pytest.raises(bncheck.BncheckError, match="a int is not a model bncheck knows"):
        load_folded_state_dict(3, out)

"""Model loading: every format, detected by content (also under a misleading extension), the
API's in-memory models, and bad model files of no family (exit 2, one line). Reading PyTorch
files in detail: tests/backends/torch/test_loading.py."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bncheck  # noqa: E402
from bncheck.backends import Backend, ModelFormat, load_model, sniff_format  # noqa: E402
from bncheck.backends.load import BACKEND_MODULES, backend  # noqa: E402

BN_NAMES = ["bn1", "bn2", "bn3"]
#: save format -> the ``format`` the report gives it
REPORTED = {
    "state_dict": "state_dict",
    "checkpoint": "state_dict",
    "safetensors": "state_dict",
    "script": "torchscript",
    "trace": "torchscript",
    "export": "export",
    "onnx": "onnx",
    "pickle": "pickle",
}


def _torch_stats(model):
    return [
        (m.running_mean.double().numpy(), m.running_var.double().numpy(), m.weight.double().detach().numpy())
        for m in (model.bn1, model.bn2, model.bn3)
    ]


@pytest.mark.parametrize("fmt", list(REPORTED))
def test_every_format_reads_the_stored_statistics(tmp_path, tiny_cnn, save_model, example, fmt):
    path = save_model(tiny_cnn, tmp_path, fmt, example)
    source = load_model(path, trust_pickle=(fmt == "pickle"))
    assert source.format == REPORTED[fmt]
    layers = source.bn_layers()
    assert [layer.num_features for layer in layers] == [4, 6, 8]
    if fmt != "onnx":
        assert [layer.name for layer in layers] == BN_NAMES
    for layer, (mean, var, weight) in zip(layers, _torch_stats(tiny_cnn), strict=True):
        np.testing.assert_allclose(layer.running_mean, mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(layer.running_var, var, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(layer.weight, weight, rtol=1e-6, atol=1e-7)
        assert layer.eps == pytest.approx(1e-5, rel=1e-6)
        assert not any(layer.running_var == 1.0)  # really calibrated, not the initial values


@pytest.mark.parametrize(
    "fmt, misleading_name, sniffed",
    [
        ("onnx", "model.pt", ModelFormat.ONNX),
        ("script", "model.onnx", ModelFormat.TORCHSCRIPT),
        ("trace", "weights.safetensors", ModelFormat.TORCHSCRIPT),
        ("export", "model.ts", ModelFormat.EXPORT),
        ("state_dict", "model.onnx", ModelFormat.TORCH_SAVE),
        ("safetensors", "model.pt", ModelFormat.SAFETENSORS),
        ("safetensors", "weights.bin", ModelFormat.SAFETENSORS),
        ("pickle", "model.pt2", ModelFormat.TORCH_SAVE),
    ],
)
def test_format_detected_by_content_not_extension(tmp_path, tiny_cnn, save_model, example, fmt, misleading_name, sniffed):
    path = save_model(tiny_cnn, tmp_path, fmt, example, name=misleading_name)
    assert sniff_format(path) is sniffed
    report = bncheck.audit(path, trust_pickle=(fmt == "pickle"))
    assert report.model.format == REPORTED[fmt]
    assert len(report.layers) == 3


def test_onnx_path_does_not_import_torch(tmp_path, onnx_bn):
    import onnx

    model, _ = onnx_bn()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    code = (
        "import sys, bncheck; r = bncheck.audit(sys.argv[1]); "
        "assert len(r.layers) == 1; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"



def test_the_registry_names_each_family_backend():
    for family, module in BACKEND_MODULES.items():
        served = backend(family)
        assert isinstance(served, Backend) and served is importlib.import_module(module).BACKEND
    with pytest.raises(bncheck.BncheckError, match="no backend for model family 'tf'; bncheck knows: onnx, torch"):
        backend("tf")


def test_a_torch_model_without_torch_installed_says_what_to_install(tmp_path, tiny_cnn, save_model):
    """torch made unimportable in a fresh process (``sys.modules['torch'] = None``): the registry
    turns the ImportError into one sentence, also for the guard that runs before loading."""
    path = save_model(tiny_cnn, tmp_path, "state_dict")
    code = (
        "import sys; sys.modules['torch'] = None; sys.argv = ['bncheck', 'audit', sys.argv[1]]\n"
        "from bncheck.cli import main\nmain()\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0] == (
        f"error: {path}: this is a PyTorch model but torch is not installed; install it with `pip install 'bncheck[torch]'`."
    )


def test_api_accepts_in_memory_models(tiny_cnn, example, onnx_bn):
    assert bncheck.audit(tiny_cnn).model.format == "module"
    assert len(bncheck.audit(torch.jit.script(tiny_cnn)).layers) == 3
    assert bncheck.audit(torch.export.export(tiny_cnn, (example,))).model.format == "export"
    assert bncheck.audit(onnx_bn()[0]).model.format == "onnx"
    with pytest.raises(bncheck.BncheckError, match="cannot use a int"):
        bncheck.audit(3)


# ------------------------------------------------------------------------- bad model input


def test_missing_file(tmp_path, cli, assert_usage_error):
    assert_usage_error(cli("audit", tmp_path / "nope.pt"), "does not exist")


def test_directory_as_model(tmp_path, cli, assert_usage_error):
    assert_usage_error(cli("audit", tmp_path), "is a directory")


def test_empty_file(tmp_path, cli, assert_usage_error):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    assert_usage_error(cli("audit", path), "empty")


def test_truncated_onnx(tmp_path, tiny_cnn, save_model, example, cli, assert_usage_error):
    path = save_model(tiny_cnn, tmp_path, "onnx", example)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert_usage_error(cli("audit", path), str(path), "ONNX")


@pytest.mark.parametrize("name", ["random.onnx", "random.pt"])
@pytest.mark.parametrize("first_byte", [None, 0x80, 0x08])
def test_random_bytes(tmp_path, cli, assert_usage_error, name, first_byte):
    data = bytearray(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    if first_byte is not None:
        data[0] = first_byte  # look like a pickle / like a protobuf ModelProto
    path = tmp_path / name
    path.write_bytes(bytes(data))
    line = assert_usage_error(cli("audit", path), str(path))
    assert "--trust-pickle" not in line  # damaged data must not be mistaken for a pickled module


@pytest.mark.parametrize("fmt", ["state_dict", "onnx"])
def test_model_without_batch_norm(tmp_path, save_model, cli, fmt):
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)).eval()
    path = save_model(model, tmp_path, fmt, torch.rand(2, 3))
    result = cli("audit", path)
    assert result.exit_code == 0, result.stderr
    assert "no batch-norm layers found" in result.stdout
    report = bncheck.audit(path)
    assert report.layers == [] and report.passed
    (note,) = [n for n in report.notes if "no batch-norm layers found" in n]
    assert f"the model has {report.model.op_count} ops/modules" in note
    assert report.model.op_count == (2 if fmt == "state_dict" else 3)

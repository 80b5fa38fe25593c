"""Model loading: every format, detected by content (also under a misleading extension),
checkpoint layouts, --trust-pickle, --arch, and every kind of bad model input (exit 2, one line)."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import bncheck  # noqa: E402
from bncheck.backends import ModelFormat, load_model, sniff_format  # noqa: E402
from bncheck.errors import ModelLoadError  # noqa: E402

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


@pytest.fixture
def example():
    return torch.rand(2, 1, 8, 8)


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
    for layer, (mean, var, weight) in zip(layers, _torch_stats(tiny_cnn)):
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


def test_traced_torchscript_reads_eps_and_momentum_from_the_graph(tmp_path, save_model, calibrate, example):
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, bias=False),
        torch.nn.BatchNorm2d(3, eps=1e-3, momentum=0.05),
        torch.nn.ReLU(),
    )
    calibrate(model, (4, 1, 8, 8))
    path = save_model(model, tmp_path, "trace", example)
    loaded = torch.jit.load(str(path))
    assert not hasattr(getattr(loaded, "1"), "eps")  # tracing dropped the attribute: only the graph has it
    (layer,) = load_model(path).bn_layers()
    assert layer.eps == pytest.approx(1e-3)
    assert layer.momentum == pytest.approx(0.05)
    assert layer.assumed == []
    assert (layer.producer, layer.producer_kind, layer.foldable) == ("0", "conv", True)


@pytest.mark.parametrize(
    "layout",
    [
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 7},
        lambda sd: {"model": {f"_orig_mod.{k}": v for k, v in sd.items()}, "optimizer": {"lr": 0.1}},
        lambda sd: {"checkpoint_version": 2, "model": {"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}}},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
    ],
    ids=["state_dict+ddp", "model+compile", "nested+both", "bare+ddp"],
)
def test_checkpoint_layouts_unwrap_to_the_same_layers(tmp_path, tiny_cnn, layout):
    path = tmp_path / "checkpoint.pth"
    torch.save(layout(tiny_cnn.state_dict()), path)
    layers = load_model(path).bn_layers()
    assert [layer.name for layer in layers] == BN_NAMES
    assert [layer.num_batches_tracked for layer in layers] == [4, 4, 4]
    np.testing.assert_allclose(layers[1].running_var, tiny_cnn.bn2.running_var.double().numpy())


def test_safetensors_with_wrapper_prefixes(tmp_path, tiny_cnn):
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({f"module._orig_mod.{k}": v.contiguous() for k, v in tiny_cnn.state_dict().items()}, str(path))
    assert [layer.name for layer in load_model(path).bn_layers()] == BN_NAMES


def test_state_dict_without_arch_has_unknown_producers_and_assumed_eps(tmp_path, tiny_cnn, save_model):
    source = load_model(save_model(tiny_cnn, tmp_path, "state_dict"))
    for layer in source.bn_layers():
        assert layer.foldable is None and layer.producer is None
        assert "eps" in layer.assumed
    assert any("--arch" in note for note in source.notes)


@pytest.mark.parametrize("by", ["module", "file"])
@pytest.mark.parametrize("fmt", ["state_dict", "safetensors", "checkpoint"])
def test_arch_rebuilds_the_graph(tmp_path, tiny_cnn, save_model, arch_module, by, fmt):
    path = save_model(tiny_cnn, tmp_path, fmt)
    source = load_model(path, arch=arch_module.spec("tiny_cnn", by=by))
    assert source.format == "state_dict"
    layers = source.bn_layers()
    assert [(layer.name, layer.producer, layer.producer_kind, layer.foldable) for layer in layers] == [
        ("bn1", "conv1", "conv", True),
        ("bn2", "conv2", "conv", True),
        ("bn3", "fc1", "linear", True),
    ]
    assert layers[0].assumed == []  # eps comes from the rebuilt module now
    np.testing.assert_array_equal(layers[2].running_mean, tiny_cnn.bn3.running_mean.double().numpy())


def test_pickled_module_needs_trust_pickle(tmp_path, tiny_cnn, save_model, cli, assert_usage_error):
    path = save_model(tiny_cnn, tmp_path, "pickle")
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_model(path)
    assert_usage_error(cli("audit", path), "--trust-pickle")
    result = cli("audit", path, "--trust-pickle", "--format", "json")
    assert result.exit_code == 0, result.stderr
    assert '"format": "pickle"' in result.stdout


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


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_torch_zip(tmp_path, tiny_cnn, save_model, cli, assert_usage_error, keep):
    path = save_model(tiny_cnn, tmp_path, "state_dict")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert_usage_error(cli("audit", path), str(path))


def test_damaged_member_inside_an_intact_zip(tmp_path, tiny_cnn, save_model, cli, assert_usage_error):
    source = save_model(tiny_cnn, tmp_path, "state_dict")
    damaged = tmp_path / "damaged.pt"
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(damaged, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            payload = zin.read(item)
            if item.filename.endswith("data.pkl"):
                payload = payload[: len(payload) // 2]
            zout.writestr(item, payload)
    assert_usage_error(cli("audit", damaged), str(damaged))


def test_zip_that_is_not_pytorch(tmp_path, cli, assert_usage_error):
    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "hi")
    assert_usage_error(cli("audit", path), "not a PyTorch one")


def test_torch_file_without_weights(tmp_path, cli, assert_usage_error):
    path = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    assert_usage_error(cli("audit", path), "without model weights")


@pytest.mark.parametrize(
    "factory, needle",
    [
        ("NOT_CALLABLE", "not callable"),
        ("not_a_module", "not a torch.nn.Module"),
        ("raises", "factory exploded"),
        ("no_such_factory", "has no attribute"),
    ],
)
@pytest.mark.parametrize("by", ["module", "file"])
def test_bad_arch_factory(tmp_path, tiny_cnn, save_model, arch_module, cli, assert_usage_error, factory, needle, by):
    path = save_model(tiny_cnn, tmp_path, "state_dict")
    assert_usage_error(cli("audit", path, "--arch", arch_module.spec(factory, by=by)), "--arch", needle)


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("no_such_package_xyz.models:build", "cannot import module no_such_package_xyz.models"),
        ("missing_dir/arch.py:build", "does not exist"),
        ("just_a_name", "must look like"),
    ],
)
def test_arch_that_cannot_be_imported(tmp_path, tiny_cnn, save_model, cli, assert_usage_error, spec, needle):
    path = save_model(tiny_cnn, tmp_path, "state_dict")
    assert_usage_error(cli("audit", path, "--arch", spec), needle)


def test_arch_file_that_fails_to_import(tmp_path, tiny_cnn, save_model, cli, assert_usage_error):
    broken = tmp_path / "broken_arch.py"
    broken.write_text("import torch\nraise ImportError('needs timm')\n")
    path = save_model(tiny_cnn, tmp_path, "state_dict")
    assert_usage_error(cli("audit", path, "--arch", f"{broken}:build"), "importing", "needs timm")


def test_state_dict_keys_do_not_match_arch(tmp_path, tiny_cnn, save_model, arch_module, cli, assert_usage_error):
    path = save_model(tiny_cnn, tmp_path, "state_dict")
    line = assert_usage_error(cli("audit", path, "--arch", arch_module.spec("other_net")), "does not match")
    assert "missing" in line and "0.weight" in line  # names keys the architecture wants
    assert "unexpected" in line and "conv1.weight" in line  # and keys the file has


def test_state_dict_shape_mismatch(tmp_path, tiny_cnn, save_model, arch_module, cli, assert_usage_error):
    path = save_model(tiny_cnn, tmp_path, "state_dict")
    assert_usage_error(
        cli("audit", path, "--arch", arch_module.spec("wider_cnn")), "conv1.weight", "(4, 1, 3, 3)", "(4, 1, 5, 5)"
    )


@pytest.mark.parametrize("fmt", ["script", "export", "onnx"])
def test_arch_refused_for_formats_that_carry_their_graph(tmp_path, tiny_cnn, save_model, arch_module, example, cli, assert_usage_error, fmt):
    path = save_model(tiny_cnn, tmp_path, fmt, example)
    assert_usage_error(cli("audit", path, "--arch", arch_module.spec()), "--arch")


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

"""Reading PyTorch files: TorchScript constants, checkpoint layouts, safetensors, state dicts
with and without --arch, --trust-pickle, and damaged or mismatched torch files (exit 2, one line)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bncheck.backends import load_model  # noqa: E402
from bncheck.errors import ModelLoadError  # noqa: E402

BN_NAMES = ["bn1", "bn2", "bn3"]


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



def test_a_frozen_state_dict_is_said_to_assume_eps_only(tmp_path, tiny_cnn):
    """Without num_batches_tracked (frozen BN) there is no momentum: the note says only eps is assumed."""
    from safetensors.torch import save_file

    path = tmp_path / "frozen.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_cnn.state_dict().items() if not k.endswith("num_batches_tracked")}, str(path))
    source = load_model(path)
    assert all(layer.assumed == ["eps"] and layer.momentum is None for layer in source.bn_layers())
    assert "the state dict stores no eps: eps 1e-5 (PyTorch's default) is assumed; pass --arch FILE.py:Factory" in " ".join(source.notes)
    assert not any("momentum" in note for note in source.notes)


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


def test_plain_pickle_is_named_as_one_and_needs_trust_pickle(tmp_path, tiny_cnn, cli, assert_usage_error):
    """pickle.dump(model, open("model.pt", "wb")): not a damaged torch file, a plain pickle."""
    import pickle

    path = tmp_path / "model.pt"
    with open(path, "wb") as handle:
        pickle.dump(tiny_cnn, handle)
    line = assert_usage_error(cli("audit", path), "plain Python pickle", "TinyCNN", "--trust-pickle")
    assert "corrupt" not in line and "truncated" not in line
    result = cli("audit", path, "--trust-pickle", "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["format"] == "pickle"
    assert [layer["name"] for layer in report["layers"]] == BN_NAMES
    assert report["layers"][0]["producer"] == "conv1"


def test_plain_pickle_of_a_state_dict_reads_with_trust_pickle(tmp_path, tiny_cnn, cli, assert_usage_error):
    import pickle

    path = tmp_path / "weights.pth"
    with open(path, "wb") as handle:
        pickle.dump(tiny_cnn.state_dict(), handle, protocol=2)
    assert_usage_error(cli("audit", path), "plain Python pickle of a collections.OrderedDict", "--trust-pickle")
    result = cli("audit", path, "--trust-pickle", "--format", "json")
    assert result.exit_code == 0, result.stderr
    layers = json.loads(result.stdout)["layers"]
    assert [layer["name"] for layer in layers] == BN_NAMES
    loaded = load_model(path, trust_pickle=True).bn_layers()
    np.testing.assert_array_equal(loaded[0].running_var, tiny_cnn.bn1.running_var.double().numpy())


def test_truncated_plain_pickle_is_called_damaged(tmp_path, tiny_cnn, cli, assert_usage_error):
    import pickle

    path = tmp_path / "model.pt"
    data = pickle.dumps(tiny_cnn)
    path.write_bytes(data[: len(data) // 2])
    line = assert_usage_error(cli("audit", path, "--trust-pickle"), "truncated or corrupt")
    assert "plain Python pickle" not in line


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


def test_arch_module_whose_dependency_is_missing(tmp_path, tiny_cnn, save_model, cli, assert_usage_error, monkeypatch):
    """torchcrepe.model imports librosa: the fix is to install librosa, not to check PYTHONPATH."""
    package = tmp_path / "pkg_needing_dep"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "model.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    path = save_model(tiny_cnn, tmp_path, "state_dict")
    line = assert_usage_error(
        cli("audit", path, "--arch", "pkg_needing_dep.model:build"), "needs no_such_dependency_xyz", "not installed", "pip install"
    )
    assert "PYTHONPATH" not in line


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


def test_without_torch_the_error_names_the_file_that_needs_it(tmp_path):
    """An ONNX-only install auditing an ONNX and a .pt file: which one needs torch?"""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    code = (
        "import sys; sys.modules['torch'] = None; "  # as if torch were not installed
        "sys.argv = ['bncheck', 'audit', 'sample_models/digits_cnn.onnx', 'sample_models/digits_cnn.pt']; "
        "from bncheck.cli import main; main()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == (
        "error: sample_models/digits_cnn.pt: this is a PyTorch model but torch is not installed; "
        "install it with `pip install 'bncheck[torch]'`.\n"
    )


def test_a_misspelt_arch_factory_names_what_the_module_defines(tmp_path, cli, assert_usage_error):
    """`--arch architectures.py:digit_cnn` said only "has no attribute 'digit_cnn'"; the sentence
    lists the callables the file defines (not what it imports) and the nearest, in any case
    (`khmer_ocr_ocm.model:crnn` for its class `CRNN`); a package suggests only the nearest."""
    samples = Path(__file__).resolve().parents[3] / "sample_models"
    model, arch = samples / "digits_cnn.pt", samples / "architectures.py"
    line = assert_usage_error(cli("audit", model, "--arch", f"{arch}:digit_cnn"), "has no attribute 'digit_cnn'; it defines ")
    assert line.endswith("(did you mean digits_cnn?).") and "cancer_mlp" in line
    assert "Path" not in line and "torch" not in line  # imported names are not its own
    (tmp_path / "nets.py").write_text("import torch\n\nclass CRNN(torch.nn.Module):\n    pass\n")
    line = assert_usage_error(cli("audit", model, "--arch", f"{tmp_path / 'nets.py'}:crnn"), "it defines CRNN (did you mean CRNN?).")
    assert "Module" not in line
    line = assert_usage_error(cli("audit", model, "--arch", "torch.nn:Conv3x"), "torch.nn has no attribute 'Conv3x'; did you mean Conv3d?")
    assert line.endswith("?")


def test_a_long_library_message_is_cut_with_an_ellipsis(tmp_path, cli, assert_usage_error):
    """Library messages are cut at 300 characters: onnxruntime's broadcast failure on PP-OCR's
    detector ended "... axis == largest was fals", as if misspelt; a cut line ends in "…"."""
    (tmp_path / "arch.py").write_text("def make():\n    raise ValueError('shape mismatch ' + 'x' * 400 + ' END')\n")
    samples = Path(__file__).resolve().parents[3] / "sample_models"
    line = assert_usage_error(cli("audit", samples / "digits_cnn.pt", "--arch", f"{tmp_path / 'arch.py'}:make"), "ValueError: shape mismatch x")
    assert "xxx…" in line and "END" not in line

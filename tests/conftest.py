"""Shared fixtures: tiny real models written to ``tmp_path`` in every format bncheck reads,
hand-built ONNX batch-norm graphs, and the CLI runner.

Factories are handed out as fixtures (``save_model``, ``calibrate``, ``onnx_bn``, ``cli``) so
that test modules never import this file. Nothing here is shared between tests: every model
is built fresh and every file lands in the test's own ``tmp_path`` (pytest-xdist friendly).
"""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

#: fixtures shared by test folders (tests/support/*_fixtures.py), one place for all
pytest_plugins = ["support.fold_fixtures", "support.engine_fixtures", "support.report_fixtures"]

#: An architecture module written to disk, so that ``--arch file.py:factory`` and
#: ``--arch module:factory`` have something real to import and whole-module pickles have an
#: importable class. ``tiny_cnn()`` takes (N, 1, 8, 8) input.
ARCH_SOURCE = textwrap.dedent(
    '''
    """A tiny CNN for bncheck's tests (written by tests/conftest.py)."""
    import torch
    from torch import nn


    class TinyCNN(nn.Module):
        """conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> flatten -> fc1 -> bn3 -> relu -> fc2."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 4, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 6, 3, bias=False)
            self.bn2 = nn.BatchNorm2d(6)
            self.fc1 = nn.Linear(6 * 4 * 4, 8)
            self.bn3 = nn.BatchNorm1d(8)
            self.fc2 = nn.Linear(8, 3)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)))
            return self.fc2(torch.relu(self.bn3(self.fc1(x.flatten(1)))))


    def tiny_cnn():
        return TinyCNN()


    def wider_cnn():
        model = TinyCNN()
        model.conv1 = nn.Conv2d(1, 4, 5, bias=False)
        return model


    def other_net():
        return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


    def not_a_module():
        return {"conv": 1}


    def raises():
        raise RuntimeError("factory exploded")


    NOT_CALLABLE = 42
    '''
)

#: Input shape of ``tiny_cnn()``.
TINY_INPUT = (4, 1, 8, 8)

#: What ``save_model`` can write, and the file name it picks by default.
SAVE_FORMATS = {
    "state_dict": "model.pt",
    "checkpoint": "checkpoint.pth",
    "safetensors": "model.safetensors",
    "script": "model.ts",
    "trace": "model_traced.ts",
    "export": "model.pt2",
    "onnx": "model.onnx",
    "onnx_folded": "model_folded.onnx",
    "pickle": "model_pickle.pt",
}


@dataclass
class ArchModule:
    """The architecture module on disk and imported under a unique name."""

    module: ModuleType
    name: str
    file: Path

    def spec(self, factory: str = "tiny_cnn", *, by: str = "module") -> str:
        """An ``--arch`` value: ``name:factory`` (by="module") or ``path.py:factory`` (by="file")."""
        return f"{self.name}:{factory}" if by == "module" else f"{self.file}:{factory}"


@pytest.fixture
def arch_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ArchModule:
    """ARCH_SOURCE written to ``tmp_path/arch/<unique>.py``, importable for this test only."""
    pytest.importorskip("torch")
    folder = tmp_path / "arch"
    folder.mkdir()
    name = f"bncheck_test_arch_{uuid.uuid4().hex[:12]}"
    file = folder / f"{name}.py"
    file.write_text(ARCH_SOURCE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    module = importlib.import_module(name)
    monkeypatch.setitem(sys.modules, name, module)  # removed again on teardown
    return ArchModule(module=module, name=name, file=file)


def _calibrate(model, input_shape, *, batches: int = 4, seed: int = 0, scale: float = 1.0, shift: float = 0.0):
    """Give every BN layer real running statistics: ``batches`` random batches in train mode
    (no gradients), then ``eval()``. Returns the model."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(*input_shape, generator=generator) * scale + shift)
    return model.eval()


@pytest.fixture
def calibrate():
    """``calibrate(model, input_shape, batches=4, seed=0)`` -> the model in eval mode with
    running statistics estimated from random batches."""
    pytest.importorskip("torch")
    return _calibrate


@pytest.fixture
def tiny_cnn(arch_module: ArchModule):
    """A calibrated ``TinyCNN`` (eval mode) whose class lives in ``arch_module``."""
    import torch

    torch.manual_seed(0)
    return _calibrate(arch_module.module.tiny_cnn(), TINY_INPUT)


def _save_model(model, folder: Path, fmt: str, example=None, name: str | None = None) -> Path:
    """Write ``model`` to ``folder`` as ``fmt`` (a key of SAVE_FORMATS); ``example`` is an
    input tensor for trace/export/onnx. The model's train/eval mode is kept as it is."""
    import torch

    path = Path(folder) / (name or SAVE_FORMATS[fmt])
    if fmt == "state_dict":
        torch.save(model.state_dict(), path)
    elif fmt == "checkpoint":
        state = {f"module.{k}": v for k, v in model.state_dict().items()}  # as DDP saves it
        torch.save({"epoch": 3, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    elif fmt == "script":
        torch.jit.save(torch.jit.script(model), str(path))
    elif fmt == "trace":
        torch.jit.save(torch.jit.trace(model, (example,), check_trace=False), str(path))
    elif fmt == "export":
        torch.export.save(torch.export.export(model, (example,)), str(path))
    elif fmt in ("onnx", "onnx_folded"):
        options = {} if fmt == "onnx_folded" else {
            "do_constant_folding": False,
            "training": torch.onnx.TrainingMode.PRESERVE,
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter (the fast one) is deprecated and chatty
            torch.onnx.export(model, (example,), str(path), dynamo=False, **options)
    elif fmt == "pickle":
        torch.save(model, path)
    else:
        raise ValueError(f"unknown format {fmt}")
    return path


@pytest.fixture
def save_model():
    """``save_model(model, folder, fmt, example=None, name=None) -> Path``; formats:
    state_dict, checkpoint (DDP ``module.`` keys under ``state_dict``), safetensors, script,
    trace, export, onnx (BN kept), onnx_folded (torch's default constant folding), pickle."""
    pytest.importorskip("torch")
    return _save_model


def _onnx_bn(
    channels: int = 3,
    *,
    opset: int = 15,
    params: str = "initializer",
    epsilon: float | None = 1e-5,
    momentum: float | None = None,
    training_mode: int | None = None,
    producer: str = "conv",
    in_if: bool = False,
    values: dict[str, np.ndarray] | None = None,
    seed: int = 0,
):
    """A small ONNX model ``x -> Conv -> BatchNormalization`` (``producer="input"``: BN on x).

    ``params``: where scale/B/mean/var come from: ``initializer``, ``constant`` (Constant
    nodes), ``cast`` (float64 Constant -> Cast(FLOAT), as tf2onnx writes them) or ``expand``
    (a one-element Constant expanded to C channels; the values are then that element
    repeated). ``in_if`` puts the BN node in the then-branch of an If node.
    Returns ``(model, values)`` where ``values`` are the float32 parameters the BN sees.
    """
    from onnx import TensorProto, checker, helper, numpy_helper

    rng = np.random.default_rng(seed)
    vals = {
        "scale": rng.uniform(0.5, 1.5, channels),
        "B": rng.normal(size=channels),
        "mean": rng.normal(size=channels),
        "var": rng.uniform(0.5, 2.0, channels),
    }
    vals.update(values or {})
    vals = {k: np.asarray(v, dtype=np.float32) for k, v in vals.items()}
    if params == "expand":
        vals = {k: np.repeat(v[:1], channels) for k, v in vals.items()}
    nodes, inits = [], []
    x_channels = 2 if producer == "conv" else channels
    if producer == "conv":
        w = rng.normal(size=(channels, x_channels, 1, 1)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, "W"))
        nodes.append(helper.make_node("Conv", ["x", "W"], ["c"], name="conv"))
        bn_input = "c"
    else:
        bn_input = "x"
    for key, value in vals.items():
        if params == "initializer":
            inits.append(numpy_helper.from_array(value, key))
        elif params == "constant":
            nodes.append(helper.make_node("Constant", [], [key], value=numpy_helper.from_array(value, f"{key}_value")))
        elif params == "cast":
            raw = numpy_helper.from_array(value.astype(np.float64), f"{key}_value")
            nodes.append(helper.make_node("Constant", [], [f"{key}_f64"], value=raw))
            nodes.append(helper.make_node("Cast", [f"{key}_f64"], [key], to=TensorProto.FLOAT))
        elif params == "expand":
            one = numpy_helper.from_array(value[:1], f"{key}_one")
            shape = numpy_helper.from_array(np.array([channels], dtype=np.int64), f"{key}_shape")
            nodes.append(helper.make_node("Constant", [], [f"{key}_1"], value=one))
            nodes.append(helper.make_node("Constant", [], [f"{key}_s"], value=shape))
            nodes.append(helper.make_node("Expand", [f"{key}_1", f"{key}_s"], [key]))
        else:
            raise ValueError(params)
    attrs = {}
    if epsilon is not None:
        attrs["epsilon"] = epsilon
    if momentum is not None:
        attrs["momentum"] = momentum
    if training_mode is not None:
        attrs["training_mode"] = training_mode
    if opset < 7:
        attrs["is_test"] = 1
    outputs = ["y", "running_mean_out", "running_var_out"] if training_mode else ["y"]
    bn = helper.make_node("BatchNormalization", [bn_input, "scale", "B", "mean", "var"], outputs, name="bn", **attrs)
    shape = [1, channels, 4, 4]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, x_channels, 4, 4])]
    if in_if:
        then_branch = helper.make_graph([bn], "then", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
        else_branch = helper.make_graph(
            [helper.make_node("Identity", [bn_input], ["y_else"])],
            "else",
            [],
            [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, shape)],
        )
        nodes.append(helper.make_node("If", ["cond"], ["out"], name="branch", then_branch=then_branch, else_branch=else_branch))
        graph_inputs.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
        graph_outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)]
    else:
        nodes.append(bn)
        graph_outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)]
    graph = helper.make_graph(nodes, "bn_graph", graph_inputs, graph_outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    checker.check_model(model)
    return model, vals


@pytest.fixture
def onnx_bn():
    """``onnx_bn(channels=3, opset=15, params="initializer", epsilon=1e-5, momentum=None,
    training_mode=None, producer="conv", in_if=False, values=None) -> (ModelProto, values)``."""
    pytest.importorskip("onnx")
    return _onnx_bn


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def _invoke(*args: str | Path) -> CliResult:
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "160"})  # tables at the golden width
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash inside the CLI, not an exit code: show it
    return CliResult(result.exit_code, result.stdout, result.stderr)


@pytest.fixture(autouse=True)
def _no_bncheck_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's or CI's ``BNCHECK_FAIL_ON`` (or any setting variable) must not change
    what the tests see; tests that want one set it with monkeypatch."""
    from bncheck.config import ENV_NAMES

    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cli():
    """``cli(*args) -> CliResult(exit_code, stdout, stderr)``: the real ``bncheck`` app in-process."""
    return _invoke


def _assert_usage_error(result: CliResult, *needles: str) -> str:
    """Exit 2, nothing on stdout, exactly one ``error: ...`` line on stderr, no traceback, and
    every ``needle`` in that line. Returns the line."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr and not lines[0].startswith("error: unexpected"), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def assert_usage_error():
    """``assert_usage_error(result, *needles)``: exit 2 with one clean line naming every needle."""
    return _assert_usage_error

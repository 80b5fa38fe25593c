"""Model runners: per-layer moments of BN inputs, eval and train-mode passes, for every
backend. References come from torch itself: plain forward hooks on an eager copy of the model
capture the real BN inputs (statistics then computed by numpy in float64), and torch's own
train mode gives the train-mode outputs."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from bncheck.backends import load_model  # noqa: E402
from bncheck.backends.onnx.source import OnnxSource  # noqa: E402
from bncheck.backends.torch.source import ExportSource, TorchModuleSource  # noqa: E402
from bncheck.errors import DataError, UsageError  # noqa: E402
from bncheck.numerics.moments import Moments  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"
ARCH = f"{SAMPLES / 'architectures.py'}:digits_cnn"
DIGITS = {
    "eager": ("digits_cnn.pt", ARCH),
    "torchscript": ("digits_cnn.ts", None),
    "export": ("digits_cnn.pt2", None),
    "onnx": ("digits_cnn.onnx", None),
}


# ----------------------------------------------------------------------------- helpers


def bn_inputs(model, x: np.ndarray, *, train: bool = False) -> dict[str, np.ndarray]:
    """The input of every BN-like module of an eager model, captured with plain forward
    pre-hooks on a deep copy, as float64 arrays. ``train``: torch's train mode (dropout p=0)."""
    model = copy.deepcopy(model)
    captured: dict[str, np.ndarray] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) or hasattr(module, "running_var"):

            def hook(mod, args, name=name):
                captured[name] = args[0].detach().double().numpy()

            handles.append(module.register_forward_pre_hook(hook))
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    model.train(train)
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    for handle in handles:
        handle.remove()
    captured["<output>"] = out.double().numpy()
    return captured


def reference_moments(array: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    axes = (0,) + tuple(range(2, array.ndim))
    return array.size // array.shape[1], array.mean(axis=axes), array.var(axis=axes)


def assert_moments(m: Moments, array: np.ndarray, *, rtol: float) -> None:
    count, mean, var = reference_moments(array)
    assert m.count == count
    std = np.sqrt(var)
    np.testing.assert_allclose(m.mean, mean, rtol=rtol, atol=rtol * (std.max() + 1e-12))
    np.testing.assert_allclose(m.var, var, rtol=rtol, atol=rtol * var.max() * 1e-3)


def state_of(source) -> dict[str, torch.Tensor]:
    if isinstance(source, ExportSource):
        return {k: v.detach().clone() for k, v in source.program.state_dict.items()}
    return {k: v.detach().clone() for k, v in source.module.state_dict().items()}


def assert_same_state(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key


def export_onnx(model, example, path: Path, *, opset: int = 17) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            do_constant_folding=False,
            training=torch.onnx.TrainingMode.PRESERVE,
            input_names=["input"],
            output_names=["out"],
            dynamic_axes={"input": {0: "batch"}, "out": {0: "batch"}},
        )
    return path


def randomise_bn(model, seed: int = 0):
    """Running statistics and affine parameters far from their defaults (eval != train)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=gen))
                module.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(c, generator=gen))
                module.num_batches_tracked.fill_(100)
    return model.eval()


@pytest.fixture(scope="module")
def digits_x() -> np.ndarray:
    with np.load(SAMPLES / "data" / "digits" / "reference.npz") as data:
        return np.ascontiguousarray(data["x"][:48], dtype=np.float32)


@pytest.fixture(scope="module")
def digits_eager():
    return load_model(SAMPLES / "digits_cnn.pt", arch=ARCH).module


def load_digits(kind: str):
    path, arch = DIGITS[kind]
    return load_model(SAMPLES / path, arch=arch)


# ----------------------------------------------------------------------------- digits CNN


@pytest.mark.parametrize("kind", list(DIGITS))
def test_digits_moments_match_float64_of_the_real_bn_inputs(kind, digits_x, digits_eager):
    reference = bn_inputs(digits_eager, digits_x)
    source = load_digits(kind)
    with source.runner() as runner:
        assert runner.unhookable == {} and runner.frozen == {}
        assert runner.layers == [layer.name for layer in source.bn_layers()]
        out, moments = runner.moments(digits_x)
        np.testing.assert_allclose(out, reference["<output>"], atol=2e-5)
        # ONNX: the plain session fuses BN into the conv, the observed one cannot
        np.testing.assert_allclose(runner.forward(digits_x), out, atol=1e-5)
    assert list(moments) == runner.layers
    rtol = 1e-4 if kind == "onnx" else 1e-6
    for name, module_name in zip(runner.layers, ["bn1", "bn2", "bn3"]):
        assert_moments(moments[name], reference[module_name], rtol=rtol)


def test_digits_torch_and_onnx_runners_agree(digits_x):
    with load_digits("eager").runner() as t, load_digits("onnx").runner() as o:
        out_t, mt = t.moments(digits_x)
        out_o, mo = o.moments(digits_x)
        tr_t, tmt = t.train_moments(digits_x[:16])
        tr_o, tmo = o.train_moments(digits_x[:16])
    np.testing.assert_allclose(out_o, out_t, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tr_o, tr_t, rtol=1e-4, atol=1e-5)
    # the ONNX exporter names a BN node after its module: "/bn1/BatchNormalization" <-> "bn1"
    assert list(mt) == list(tmt) == ["bn1", "bn2", "bn3"]
    assert list(mo) == list(tmo) == [f"/{name}/BatchNormalization" for name in mt]
    for name in mt:
        onnx_name = f"/{name}/BatchNormalization"
        for x, y in ((mt[name], mo[onnx_name]), (tmt[name], tmo[onnx_name])):
            assert x.count == y.count
            np.testing.assert_allclose(y.mean, x.mean, rtol=1e-4, atol=1e-4 * x.std.max())
            np.testing.assert_allclose(y.var, x.var, rtol=1e-4)


@pytest.mark.parametrize("kind", list(DIGITS))
def test_digits_train_mode_matches_torch_train_mode_and_changes_nothing(kind, digits_x, digits_eager):
    x = digits_x[:16]
    reference = bn_inputs(digits_eager, x, train=True)
    source = load_digits(kind)
    before = None if kind == "onnx" else state_of(source)
    proto = source.model.SerializeToString() if kind == "onnx" else None
    with source.runner() as runner:
        eval_before = runner.forward(x)
        train_out = runner.forward(x, bn="train")
        out, moments = runner.train_moments(x)
        eval_after = runner.forward(x)
    atol = 1e-4 if kind == "onnx" else 1e-5
    np.testing.assert_allclose(train_out, reference["<output>"], atol=atol)
    np.testing.assert_allclose(out, train_out, atol=1e-6)
    assert np.abs(train_out - eval_before).max() > 1e-3  # train mode really differs
    np.testing.assert_array_equal(eval_after, eval_before)
    for name, module_name in zip(runner.layers, ["bn1", "bn2", "bn3"]):
        assert_moments(moments[name], reference[module_name], rtol=1e-4 if kind == "onnx" else 1e-5)
    if kind == "onnx":
        assert source.model.SerializeToString() == proto
    else:
        assert_same_state(before, state_of(source))
        if kind != "export":
            assert not source.module.training  # the runner restored the eval mode it found


def test_runner_restores_the_train_flag_it_found(digits_x):
    source = load_digits("eager")
    source.module.train()
    before = state_of(source)
    with source.runner() as runner:
        runner.moments(digits_x)  # runs in eval mode: no running-statistics update
    assert source.module.training and source.module.bn1.training
    assert_same_state(before, state_of(source))


# ----------------------------------------------------------------- BatchNorm1d / 3d shapes


class Shapes(nn.Module):
    """BatchNorm1d on (N, C), BatchNorm1d on (N, C, L) and BatchNorm3d on (N, C, D, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm1d(5)
        self.fc = nn.Linear(5, 12)
        self.bn_seq = nn.BatchNorm1d(3)
        self.conv = nn.Conv3d(1, 2, 1)
        self.bn_vol = nn.BatchNorm3d(2)
        self.drop = nn.Dropout(0.0)

    def forward(self, x):
        h = self.fc(self.bn_in(x)).reshape(-1, 3, 4)
        h = torch.relu(self.bn_seq(h)).reshape(-1, 1, 3, 2, 2)
        h = self.bn_vol(self.conv(h))
        return self.drop(h.flatten(1))


@pytest.fixture(scope="module")
def shapes_models(tmp_path_factory):
    torch.manual_seed(0)
    model = randomise_bn(Shapes())
    folder = tmp_path_factory.mktemp("shapes")
    example = torch.randn(4, 5)
    paths = {opset: export_onnx(model, example, folder / f"shapes{opset}.onnx", opset=opset) for opset in (17, 18)}
    return model, paths


@pytest.mark.parametrize("opset", [17, 18])
def test_bn1d_2d_and_3d_inputs_torch_onnx_and_float64_agree(opset, shapes_models):
    model, paths = shapes_models
    x = (np.random.default_rng(0).normal(2.0, 3.0, (24, 5))).astype(np.float32)
    reference = bn_inputs(model, x)
    train_reference = bn_inputs(model, x, train=True)
    torch_source = TorchModuleSource(model, path=None, format="module")
    onnx_source = OnnxSource.load(paths[opset])
    with torch_source.runner() as t, onnx_source.runner() as o:
        assert len(o.layers) == len(t.layers) == 3
        out_t, mt = t.moments(x)
        out_o, mo = o.moments(x)
        tr_t, tmt = t.train_moments(x)
        tr_o, tmo = o.train_moments(x)
    np.testing.assert_allclose(out_t, reference["<output>"], atol=1e-5)
    np.testing.assert_allclose(out_o, reference["<output>"], atol=1e-4)
    np.testing.assert_allclose(tr_t, train_reference["<output>"], atol=1e-5)
    np.testing.assert_allclose(tr_o, train_reference["<output>"], atol=1e-4)
    for name_t, name_o in zip(t.layers, o.layers):
        assert_moments(mt[name_t], reference[name_t], rtol=1e-6)
        assert_moments(mo[name_o], reference[name_t], rtol=1e-4)
        assert_moments(tmt[name_t], train_reference[name_t], rtol=1e-6)
        assert_moments(tmo[name_o], train_reference[name_t], rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("rank", [2, 4])
def test_variance_accurate_at_mean_1e3_std(backend, rank, tmp_path):
    """The issue's requirement, end to end: relative variance error < 1e-6 when mean/std = 1e3
    (BN directly on the input, so the statistics are those of the data itself)."""
    model = (nn.BatchNorm1d(4) if rank == 2 else nn.BatchNorm2d(4)).eval()
    shape = (64, 4) if rank == 2 else (16, 4, 8, 8)
    x = (1e3 + np.random.default_rng(rank).standard_normal(shape)).astype(np.float32)
    if backend == "torch":
        source = TorchModuleSource(model, path=None, format="module")
    else:
        source = OnnxSource.load(export_onnx(model, torch.from_numpy(x[:2]), tmp_path / "bn.onnx"))
    with source.runner() as runner:
        _, moments = runner.moments(x)
    (m,) = moments.values()
    _, mean, var = reference_moments(x.astype(np.float64))
    assert np.max(np.abs(m.var / var - 1)) < 1e-6
    assert np.max(np.abs(m.mean - mean) / np.sqrt(var)) < 1e-3


def test_channels_last_activations(digits_x, digits_eager):
    """Non-contiguous BN inputs (channels-last convolutions) are observed as precisely."""
    model = copy.deepcopy(digits_eager).to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert not model.conv1(torch.from_numpy(digits_x)).is_contiguous()
    reference = bn_inputs(model, digits_x)
    with TorchModuleSource(model, path=None, format="module").runner() as runner:
        out, moments = runner.moments(digits_x)
    np.testing.assert_allclose(out, reference["<output>"], atol=1e-5)
    for name in ("bn1", "bn2", "bn3"):
        assert_moments(moments[name], reference[name], rtol=1e-6)


# ----------------------------------------------------------------- functional / frozen BN


class FunctionalBN(nn.Module):
    """conv -> F.batch_norm with the module's own buffers; a second call always in training mode
    with running statistics (it would update them in place if run as written)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.register_buffer("rm", torch.randn(3))
        self.register_buffer("rv", torch.rand(3) + 0.5)
        self.w = nn.Parameter(torch.rand(3) + 0.5)
        self.b = nn.Parameter(torch.randn(3))
        self.register_buffer("rm2", torch.zeros(3))
        self.register_buffer("rv2", torch.ones(3))

    def forward(self, x):
        h = F.batch_norm(self.conv(x), self.rm, self.rv, self.w, self.b, False, 0.1, 1e-5)
        h = F.batch_norm(torch.relu(h), self.rm2, self.rv2, None, None, True, 0.1, 1e-5)
        return h.mean(dim=(2, 3))


def test_functional_batch_norm_is_observed_and_never_mutates(tmp_path):
    torch.manual_seed(1)
    model = FunctionalBN().eval()
    x = np.random.default_rng(1).normal(size=(8, 2, 5, 5)).astype(np.float32)
    with torch.no_grad():
        conv_out = model.conv(torch.from_numpy(x))
        first_bn = F.batch_norm(conv_out, model.rm, model.rv, model.w, model.b, False, 0.1, 1e-5)
        second_in = torch.relu(first_bn).double().numpy()
        expected = F.batch_norm(torch.relu(first_bn), None, None, None, None, True, 0.0, 1e-5)
        batch_first = F.batch_norm(conv_out, None, None, model.w, model.b, True, 0.0, 1e-5)
        expected_train = F.batch_norm(torch.relu(batch_first), None, None, None, None, True, 0.0, 1e-5)
    source = TorchModuleSource(model, path=None, format="module")
    layers = source.bn_layers()
    assert [layer.kind for layer in layers] == ["functional batch_norm"] * 2
    before = state_of(source)
    with source.runner() as runner:
        assert runner.layers == [layer.name for layer in layers]
        out, moments = runner.moments(x)
        train_out = runner.forward(x, bn="train")
    assert_same_state(before, state_of(source))  # the training=True call updated nothing
    first, second = (moments[layer.name] for layer in layers)
    assert_moments(first, conv_out.double().numpy(), rtol=1e-6)
    assert_moments(second, second_in, rtol=1e-6)
    np.testing.assert_allclose(out, expected.mean(dim=(2, 3)).numpy(), atol=1e-5)
    np.testing.assert_allclose(train_out, expected_train.mean(dim=(2, 3)).numpy(), atol=1e-5)


class FrozenBN(nn.Module):
    """torchvision-style frozen BN: stored statistics applied with plain arithmetic."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.rand(c) + 0.5)
        self.register_buffer("bias", torch.randn(c))
        self.register_buffer("running_mean", torch.randn(c))
        self.register_buffer("running_var", torch.rand(c) + 0.5)

    def forward(self, x):
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)


class WithFrozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.frozen = FrozenBN(4)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(torch.relu(self.frozen(self.conv(x)))).mean(dim=(2, 3))


@pytest.fixture
def with_frozen():
    torch.manual_seed(2)
    return randomise_bn(WithFrozen(), seed=2)


@pytest.mark.parametrize("flavour", ["module", "export"])
def test_frozen_bn_is_observed_and_keeps_its_statistics_in_train_mode(flavour, with_frozen):
    x = np.random.default_rng(2).normal(size=(6, 2, 6, 6)).astype(np.float32)
    reference = bn_inputs(with_frozen, x)
    train_reference = bn_inputs(with_frozen, x, train=True)  # a frozen BN has no train mode
    if flavour == "export":
        source = ExportSource(torch.export.export(with_frozen, (torch.from_numpy(x),)), path=None)
    else:
        source = TorchModuleSource(with_frozen, path=None, format="module")
    with source.runner() as runner:
        assert set(runner.layers) == {"frozen", "bn"} and runner.unhookable == {}
        assert set(runner.frozen) == {"frozen"}
        out, moments = runner.moments(x)
        train_out, train_moments = runner.train_moments(x)
    np.testing.assert_allclose(out, reference["<output>"], atol=1e-5)
    np.testing.assert_allclose(train_out, train_reference["<output>"], atol=1e-5)
    for name in ("frozen", "bn"):
        assert_moments(moments[name], reference[name], rtol=1e-6)
        assert_moments(train_moments[name], train_reference[name], rtol=1e-6)


class FrozenBatchNormCall(nn.Module):
    """detectron2-style frozen BN: ``F.batch_norm`` with ``training=False`` hard-wired."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.rand(c) + 0.5)
        self.register_buffer("bias", torch.randn(c))
        self.register_buffer("running_mean", torch.randn(c))
        self.register_buffer("running_var", torch.rand(c) + 0.5)

    def forward(self, x):
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, 1e-5
        )


class WithFrozenCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.frozen = FrozenBatchNormCall(4)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(torch.relu(self.frozen(self.conv(x)))).mean(dim=(2, 3))


@pytest.mark.parametrize("flavour", ["module", "torchscript", "export"])
def test_frozen_bn_calling_batch_norm_stays_frozen_in_train_mode(flavour):
    torch.manual_seed(3)
    model = randomise_bn(WithFrozenCall(), seed=3)
    x = np.random.default_rng(3).normal(size=(6, 2, 6, 6)).astype(np.float32)
    reference = bn_inputs(model, x)
    train_reference = bn_inputs(model, x, train=True)  # the frozen call ignores train mode
    if flavour == "export":
        source = ExportSource(torch.export.export(model, (torch.from_numpy(x),)), path=None)
    else:
        module = torch.jit.script(model) if flavour == "torchscript" else model
        source = TorchModuleSource(module, path=None, format=flavour)
    with source.runner() as runner:
        assert set(runner.layers) == {"frozen", "bn"} and set(runner.frozen) == {"frozen"}
        out, moments = runner.moments(x)
        train_out, train_moments = runner.train_moments(x)
    np.testing.assert_allclose(out, reference["<output>"], atol=1e-5)
    np.testing.assert_allclose(train_out, train_reference["<output>"], atol=1e-5)
    for name in ("frozen", "bn"):
        assert_moments(moments[name], reference[name], rtol=1e-6)  # counted once
        assert_moments(train_moments[name], train_reference[name], rtol=1e-6)


def test_torchscript_frozen_bn_written_as_arithmetic_is_unhookable(with_frozen):
    x = np.random.default_rng(3).normal(size=(6, 2, 6, 6)).astype(np.float32)
    reference = bn_inputs(with_frozen, x)
    source = TorchModuleSource(torch.jit.script(with_frozen), path=None, format="torchscript")
    with source.runner() as runner:
        assert runner.layers == ["bn"]
        assert "TorchScript" in runner.unhookable["frozen"]
        out, moments = runner.moments(x)
    assert list(moments) == ["bn"]
    np.testing.assert_allclose(out, reference["<output>"], atol=1e-5)
    assert_moments(moments["bn"], reference["bn"], rtol=1e-6)


def test_traced_torchscript_is_observed(digits_x, digits_eager):
    traced = torch.jit.trace(copy.deepcopy(digits_eager).eval(), torch.from_numpy(digits_x[:2]))
    reference = bn_inputs(digits_eager, digits_x)
    source = TorchModuleSource(traced, path=None, format="torchscript")
    with source.runner() as runner:
        _, moments = runner.moments(digits_x)
        for _ in range(3):  # the profiling executor re-optimises after a few runs
            _, again = runner.moments(digits_x)
    for name in ("bn1", "bn2", "bn3"):
        assert_moments(moments[name], reference[name], rtol=1e-6)
        np.testing.assert_array_equal(again[name].m2, moments[name].m2)


# ----------------------------------------------------------------- selection, specs, errors


def test_layer_selection(digits_x):
    source = load_digits("onnx")
    name = source.bn_layers()[1].name
    with source.runner(layers=[name]) as runner:
        assert runner.layers == [name]
        _, moments = runner.moments(digits_x)
        assert list(moments) == [name]
        train_out = runner.forward(digits_x[:8], bn="train")
    with load_digits("onnx").runner() as everything:
        np.testing.assert_array_equal(everything.forward(digits_x[:8], bn="train"), train_out)
    with pytest.raises(UsageError, match="no BN layer named 'nope'"):
        load_digits("eager").runner(layers=["bn1", "nope"])
    with load_digits("eager").runner(layers=["bn3"]) as runner:
        _, moments = runner.moments(digits_x)
    assert list(moments) == ["bn3"]


def test_input_specs():
    assert load_digits("onnx").input_spec().shape == (1, 8, 8)
    assert load_digits("export").input_spec().shape == (1, 8, 8)
    eager = load_digits("eager").input_spec()
    assert eager.shape == (1, None, None) and eager.dtype == "float32" and eager.batch is None
    assert load_digits("torchscript").input_spec().shape == (1, None, None)
    assert load_model(SAMPLES / "cancer_mlp.onnx").input_spec().shape == (30,)
    assert load_model(SAMPLES / "cancer_mlp.ts").input_spec().shape is None


def test_a_state_dict_without_arch_cannot_run():
    source = load_model(SAMPLES / "digits_cnn.pt")
    for call in (source.runner, source.input_spec):
        with pytest.raises(UsageError, match="--arch"):
            call()


@pytest.mark.parametrize("kind", ["onnx", "export", "eager"])
def test_wrong_data_shape_is_a_data_error(kind, digits_x):
    with load_digits(kind).runner() as runner:
        with pytest.raises(DataError, match="shape"):
            runner.moments(np.zeros((4, 3, 8, 8), np.float32))
        with pytest.raises(DataError):
            runner.moments(np.zeros((4, 1, 5, 5), np.float32) if kind == "eager" else digits_x[:0])


def test_fixed_batch_models_run_in_chunks(digits_x, digits_eager):
    """A program exported with a static batch of 4 takes batches of 4k in chunks (moments are
    merged exactly); other sizes and train passes of another size are refused clearly."""
    program = torch.export.export(copy.deepcopy(digits_eager).eval(), (torch.from_numpy(digits_x[:4]),))
    reference = bn_inputs(digits_eager, digits_x[:12])
    with ExportSource(program, path=None).runner() as runner:
        assert runner.input_spec.batch == 4
        out, moments = runner.moments(digits_x[:12])
        np.testing.assert_allclose(out, reference["<output>"], atol=1e-5)
        for name in ("bn1", "bn2", "bn3"):
            assert_moments(moments[name], reference[name], rtol=1e-6)
        with pytest.raises(DataError, match="--batch-size 4"):
            runner.moments(digits_x[:6])
        with pytest.raises(DataError, match="--train-batch-size 4"):
            runner.train_moments(digits_x[:8])
        assert runner.train_moments(digits_x[:4])[0].shape == (4, 10)


@pytest.mark.parametrize("offset", [0.0, 3.0, 1e3])
def test_torch_channel_moments_exact_at_any_offset_and_zero_for_a_constant_channel(offset):
    from bncheck.backends.torch.runner import channel_moments

    rng = np.random.default_rng(11)
    x = (offset + rng.standard_normal((16, 5, 12, 12))).astype(np.float32)
    x[:, 4] = 2.5
    _, mean, var = reference_moments(x.astype(np.float64))
    count, m, m2 = channel_moments(torch.from_numpy(x))
    got = Moments.from_batch(count, m.double().numpy(), m2.double().numpy())
    np.testing.assert_allclose(got.var[:4], var[:4], rtol=1e-6)
    np.testing.assert_allclose(got.mean, mean, rtol=1e-6, atol=1e-6)
    assert got.var[4] == 0.0 and got.mean[4] == 2.5

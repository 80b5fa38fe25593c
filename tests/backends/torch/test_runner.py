"""TorchRunner: the moments of every BN input of eager, TorchScript and torch.export models,
checked against plain torch hooks in float64; train passes never touch stored statistics."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from support.runner_checks import (  # noqa: E402
    SAMPLES,
    assert_moments,
    assert_same_state,
    bn_inputs,
    load_digits,
    randomise_bn,
    reference_moments,
    state_of,
)
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from bncheck.backends import load_model  # noqa: E402
from bncheck.backends.torch.export_source import ExportSource  # noqa: E402
from bncheck.backends.torch.runner import channel_moments  # noqa: E402
from bncheck.backends.torch.source import TorchModuleSource  # noqa: E402
from bncheck.errors import DataError, UsageError  # noqa: E402
from bncheck.numerics.moments import Moments  # noqa: E402


def test_runner_restores_the_train_flag_it_found(digits_x):
    source = load_digits("eager")
    source.module.train()
    before = state_of(source)
    with source.runner() as runner:
        runner.moments(digits_x)  # runs in eval mode: no running-statistics update
    assert source.module.training and source.module.bn1.training
    assert_same_state(before, state_of(source))


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


class ViewsItsMaps(nn.Module):
    """conv -> BN -> ``x.view(N, -1)`` of a 4x4 map: a view that only a contiguous map allows."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(64, 2)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.head(h.view(h.shape[0], -1))


def test_conv_models_run_channels_last_and_keep_float64_precision():
    """4-D inputs go in channels-last (oneDNN's faster layout); the BN inputs are read where
    they lie, and their moments match float64 hooks on the model run as given."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4)).eval()
    with torch.no_grad():
        model[0].bias += 500.0  # mean/std ~1e3 at the first BN input
    x = np.random.default_rng(3).normal(size=(6, 3, 20, 20)).astype(np.float32)
    reference = bn_inputs(model, x)
    seen = []
    model[1].register_forward_pre_hook(lambda mod, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    with TorchModuleSource(model, path=None, format="module").runner() as runner:
        out, moments = runner.moments(x)
    assert seen and all(seen)
    np.testing.assert_allclose(out, reference["<output>"], rtol=1e-4, atol=1e-4)
    for name in ("1", "4"):
        assert_moments(moments[name], reference[name], rtol=1e-6)


def test_a_model_that_needs_contiguous_maps_falls_back_and_stays_exact():
    torch.manual_seed(0)
    model = ViewsItsMaps().eval()
    x = np.random.default_rng(4).normal(size=(5, 3, 4, 4)).astype(np.float32)
    with pytest.raises(RuntimeError, match="view"):  # what channels-last alone would do
        with torch.no_grad():
            model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))
    reference = bn_inputs(model, x)
    with TorchModuleSource(model, path=None, format="module").runner() as runner:
        for _ in range(2):  # the fallback is for good: the second batch runs contiguous at once
            out, samples = runner.sample_moments(x)[0::2]
            assert set(samples) == {"bn"} and samples["bn"] is not None and len(samples["bn"]) == 5
        moments = runner.moments(x)[1]
        assert runner._channels_last is False
    np.testing.assert_allclose(out, reference["<output>"], rtol=1e-5, atol=1e-5)
    assert_moments(moments["bn"], reference["bn"], rtol=1e-6)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("shape", [(3, 5, 7, 7), (8, 16, 13, 17), (2, 3, 96, 96)])
def test_torch_per_sample_moments_of_either_layout_within_1e6_of_float64(layout, shape):
    from bncheck.backends.torch.moments import channel_moments as moments_of

    rng = np.random.default_rng(sum(shape))
    x = rng.normal(1e3, 1.0, shape).astype(np.float32)
    t = torch.from_numpy(x)
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    count, mean, m2, sample_means, squares = moments_of(t, per_sample=True)
    x64 = x.astype(np.float64)
    per_mean = x64.mean((2, 3))
    per_m2 = np.square(x64 - per_mean[:, :, None, None]).sum((2, 3))
    np.testing.assert_allclose(squares.numpy(), per_m2, rtol=1e-6)
    np.testing.assert_allclose(sample_means.numpy(), per_mean, rtol=1e-9)
    np.testing.assert_allclose(m2.numpy() / count, x64.var((0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(mean.numpy(), x64.mean((0, 2, 3)), rtol=1e-9)


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


class FrozenBatchNormCall(FrozenBN):
    """detectron2-style frozen BN: ``F.batch_norm`` with ``training=False`` hard-wired."""

    def forward(self, x):
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, 1e-5
        )


class WithFrozen(nn.Module):
    def __init__(self, frozen: type[FrozenBN] = FrozenBN) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.frozen = frozen(4)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(torch.relu(self.frozen(self.conv(x)))).mean(dim=(2, 3))


@pytest.fixture
def with_frozen():
    torch.manual_seed(2)
    return randomise_bn(WithFrozen(), seed=2)


#: the frozen BN, the form of the model it is observed in, the seed of its statistics and
#: inputs (TorchScript of FrozenBN's plain arithmetic is unhookable: the test after these)
FROZEN = [(FrozenBN, "module", 2), (FrozenBN, "export", 2), (FrozenBatchNormCall, "module", 3),
          (FrozenBatchNormCall, "torchscript", 3), (FrozenBatchNormCall, "export", 3)]  # fmt: skip


@pytest.mark.parametrize(("frozen", "flavour", "seed"), FROZEN, ids=[f"{f.__name__}-{flavour}" for f, flavour, _ in FROZEN])
def test_frozen_bn_is_observed_and_keeps_its_statistics_in_train_mode(frozen, flavour, seed):
    torch.manual_seed(seed)
    model = randomise_bn(WithFrozen(frozen), seed=seed)
    x = np.random.default_rng(seed).normal(size=(6, 2, 6, 6)).astype(np.float32)
    reference = bn_inputs(model, x)
    train_reference = bn_inputs(model, x, train=True)  # a frozen BN has no train mode
    if flavour == "export":
        source = ExportSource(torch.export.export(model, (torch.from_numpy(x),)), path=None)
    else:
        module = torch.jit.script(model) if flavour == "torchscript" else model
        source = TorchModuleSource(module, path=None, format=flavour)
    with source.runner() as runner:
        assert set(runner.layers) == {"frozen", "bn"} and runner.unhookable == {}
        assert set(runner.frozen) == {"frozen"}
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


def test_a_state_dict_without_arch_cannot_run():
    source = load_model(SAMPLES / "digits_cnn.pt")
    for call in (source.runner, source.input_spec):
        with pytest.raises(UsageError, match="--arch"):
            call()


def test_fixed_batch_models_run_in_chunks(digits_x, digits_eager):
    """A program exported with a static batch of 4 takes batches of 4k in chunks (moments are
    merged exactly), and other sizes with the last part tiled to 4 (6 samples: 4, then 2 run
    twice; exact); train passes of another size are refused clearly."""
    program = torch.export.export(copy.deepcopy(digits_eager).eval(), (torch.from_numpy(digits_x[:4]),))
    reference = bn_inputs(digits_eager, digits_x[:12])
    with ExportSource(program, path=None).runner() as runner:
        assert runner.input_spec.batch == 4
        out, moments = runner.moments(digits_x[:12])
        np.testing.assert_allclose(out, reference["<output>"], atol=1e-5)
        for name in ("bn1", "bn2", "bn3"):
            assert_moments(moments[name], reference[name], rtol=1e-6)
        six = bn_inputs(digits_eager, digits_x[:6])
        out, moments = runner.moments(digits_x[:6])
        np.testing.assert_allclose(out, six["<output>"], atol=1e-5)
        # the tiled rows are the model's float32 values in other rows of a batch (1e-7 apart):
        # the BatchNorm1d's variance of 6 single values moves by 2e-6 with them
        for name, rtol in (("bn1", 1e-6), ("bn2", 1e-6), ("bn3", 1e-5)):
            assert_moments(moments[name], six[name], rtol=rtol)
        with pytest.raises(DataError, match="batches of exactly 4"):
            runner.train_moments(digits_x[:8])
        assert runner.train_moments(digits_x[:4])[0].shape == (4, 10)


@pytest.mark.parametrize("offset", [0.0, 3.0, 1e3])
def test_torch_channel_moments_exact_at_any_offset_and_zero_for_a_constant_channel(offset):
    rng = np.random.default_rng(11)
    x = (offset + rng.standard_normal((16, 5, 12, 12))).astype(np.float32)
    x[:, 4] = 2.5
    _, mean, var = reference_moments(x.astype(np.float64))
    count, m, m2 = channel_moments(torch.from_numpy(x))
    got = Moments.from_batch(count, m.double().numpy(), m2.double().numpy())
    np.testing.assert_allclose(got.var[:4], var[:4], rtol=1e-6)
    np.testing.assert_allclose(got.mean, mean, rtol=1e-6, atol=1e-6)
    assert got.var[4] == 0.0 and got.mean[4] == 2.5


@pytest.mark.parametrize("size", [256, 1024])
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_torch_channel_moments_of_large_maps_within_1e6_of_float64(size, offset):
    """One float32 norm over a 1024x1024 map is 2e-5 off; the blocked norm keeps 1e-6."""
    rng = np.random.default_rng(size)
    x = rng.normal(offset, 1.0, (2, 2, size, size)).astype(np.float32)
    _, mean, var = reference_moments(x.astype(np.float64))
    count, m, m2 = channel_moments(torch.from_numpy(x))
    got = Moments.from_batch(count, m.double().numpy(), m2.double().numpy())
    np.testing.assert_allclose(got.var, var, rtol=1e-6, atol=0)
    np.testing.assert_allclose(got.mean, mean, rtol=2.0**-22, atol=1e-6)  # a float32 mean


def test_first_layers_runner_never_runs_the_network_beyond_them():
    from support.rgb_cnn import RgbCnn

    from bncheck.backends.torch.backend import TorchBackend

    model = RgbCnn().eval()
    calls = []
    model.conv3.register_forward_hook(lambda *args: calls.append("conv3"))
    model.head.register_forward_hook(lambda *args: calls.append("head"))
    source = TorchBackend().adopt(model)
    x = np.random.default_rng(0).normal(0, 1, (6, 3, 24, 24)).astype(np.float32)
    with TorchBackend().first_layers_runner(source, ["bn1", "bn2"]) as part:
        none, first = part.moments(x)
    assert none is None and calls == [] and set(first) == {"bn1", "bn2"}
    with source.runner() as full:
        _, everything = full.moments(x)
    assert calls == ["conv3", "head"]
    for name in ("bn1", "bn2"):
        np.testing.assert_allclose(first[name].mean, everything[name].mean, rtol=1e-12)
        np.testing.assert_allclose(first[name].var, everything[name].var, rtol=1e-12)

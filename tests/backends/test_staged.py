"""Models run one segment at a time (``Backend.staged``) against plain torch hooks: with the
stored statistics, the inputs every level's BN layers get through the segments are those the
whole model gives them in eval mode, for the torch.fx and the ONNX cut; and the models that
cannot be cut say why."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bncheck.backends import load_model
from bncheck.backends.load import as_source, backend_for
from tests.support.runner_checks import assert_moments, bn_inputs


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.down(x)
        return self.relu(out)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.layers = nn.Sequential(Block(8, 8, 1), Block(8, 16, 2))
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


class SharedInPlace(nn.Module):
    """A value both a BN layer and an in-place op read: the cut would change what it holds."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn1 = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4)

    def forward(self, x):
        h = self.conv(x)
        a = self.bn1(h)
        h.mul_(2.0)
        return self.bn2(h) + a


class WithFlag(Net):
    """``forward(x, embed=False)`` with a Python ``if`` on the flag, as torchcrepe's CREPE has:
    torch.fx traces it only with the flag fixed, and adds a check of the flag the cut drops."""

    def forward(self, x, embed=False):
        h = self.layers(self.stem(x))
        if embed:
            return h
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def _net():
    torch.manual_seed(0)
    model = Net()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture
def net_files(tmp_path):
    model = _net()
    x = np.random.default_rng(0).normal(size=(6, 3, 8, 8)).astype(np.float32)
    onnx_path = tmp_path / "net.onnx"
    torch.onnx.export(
        model, (torch.from_numpy(x[:2]),), str(onnx_path), dynamo=False, do_constant_folding=False,
        training=torch.onnx.TrainingMode.EVAL, input_names=["input"], dynamic_axes={"input": {0: "batch"}},
    )  # fmt: skip
    return model, x, onnx_path


@pytest.mark.parametrize("family", ["torch", "onnx"])
def test_every_level_sees_what_the_whole_model_gives_it(net_files, family):
    model, x, onnx_path = net_files
    source = as_source(model) if family == "torch" else load_model(onnx_path)
    layers = [la.name for la in source.bn_layers()]
    staged, why = backend_for(source).staged(source, layers)
    assert staged is not None, why
    # stem BN, then per block: bn1 with the downsample BN beside it, bn2: five levels
    assert staged.plan.depth == 5 and len(staged.plan.levels[1]) == 2
    reference = bn_inputs(model, x)
    order = list(reference)  # module order; ONNX node names map to it by position
    torch_names = {name: order[i] for i, name in enumerate(layers)} if family == "onnx" else {n: n for n in layers}
    with staged:
        staged.set_statistics({n: (la.running_mean, la.running_var) for la in source.bn_layers() for n in [la.name]})
        frontier = staged.start(x)
        for level in range(1, staged.plan.depth + 1):
            for name, m in staged.moments(level, frontier).items():
                assert_moments(m, reference[torch_names[name]], rtol=1e-5)
            assert set(staged.moments(level, frontier)) == set(staged.plan.levels[level - 1])
            if level < staged.plan.depth:
                frontier = staged.advance(level, frontier)
    assert sorted(n for lv in staged.plan.levels for n in lv) == sorted(layers)


@pytest.mark.parametrize("family", ["torch", "onnx"])
def test_the_deepest_frontier_gives_the_output_of_the_model_carrying_the_statistics_set(net_files, family):
    """``output`` runs the deepest segment and all after it: the whole model's output with the
    statistics set on every level, as the backend's runner gives it for a copy of the model
    carrying those statistics (BN301 takes its outputs from here, with no eval pass)."""
    model, x, onnx_path = net_files
    source = as_source(model) if family == "torch" else load_model(onnx_path)
    layers = [la.name for la in source.bn_layers()]
    rng = np.random.default_rng(1)
    stats = {la.name: (np.asarray(la.running_mean) + rng.normal(0, 0.2, la.num_features), np.asarray(la.running_var) * 1.5) for la in source.bn_layers()}
    staged, why = backend_for(source).staged(source, layers)
    assert staged is not None, why
    with staged:
        staged.set_statistics(stats)
        frontier = staged.start(x)
        for level in range(1, staged.plan.depth):
            frontier = staged.advance(level, frontier)
        got = staged.output(frontier)
    with backend_for(source).with_statistics(source, stats).runner(layers=[]) as runner:
        expected = runner.forward(x)
    assert got.shape == expected.shape == (6, 5) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    stored = model(torch.from_numpy(x)).detach().numpy()
    assert np.abs(got - stored).max() > 1e-2  # the statistics set are what the output carries


def test_a_model_with_a_defaulted_flag_is_cut_on_its_input_alone():
    model = WithFlag()
    model.load_state_dict(_net().state_dict())
    model.eval()
    source = as_source(model)
    layers = [la.name for la in source.bn_layers()]
    staged, why = backend_for(source).staged(source, layers)
    assert staged is not None, why
    assert staged.plan.depth == 5
    x = np.random.default_rng(1).normal(size=(4, 3, 8, 8)).astype(np.float32)
    reference = bn_inputs(model, x)
    with staged:
        staged.set_statistics({la.name: (la.running_mean, la.running_var) for la in source.bn_layers()})
        frontier = staged.start(x)
        for level in range(1, staged.plan.depth + 1):
            for name, m in staged.moments(level, frontier).items():
                assert_moments(m, reference[name], rtol=1e-5)
            frontier = staged.advance(level, frontier) if level < staged.plan.depth else frontier
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(staged.output(frontier), expected, rtol=1e-5, atol=1e-6)


def test_models_that_cannot_be_cut_say_why(tmp_path):
    shared = as_source(SharedInPlace().eval())
    staged, why = backend_for(shared).staged(shared, [la.name for la in shared.bn_layers()])
    assert staged is None and "in place" in why
    path = tmp_path / "net.ts"
    torch.jit.script(_net()).save(str(path))
    script = load_model(path)
    staged, why = backend_for(script).staged(script, [la.name for la in script.bn_layers()])
    assert staged is None and "torchscript" in why

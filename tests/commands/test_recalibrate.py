"""bncheck.recalibrate against trusted references: torch.optim.swa_utils.update_bn (cumulative),
torch's own train-mode momentum updates (ema), and eval-mode drift of the written model (exact)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import bncheck
from bncheck.backends.torch.statistics import exact_counter
from bncheck.commands.recalibrate import RecalibrateOptions
from bncheck.data import DataOptions

ARCH_SOURCE = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(Block(8), Block(8), Block(8))
        self.fc = nn.Linear(8, 16)
        self.bn_fc = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = self.blocks(x).mean((2, 3))
        return self.head(torch.relu(self.bn_fc(self.fc(x))))


def net():
    torch.manual_seed(0)
    model = Net()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()
'''


@pytest.fixture
def setup(tmp_path):
    arch = tmp_path / "recal_arch.py"
    arch.write_text(ARCH_SOURCE)
    spec = f"{arch}:net"
    from bncheck.backends.torch.loading import build_from_arch

    model = build_from_arch(spec)
    state = tmp_path / "model.pt"
    torch.save(model.state_dict(), state)
    rng = np.random.default_rng(1)
    x = (rng.normal(0.5, 1.5, size=(128, 3, 8, 8))).astype(np.float32)
    data = tmp_path / "data.npy"
    np.save(data, x)
    return model, spec, state, x, data, tmp_path


def _opts(**kw):
    kw.setdefault("data_options", DataOptions(workers=0))
    kw.setdefault("holdout", 0.0)  # every sample in the estimate, as the references read them
    return RecalibrateOptions(**kw)


def _load(path, spec):
    from bncheck.backends.torch.loading import build_from_arch

    model = build_from_arch(spec)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


def _bn(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def test_cumulative_matches_swa_utils_update_bn(setup):
    model, spec, state, x, data, tmp = setup
    out = tmp / "cumulative.pt"
    bncheck.recalibrate(state, data, out, arch=spec, options=_opts(method="cumulative", batch_size=32))
    reference = copy.deepcopy(model)
    loader = [torch.from_numpy(x[i : i + 32]) for i in range(0, len(x), 32)]
    torch.optim.swa_utils.update_bn(loader, reference)
    ours = _load(out, spec)
    for name, bn in _bn(reference).items():
        mine = _bn(ours)[name]
        np.testing.assert_allclose(mine.running_mean.numpy(), bn.running_mean.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(mine.running_var.numpy(), bn.running_var.numpy(), rtol=1e-5)
        # update_bn leaves the batch count (4); an EMA layer (momentum 0.1) never reads its
        # counter, and bncheck's says the exact statistics hold no initial value (exact_counter)
        assert int(bn.num_batches_tracked) == 4 and int(mine.num_batches_tracked) == exact_counter(4, bn.momentum) == 132


def test_ema_matches_torch_train_mode_updates(setup):
    model, spec, state, x, data, tmp = setup
    out = tmp / "ema.pt"
    bncheck.recalibrate(state, data, out, arch=spec, options=_opts(method="ema", batch_size=32))
    reference = copy.deepcopy(model).train()
    with torch.no_grad():
        for i in range(0, len(x), 32):
            reference(torch.from_numpy(x[i : i + 32]))
    ours = _load(out, spec)
    for name, bn in _bn(reference).items():
        mine = _bn(ours)[name]
        np.testing.assert_allclose(mine.running_mean.numpy(), bn.running_mean.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(mine.running_var.numpy(), bn.running_var.numpy(), rtol=1e-5)


def test_exact_leaves_no_drift_in_eval_mode(setup):
    model, spec, state, x, data, tmp = setup
    out = tmp / "exact.pt"
    report = bncheck.recalibrate(state, data, out, arch=spec, options=_opts(method="exact"))
    rc = report.result.summary
    # level by level, then one pass of the written model that confirms it
    assert rc["estimation_passes"] == 2 and [p["mode"] for p in rc["passes"]] == ["staged", "eval"]
    # an independent check with plain hooks on the written model, in float64
    ours = _load(out, spec).eval()
    seen = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, a, n=n: seen.setdefault(n, []).append(a[0].double()))
        for n, m in _bn(ours).items()
    ]
    with torch.no_grad():
        ours(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    for name, bn in _bn(ours).items():
        act = torch.cat(seen[name]).transpose(0, 1).reshape(bn.num_features, -1)
        mu, var = act.mean(1), act.var(1, unbiased=False)
        z = (mu - bn.running_mean.double()) / torch.sqrt(bn.running_var.double() + bn.eps)
        r = torch.log((var + bn.eps) / (bn.running_var.double() + bn.eps))
        assert z.abs().mean() < 0.01 and r.abs().mean() < 0.01, name
    for layer in report.layers:
        after = report.result.layers[layer.name].after
        assert after["mean_shift"]["mean"] < 0.01
        assert after["var_log_ratio"]["mean"] < 0.01


def test_unbiased_variance_differs_by_n_over_n_minus_1(setup):
    model, spec, state, x, data, tmp = setup
    pop, unb = tmp / "pop.pt", tmp / "unb.pt"
    bncheck.recalibrate(state, data, pop, arch=spec, options=_opts(verify=False))
    bncheck.recalibrate(state, data, unb, arch=spec, options=_opts(variance="unbiased", verify=False))
    a, b = _bn(_load(pop, spec))["bn_fc"], _bn(_load(unb, spec))["bn_fc"]
    # 128 samples per channel here; the conv layers upstream see 128*64 elements, so their own
    # n/(n-1) (1.2e-4) reaches bn_fc's input too: hence rtol 5e-4, against a 7.9e-3 effect.
    np.testing.assert_allclose(b.running_var.numpy(), a.running_var.numpy() * 128 / 127, rtol=5e-4)
    assert not np.allclose(b.running_var.numpy(), a.running_var.numpy(), rtol=5e-3)


def test_layers_option_only_touches_named_layers(setup):
    model, spec, state, x, data, tmp = setup
    out = tmp / "some.pt"
    bncheck.recalibrate(state, data, out, arch=spec, options=_opts(layers=["bn0"], verify=False))
    ours = _load(out, spec)
    assert not torch.equal(_bn(ours)["bn0"].running_mean, _bn(model)["bn0"].running_mean)
    for name in ("blocks.0.bn1", "bn_fc"):
        assert torch.equal(_bn(ours)[name].running_var, _bn(model)[name].running_var)


def test_onnx_and_torch_recalibration_agree(setup):
    model, spec, state, x, data, tmp = setup
    onnx_path = tmp / "model.onnx"
    torch.onnx.export(
        model, (torch.from_numpy(x[:2]),), str(onnx_path), dynamo=False, do_constant_folding=False,
        training=torch.onnx.TrainingMode.EVAL, input_names=["input"], dynamic_axes={"input": {0: "batch"}},
    )
    bncheck.recalibrate(state, data, tmp / "t.pt", arch=spec, options=_opts(verify=False))
    bncheck.recalibrate(onnx_path, data, tmp / "o.onnx", options=_opts(verify=False))
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(tmp / "o.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    bns = [n for n in graph.node if n.op_type == "BatchNormalization"]
    torch_bns = list(_bn(_load(tmp / "t.pt", spec)).values())
    assert len(bns) == len(torch_bns)
    for node, bn in zip(bns, torch_bns, strict=True):
        np.testing.assert_allclose(inits[node.input[3]], bn.running_mean.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(inits[node.input[4]], bn.running_var.numpy(), rtol=1e-4)

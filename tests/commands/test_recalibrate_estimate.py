"""The estimators' options against trusted references, on both backends: ``--prior`` against
the blend of torch's update_bn with the stored statistics, ``exact`` against what plain torch
hooks see in the written model (1e-4 per channel), ``--precision`` against data of known
variance."""

from __future__ import annotations

import copy
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import bncheck
from bncheck.commands.recalibrate import RecalibrateOptions
from bncheck.data import DataOptions
from tests.commands.test_recalibrate import _bn, _load, setup  # noqa: F401  (the fixture)


def _opts(**kw):
    kw.setdefault("data_options", DataOptions(workers=0))
    kw.setdefault("holdout", 0.0)
    return RecalibrateOptions(**kw)


def _export(model, x, path):
    torch.onnx.export(
        model, (torch.from_numpy(x[:2]),), str(path), dynamo=False, do_constant_folding=False,
        training=torch.onnx.TrainingMode.EVAL, input_names=["input"], dynamic_axes={"input": {0: "batch"}},
    )  # fmt: skip
    return path


def _onnx_stats(path):
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return [(inits[n.input[3]], inits[n.input[4]]) for n in graph.node if n.op_type == "BatchNormalization"]


def _into(model, stats):
    """``model`` carrying the ONNX file's statistics (BN nodes in module order)."""
    model = copy.deepcopy(model)
    for bn, (mean, var) in zip(_bn(model).values(), stats, strict=True):
        bn.running_mean.copy_(torch.from_numpy(mean))
        bn.running_var.copy_(torch.from_numpy(var))
    return model


def _seen(model, x):
    """Per BN module, the float64 mean and population variance of its input in eval mode."""
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen.setdefault(n, []).append(a[0].double())) for n, m in _bn(model).items()]
    with torch.no_grad():
        model.eval()(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    out = {}
    for name, bn in _bn(model).items():
        act = torch.cat(seen[name]).transpose(0, 1).reshape(bn.num_features, -1)
        out[name] = (act.mean(1).numpy(), act.var(1, unbiased=False).numpy())
    return out


def _worst(model, x, prior=0.0, stored=None):
    """Largest per-channel gap between the written statistics and (the blend of) what the
    written model's layers see: mean in channel standard deviations, variance relative."""
    worst = 0.0
    for name, (mu, var) in _seen(model, x).items():
        bn = _bn(model)[name]
        if prior:
            w = prior / (prior + len(x))
            mu, var = w * stored[name][0] + (1 - w) * mu, w * stored[name][1] + (1 - w) * var
        rm, rv = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
        worst = max(worst, float(np.max(np.abs(rm - mu) / np.sqrt(var + bn.eps))), float(np.max(np.abs(rv - var) / (var + bn.eps))))
    return worst


def test_cumulative_prior_is_the_blend_of_update_bn_and_the_stored_statistics(setup):  # noqa: F811
    model, spec, state, x, data, tmp = setup
    prior = 64.0
    reference = copy.deepcopy(model)
    torch.optim.swa_utils.update_bn([torch.from_numpy(x[i : i + 32]) for i in range(0, len(x), 32)], reference)
    w = prior / (prior + len(x))
    expected = [
        (w * s.running_mean.double() + (1 - w) * r.running_mean.double(), w * s.running_var.double() + (1 - w) * r.running_var.double())
        for s, r in zip(_bn(model).values(), _bn(reference).values(), strict=True)
    ]
    report = bncheck.recalibrate(state, data, tmp / "t.pt", arch=spec, options=_opts(method="cumulative", prior=prior))
    assert report.result.summary["samples"] == len(x) and report.result.summary["prior"] == prior
    onnx_path = _export(model, x, tmp / "m.onnx")
    bncheck.recalibrate(onnx_path, data, tmp / "o.onnx", options=_opts(method="cumulative", prior=prior))
    torch_written = [(bn.running_mean, bn.running_var) for bn in _bn(_load(tmp / "t.pt", spec)).values()]
    for family, written in (("torch", torch_written), ("onnx", _onnx_stats(tmp / "o.onnx"))):
        for (mean, var), (em, ev) in zip(written, expected, strict=True):
            np.testing.assert_allclose(np.asarray(mean, np.float64), em.numpy(), rtol=1e-5, atol=1e-6, err_msg=family)
            np.testing.assert_allclose(np.asarray(var, np.float64), ev.numpy(), rtol=1e-5, err_msg=family)
    # and the blend moved them: not update_bn's own statistics
    assert not np.allclose(torch_written[0][0].numpy(), _bn(reference)["bn0"].running_mean.numpy(), rtol=1e-3)


@pytest.mark.parametrize("prior", [0.0, 200.0])
def test_exact_writes_what_the_written_model_sees_to_1e_4_per_channel(setup, prior):  # noqa: F811
    model, spec, state, x, data, tmp = setup
    stored = {n: (bn.running_mean.double().numpy(), bn.running_var.double().numpy()) for n, bn in _bn(model).items()}
    report = bncheck.recalibrate(state, data, tmp / "t.pt", arch=spec, options=_opts(prior=prior))
    summary = report.result.summary
    assert summary["converged"] and summary["passes"][-1]["movement"] <= 1e-4
    # level by level in one read of DATA (8 levels: a chain of 8 BN layers), then one pass of the written model
    assert summary["passes"][0]["mode"] == "staged" and summary["passes"][0]["levels"] == 8
    assert summary["passes"][0]["data_reads"] == 1 and summary["estimation_passes"] == 2
    assert _worst(_load(tmp / "t.pt", spec), x, prior, stored) <= 1.2e-4
    onnx_path = _export(model, x, tmp / "m.onnx")
    onnx_report = bncheck.recalibrate(onnx_path, data, tmp / "o.onnx", options=_opts(prior=prior))
    assert [p["mode"] for p in onnx_report.result.summary["passes"]] == ["staged", "eval"]
    assert _worst(_into(model, _onnx_stats(tmp / "o.onnx")), x, prior, stored) <= 1.2e-4
    # TorchScript has no torch.fx graph to cut: whole-model passes until the estimate settles,
    # to the same bound; the old stopping rule (mean |z| 1e-3) would have stopped short of it
    script = tmp / "m.ts"
    torch.jit.script(model).save(str(script))
    fixed = bncheck.recalibrate(script, data, tmp / "f.ts", options=_opts(prior=prior))
    assert fixed.result.summary["passes"][0]["mode"] == "train" and any("whole-model passes" in n for n in fixed.notes)
    assert fixed.result.summary["estimation_passes"] > summary["estimation_passes"]
    assert _worst(_scripted(tmp / "f.ts", model), x, prior, stored) <= 1.2e-4
    loose = bncheck.recalibrate(script, data, tmp / "l.ts", options=_opts(prior=prior, tolerance=3e-2))
    assert _worst(_scripted(tmp / "l.ts", model), x, prior, stored) > 1.2e-4
    assert loose.result.summary["estimation_passes"] < fixed.result.summary["estimation_passes"]


def _scripted(path, model):
    """``model`` carrying the statistics of a written TorchScript file."""
    model = copy.deepcopy(model)
    model.load_state_dict(torch.jit.load(str(path)).state_dict())
    return model


@pytest.mark.parametrize("family", ["torch", "onnx"])
def test_exact_with_a_small_cache_reads_data_again_and_writes_the_same(setup, family):  # noqa: F811
    model, spec, state, x, data, tmp = setup
    path, kw = (state, {"arch": spec}) if family == "torch" else (_export(model, x, tmp / "m.onnx"), {})
    suffix = ".pt" if family == "torch" else ".onnx"
    whole = bncheck.recalibrate(path, data, tmp / f"w{suffix}", options=_opts(), **kw)
    # 0.1 MiB keeps one batch of 32 (8 x 8 x 8 floats a sample = 64 KiB): three of four are read again
    small = bncheck.recalibrate(path, data, tmp / f"s{suffix}", options=_opts(cache_mb=0.1), **kw)
    none = bncheck.recalibrate(path, data, tmp / f"n{suffix}", options=_opts(cache_mb=0), **kw)
    assert whole.result.summary["passes"][0]["data_reads"] == 1
    assert small.result.summary["passes"][0]["batches_kept"] == 1
    assert small.result.summary["passes"][0]["cache_peak_bytes"] <= 0.1 * 2**20
    assert none.result.summary["passes"][0]["data_reads"] == 8 and none.result.summary["passes"][0]["cache_peak_bytes"] == 0
    stats = [_stats_of(tmp / f"{tag}{suffix}", spec, family) for tag in "wsn"]
    for other in stats[1:]:
        for (m0, v0), (m1, v1) in zip(stats[0], other, strict=True):
            np.testing.assert_allclose(m1, m0, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(v1, v0, rtol=1e-6)
    assert _worst(_into(model, stats[1]), x) <= 1.2e-4


def _stats_of(path, spec, family):
    if family == "onnx":
        return [(np.asarray(m, np.float64), np.asarray(v, np.float64)) for m, v in _onnx_stats(path)]
    return [(b.running_mean.double().numpy(), b.running_var.double().numpy()) for b in _bn(_load(path, spec)).values()]


PLAIN_ARCH = '''
import torch
from torch import nn


class Plain(nn.Module):
    """BatchNorm1d on the input itself: its statistics are those of the data."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.bn(x))


def plain():
    torch.manual_seed(0)
    return Plain().eval()
'''

MU = np.array([1.0, -2.0, 0.5, 10.0])
SIGMA = np.array([0.5, 2.0, 1.0, 3.0])


@pytest.fixture
def plain(tmp_path):
    arch = tmp_path / "plain_arch.py"
    arch.write_text(PLAIN_ARCH)
    spec = f"{arch}:plain"
    from bncheck.backends.torch.loading import build_from_arch

    model = build_from_arch(spec)
    state = tmp_path / "plain.pt"
    torch.save(model.state_dict(), state)
    x = np.random.default_rng(3).normal(MU, SIGMA, size=(8000, 4)).astype(np.float32)
    data = tmp_path / "plain.npy"
    np.save(data, x)
    return model, spec, state, x, data, tmp_path


@pytest.mark.parametrize("method", ["cumulative", "exact"])
def test_precision_reads_what_normal_theory_needs_and_reaches_it(plain, method):
    model, spec, state, x, data, tmp = plain
    tol = 0.05
    need = 2 * (1.959964 / tol) ** 2  # the variance's chi-square half-width sqrt(2/n) <= tol: 3073 samples
    onnx_path = _export(model, x, tmp / "plain.onnx")
    for family, path, kw, out in (("torch", state, {"arch": spec}, tmp / "p.pt"), ("onnx", onnx_path, {}, tmp / "p.onnx")):
        report = bncheck.recalibrate(path, data, out, options=_opts(method=method, precision=tol, batch_size=64), **kw)
        precision = report.result.summary["precision"]
        assert 0.8 * need <= precision["samples"] <= 1.6 * need, (family, precision)
        assert max(precision["mean"], precision["variance"]) <= tol and precision["confidence"] == 0.95
        stats = _onnx_stats(out) if family == "onnx" else [(b.running_mean.numpy(), b.running_var.numpy()) for b in _bn(_load(out, spec)).values()]
        mean, var = (np.asarray(v, np.float64) for v in stats[0])
        # the truth is known: within the interval (x1.5 for 8 intervals at once, seed fixed)
        assert np.all(np.abs(mean - MU) / SIGMA <= 1.5 * tol), (family, mean)
        # (cumulative writes unbiased batch variances: 64/63 of the population's, inside the slack)
        assert np.all(np.abs(var / SIGMA**2 - 1) <= 1.5 * tol), (family, var)
    whole = bncheck.recalibrate(state, data, tmp / "w.pt", arch=spec, options=_opts(method=method, batch_size=64))
    assert whole.result.summary["samples"] == len(x) and "precision" not in whole.result.summary
    assert math.isfinite(precision["mean"])

"""Rules BN001-BN011: for each, a real model that triggers it and one that does not.

Each model is a small, calibrated network whose BN buffers are then edited the way the
rule's failure happens in practice; values the rules compute are compared with torch's own
arithmetic, not re-derived here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from torch import nn  # noqa: E402

import bncheck  # noqa: E402
from bncheck import Settings  # noqa: E402
from bncheck.rules.registry import REGISTRY  # noqa: E402

AUDIT_CODES = [f"BN0{i:02d}" for i in range(1, 12)]


def net(eps: float = 1e-5, momentum: float | None = 0.1, track: bool = True) -> nn.Module:
    """conv -> bn(0..) -> relu -> flatten -> linear -> bn1d, input (N, 1, 6, 6)."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False),
        nn.BatchNorm2d(4, eps=eps, momentum=momentum, track_running_stats=track),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 16, 5),
        nn.BatchNorm1d(5, eps=eps, momentum=momentum, track_running_stats=track),
    )


@pytest.fixture
def healthy(calibrate):
    torch.manual_seed(0)
    return calibrate(net(), (8, 1, 6, 6), batches=60)  # 60 updates: initial values weigh 0.9^60


def findings(model, code: str | None = None, **settings) -> list:
    report = bncheck.audit(model, settings=Settings(**settings), trust_pickle=True)
    return [f for f in report.findings if code is None or f.rule == code]


def test_every_audit_rule_is_registered_with_its_contract_severity():
    expected = {
        "BN001": "error", "BN002": "error", "BN003": "error", "BN004": "error", "BN005": "warning",
        "BN006": "warning", "BN007": "warning", "BN008": "warning", "BN009": "info",
        "BN010": "warning", "BN011": "info",
    }  # fmt: skip
    assert {code: REGISTRY[code].severity.value for code in AUDIT_CODES} == expected
    assert all(REGISTRY[code].phase == "audit" for code in AUDIT_CODES)


def test_healthy_model_has_no_findings(healthy):
    assert findings(healthy) == []


# ------------------------------------------------------------------------------- BN001


@pytest.mark.parametrize("tensor, value", [("running_var", math.nan), ("running_mean", math.inf), ("weight", -math.inf), ("bias", math.nan)])
def test_bn001_non_finite(healthy, tensor, value):
    with torch.no_grad():
        getattr(healthy[5], tensor)[2] = value
    (f,) = findings(healthy, "BN001")
    assert f.layer == "5" and f.severity.value == "error"
    assert f.details["tensors"] == {tensor: {"count": 1, "channels": [2]}}
    assert findings(healthy, "BN001", select=["BN001"]) == [f]


def test_bn001_on_onnx(onnx_bn):
    model, _ = onnx_bn(values={"mean": [0.0, np.nan, 1.0]})
    (f,) = findings(model, "BN001")
    assert f.details["tensors"]["running_mean"]["channels"] == [1]
    assert findings(onnx_bn()[0], "BN001") == []


# ------------------------------------------------------------------------------- BN002


def test_bn002_negative_variance(healthy):
    with torch.no_grad():
        healthy[1].running_var[3] = -0.05
    (f,) = findings(healthy, "BN002")
    assert f.layer == "1" and f.details["channels"] == [3] and f.details["min_var"] == pytest.approx(-0.05)
    # and torch agrees that this layer's output is NaN there
    out = healthy[1](torch.rand(2, 4, 3, 3))
    assert torch.isnan(out[:, 3]).all() and not torch.isnan(out[:, :3]).any()


def test_bn002_var_plus_eps_not_positive(calibrate):
    model = calibrate(net(), (8, 1, 6, 6))
    model[1].eps = 0.0  # torch refuses eps 0 in training, not in eval
    with torch.no_grad():
        model[1].running_var[0] = 0.0  # not negative, but var + eps == 0
    (f,) = findings(model, "BN002")
    assert "0 channel(s) with negative running_var, 1 with var + eps <= 0" in f.message
    assert not torch.isfinite(model[1](torch.rand(2, 4, 3, 3))[:, 0]).any()  # torch: inf/nan


def test_bn002_not_for_zero_variance(healthy, onnx_bn):
    with torch.no_grad():
        healthy[1].running_var[0] = 0.0  # dead, not negative: BN007's business
    assert findings(healthy, "BN002") == []
    model, _ = onnx_bn(values={"var": [1.0, -0.1, 1.0]})
    assert [f.details["channels"] for f in findings(model, "BN002")] == [[1]]


def test_bn002_onnx_agrees_with_onnxruntime(tmp_path, onnx_bn):
    ort = pytest.importorskip("onnxruntime")
    model, _ = onnx_bn(values={"var": [1.0, -0.1, 1.0]})
    (f,) = findings(model, "BN002")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": np.random.default_rng(0).random((1, 2, 4, 4), dtype=np.float32)})
    assert [c for c in range(3) if np.isnan(out[0, c]).all()] == f.details["channels"] == [1]


# ------------------------------------------------------------------------------- BN003


def test_bn003_never_updated():
    model = net().eval()  # trained weights or not, the running stats are still mean 0 / var 1
    found = findings(model, "BN003")
    assert [f.layer for f in found] == ["1", "5"]
    assert found[0].details["num_batches_tracked"] == 0


def test_bn003_zero_counter_with_real_statistics_is_fine(healthy):
    for bn in (healthy[1], healthy[5]):
        bn.num_batches_tracked.zero_()  # what converted models look like
    assert findings(healthy, "BN003") == []


def test_bn003_one_real_channel_is_enough(calibrate):
    model = net().eval()
    with torch.no_grad():
        model[1].running_mean[2] = 0.3
    assert [f.layer for f in findings(model, "BN003")] == ["5"]


def test_bn003_keras_converted_onnx_with_constants_is_fine(onnx_bn):
    model, _ = onnx_bn(params="cast", epsilon=1e-3, momentum=0.99)
    assert findings(model) == []


def test_bn003_on_onnx_with_initial_values(onnx_bn):
    model, _ = onnx_bn(params="constant", values={"mean": np.zeros(3), "var": np.ones(3)})
    assert [f.rule for f in findings(model)] == ["BN003"]


def test_bn003_lazy_layer_never_run():
    model = nn.Sequential(nn.Linear(3, 4), nn.LazyBatchNorm1d()).eval()
    found = [f for f in findings(model) if f.rule != "BN011"]  # nothing to fold either
    assert [(f.rule, f.layer) for f in found] == [("BN003", "1")]  # and no BN004
    assert "never run" in found[0].message


# ------------------------------------------------------------------------------- BN004


@pytest.mark.parametrize("fmt", ["module", "script", "export"])
def test_bn004_track_running_stats_false(tmp_path, save_model, fmt):
    model = net(track=False).eval()
    if fmt != "module":
        model = save_model(model, tmp_path, fmt, torch.rand(2, 1, 6, 6))
    found = findings(model, "BN004")
    assert [f.layer for f in found] == ["1", "5"]
    assert all(f.severity.value == "error" for f in found)


def test_bn004_onnx_training_mode(onnx_bn):
    (f,) = findings(onnx_bn(opset=15, training_mode=1)[0], "BN004")
    assert "training_mode=1" in f.message
    assert findings(onnx_bn(opset=15, training_mode=0)[0], "BN004") == []


def test_bn004_not_for_running_stats(healthy):
    assert findings(healthy, "BN004") == []


# ------------------------------------------------------------------------------- BN005


@pytest.mark.parametrize("fmt", ["script", "pickle"])
def test_bn005_saved_in_training_mode(tmp_path, save_model, tiny_cnn, fmt):
    model = tiny_cnn.train()
    path = save_model(model, tmp_path, fmt)
    found = findings(path, "BN005")
    assert [(f.rule, f.layer) for f in found] == [("BN005", "bn1"), ("BN005", "bn2"), ("BN005", "bn3")]
    assert findings(path, "BN004") == []  # it has running statistics: only the mode is wrong
    assert all(f.severity.value == "warning" for f in found)
    tiny_cnn.eval()
    assert findings(save_model(tiny_cnn, tmp_path, fmt, name=f"eval.{fmt}"), "BN005") == []


def test_bn005_not_for_state_dicts_or_onnx(tmp_path, healthy, save_model):
    healthy.train()
    assert findings(save_model(healthy, tmp_path, "state_dict"), "BN005") == []
    assert findings(save_model(healthy, tmp_path, "onnx", torch.rand(2, 1, 6, 6)), "BN005") == []


# ------------------------------------------------------------------------------- BN006


@pytest.mark.parametrize("updates, fires", [(1, True), (3, True), (43, True), (44, False), (600, False)])
def test_bn006_few_updates(healthy, updates, fires):
    healthy[1].num_batches_tracked.fill_(updates)
    found = findings(healthy, "BN006")
    assert bool(found) is fires
    if fires:
        (f,) = found
        assert f.layer == "1"
        assert f.details["initial_weight"] == pytest.approx(0.9**updates)
        assert f.details["updates_needed"] == 44  # smallest n with 0.9**n <= 0.01


def test_bn006_threshold_and_momentum(calibrate):
    model = calibrate(net(momentum=0.5), (8, 1, 6, 6), batches=5)  # 0.5**5 = 3.1%
    assert [f.layer for f in findings(model, "BN006")] == ["1", "5"]
    assert findings(model, "BN006", thresholds={"BN006": {"max_initial_weight": 0.05}}) == []


def test_bn006_not_for_zero_counter_or_cumulative_average(healthy, calibrate):
    healthy[1].num_batches_tracked.zero_()
    assert findings(healthy, "BN006") == []
    cumulative = calibrate(net(momentum=None), (8, 1, 6, 6), batches=2)
    assert findings(cumulative, "BN006") == []


# ------------------------------------------------------------------------------- BN007


def test_bn007_dead_channels(healthy):
    with torch.no_grad():
        healthy[1].weight[1] = 0.0
        healthy[1].running_var[3] = 1e-10
    (f,) = findings(healthy, "BN007")
    assert f.layer == "1"
    assert f.details == {"channels": [1, 3], "dead_gamma": 1, "dead_var": 1}


def test_bn007_thresholds(healthy):
    with torch.no_grad():
        healthy[5].weight[0] = 1e-4
    assert findings(healthy, "BN007") == []
    (f,) = findings(healthy, "BN007", thresholds={"BN007": {"gamma": 1e-3}})
    assert f.details["channels"] == [0]


# ------------------------------------------------------------------------------- BN008


def test_bn008_extreme_scale_matches_torch(healthy):
    bn = healthy[1]
    with torch.no_grad():
        bn.weight[2] = 50.0
        bn.running_var[2] = 1e-4
    torch_scale = (bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps)).detach().double()
    assert torch_scale.max() > 1e3
    (f,) = findings(healthy, "BN008")
    assert f.details["channel"] == 2
    assert f.details["max_scale"] == pytest.approx(torch_scale.max().item(), rel=1e-6)
    assert findings(healthy, "BN008", thresholds={"BN008": {"max_scale": 1e4}}) == []


def test_bn008_not_for_ordinary_scales(healthy):
    bn = healthy[1]
    assert (bn.weight.abs() / torch.sqrt(bn.running_var + bn.eps)).max() < 1e3
    assert findings(healthy, "BN008") == []


# ------------------------------------------------------------------------------- BN009


def test_bn009_keras_eps_in_pytorch(calibrate):
    model = calibrate(net(eps=1e-3), (8, 1, 6, 6), batches=60)
    found = findings(model, "BN009")
    assert [f.layer for f in found] == ["1", "5"]
    assert all("1e-3" in f.message or "0.001" in f.message for f in found)


def test_bn009_momentum_none(calibrate):
    model = calibrate(net(momentum=None), (8, 1, 6, 6), batches=2)
    assert [("cumulative" in f.message) for f in findings(model, "BN009")] == [True, True]


def test_bn009_mixed_eps_is_a_model_level_finding(healthy):
    healthy[5].eps = 1e-4
    found = findings(healthy, "BN009")
    assert [f.layer for f in found] == [None, "5"]
    assert found[0].details["eps_values"] == [1e-5, 1e-4]


def test_bn009_not_for_onnx_convention_or_defaults(healthy, onnx_bn):
    assert findings(healthy, "BN009") == []
    assert findings(onnx_bn(epsilon=1e-3, momentum=0.99)[0], "BN009") == []


# ------------------------------------------------------------------------------- BN010


@pytest.mark.parametrize("batch, fires", [(8, True), (15, True), (16, False), (32, False), (None, False)])
def test_bn010_training_batch_size(healthy, batch, fires):
    found = findings(healthy, "BN010", train_batch_size=batch)
    assert bool(found) is fires
    if fires:
        assert found[0].layer is None and found[0].details["train_batch_size"] == batch


def test_bn010_via_cli(tmp_path, healthy, save_model, cli):
    path = save_model(healthy, tmp_path, "state_dict")
    small = cli("audit", path, "--train-batch-size", "8", "--format", "json", "--fail-on", "warning")
    assert small.exit_code == 1 and '"BN010"' in small.stdout
    large = cli("audit", path, "--train-batch-size", "32", "--format", "json", "--fail-on", "warning")
    assert large.exit_code == 0 and '"BN010"' not in large.stdout
    lowered = cli("audit", path, "--train-batch-size", "8", "--threshold", "BN010.min_batch_size=4", "--fail-on", "warning")
    assert lowered.exit_code == 0


# ------------------------------------------------------------------------------- BN011


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_bn011_not_foldable(calibrate):
    model = calibrate(_Residual(), (8, 2, 5, 5), batches=60)
    (f,) = findings(model)
    assert (f.rule, f.layer, f.severity.value) == ("BN011", "bn", "info")
    assert f.details == {"producer": "conv", "producer_kind": "conv"}


def test_bn011_not_for_foldable_or_unknown(tmp_path, healthy, save_model):
    assert findings(healthy, "BN011") == []
    # a bare state dict: foldability unknown, so nothing to report
    assert findings(save_model(healthy, tmp_path, "state_dict"), "BN011") == []

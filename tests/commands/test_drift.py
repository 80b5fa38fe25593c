"""bncheck.drift end to end on real models and files: known injected shifts are found with the
contract's z and r to 1e-4, identical data gives ~zero drift, both backends agree, and the
train-mode analyses are large where they must be and small where they must not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import bncheck
from bncheck.commands.drift import DriftOptions
from bncheck.data import DataOptions


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _bn_inputs(model: nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    """The BN inputs of an eval-mode forward, captured with plain hooks, in float64."""
    seen: dict[str, list[np.ndarray]] = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=name: seen.setdefault(name, []).append(args[0].double().numpy()))
        for name, m in model.named_modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    return {k: np.concatenate(v) for k, v in seen.items()}


def _population(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    flat = np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)
    return flat.mean(axis=1), flat.var(axis=1)


@pytest.fixture
def calibrated(tmp_path):
    """A model whose running statistics are the exact eval-mode population statistics of its
    data, plus that data on disk as .npy."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 0.8, size=(96, 3, 6, 6)).astype(np.float32)
    model = Net().eval()
    for name in ("bn1", "bn2"):  # calibrate layer by layer, as inference will see it
        acts = _bn_inputs(model, x)[name]
        mean, var = _population(acts)
        bn = getattr(model, name)
        bn.running_mean.copy_(torch.from_numpy(mean))
        bn.running_var.copy_(torch.from_numpy(var))
    path = tmp_path / "data.npy"
    np.save(path, x)
    return model, x, path


def _opts(**kw):
    kw.setdefault("mismatch_samples", 0)
    return DriftOptions(data_options=DataOptions(workers=0), **kw)


def test_identical_distribution_gives_near_zero_drift(calibrated):
    model, _, path = calibrated
    report = bncheck.drift(model, path, options=_opts())
    for layer in ("bn1", "bn2"):
        d = report.result.layers[layer]
        assert d["mean_shift"]["mean"] < 1e-5
        assert d["var_log_ratio"]["mean"] < 1e-5
        assert d["score"] < 1e-9
    assert report.passed and not [f for f in report.findings if f.rule in ("BN101", "BN102")]


def test_injected_shift_is_found_at_the_right_layer_with_exact_figures(calibrated):
    model, x, path = calibrated
    bn2 = model.bn2
    sd = torch.sqrt(bn2.running_var + bn2.eps)
    with torch.no_grad():
        bn2.running_mean -= 0.7 * sd  # the data now sits +0.7 std above the stored mean
        bn2.running_var *= 0.5  # and has twice the stored variance
    report = bncheck.drift(model, path, options=_opts(batch_size=7))
    acts = _bn_inputs(model, x)["bn2"]
    mu, var = _population(acts)
    rm, rv = bn2.running_mean.double().numpy(), bn2.running_var.double().numpy()
    z = (mu - rm) / np.sqrt(rv + bn2.eps)
    r = np.log((var + bn2.eps) / (rv + bn2.eps))
    d = report.result.layers["bn2"]
    assert d["mean_shift"]["mean"] == pytest.approx(np.mean(np.abs(z)), rel=1e-4)
    assert d["mean_shift"]["max"] == pytest.approx(np.max(np.abs(z)), rel=1e-4)
    assert d["var_log_ratio"]["mean"] == pytest.approx(np.mean(np.abs(r)), rel=1e-4)
    assert d["samples"] == 96 and d["elements"] == 96 * 36
    assert report.result.layers["bn1"]["score"] < 1e-9
    assert report.result.first_drifting_layer == "bn2"
    assert report.result.ranking[0] == "bn2"
    rules = {(f.rule, f.layer, f.severity.value) for f in report.findings}
    # r = ln 2 = 0.69 on 96 samples: past the error threshold 0.5, but by less than three noise
    # levels (0.12 each), so an error in z (0.7) and a warning in r
    assert ("BN101", "bn2", "error") in rules and ("BN102", "bn2", "warning") in rules
    assert not {r for r in rules if r[1] == "bn1"}
    assert report.exit_code == 1


def test_results_do_not_depend_on_batch_size(calibrated):
    model, _, path = calibrated
    with torch.no_grad():
        model.bn1.running_mean += 0.3
    a = bncheck.drift(model, path, options=_opts(batch_size=1))
    b = bncheck.drift(model, path, options=_opts(batch_size=96))
    for layer in ("bn1", "bn2"):
        da, db = a.result.layers[layer], b.result.layers[layer]
        assert da["mean_shift"]["mean"] == pytest.approx(db["mean_shift"]["mean"], rel=1e-6)
        assert da["var_log_ratio"]["mean"] == pytest.approx(db["var_log_ratio"]["mean"], rel=1e-6, abs=1e-6)


def test_torch_and_onnx_backends_agree(calibrated, tmp_path):
    model, x, path = calibrated
    with torch.no_grad():
        model.bn1.running_var *= 2.0
    onnx_path = tmp_path / "net.onnx"
    torch.onnx.export(
        model, (torch.from_numpy(x[:2]),), str(onnx_path), dynamo=False, do_constant_folding=False,
        training=torch.onnx.TrainingMode.EVAL, input_names=["input"], dynamic_axes={"input": {0: "batch"}},
    )
    t = bncheck.drift(model, path, options=_opts())
    o = bncheck.drift(onnx_path, path, options=_opts())
    t_layers = [layer.name for layer in t.layers]
    o_layers = [layer.name for layer in o.layers]
    for tn, on in zip(t_layers, o_layers, strict=True):
        td, od = t.result.layers[tn], o.result.layers[on]
        for key in ("mean_shift", "var_log_ratio"):
            assert od[key]["mean"] == pytest.approx(td[key]["mean"], rel=1e-4, abs=1e-6)
        assert od["samples"] == td["samples"]


def test_train_eval_and_small_batch_large_when_stats_are_stale(calibrated):
    model, _, path = calibrated
    with torch.no_grad():
        model.bn1.running_mean += 2.0
    report = bncheck.drift(model, path, options=_opts(mismatch_samples=96, train_batch_size=2))
    te = report.result.train_eval
    assert te.top_layers[0] == "bn1" and te.method == "population statistics"
    assert te.top1_agreement < 0.9 and te.noise_floor.top1_agreement > 0.95
    assert "BN301" in {f.rule for f in report.findings}


def test_small_batch_risk_fires_on_batchnorm1d_at_batch_size_2(tmp_path):
    """BatchNorm1d sees one value per sample and channel: batch means of 2 samples scatter by
    about 1/sqrt(2) std, and the predictions change; BN201 fires, BN301 (statistics exact for
    this data) does not."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5))
    x = np.random.default_rng(1).normal(size=(128, 8)).astype(np.float32)
    with torch.no_grad():
        h = model[0](torch.from_numpy(x)).double()
        model[1].running_mean.copy_(h.mean(0))
        model[1].running_var.copy_(h.var(0, unbiased=False))
    path = tmp_path / "x.npy"
    np.save(path, x)
    report = bncheck.drift(model.eval(), path, options=_opts(mismatch_samples=128, train_batch_size=2))
    sb = report.result.small_batch
    assert sb.batch_size == 2 and sb.max_mean_scatter > 0.4 and sb.flip_rate > 0.1
    codes = {f.rule for f in report.findings}
    assert "BN201" in codes and "BN301" not in codes


def test_small_batch_scatter_of_a_single_batch_is_not_measurable(tmp_path):
    """24 samples at B = 16 hold one full batch, which is its own population: the scatter is
    reported as null with a note (not 0.0), and BN201 cannot fire on it; with two batches it is
    measured again."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 5)).eval()
    x = np.random.default_rng(2).normal(size=(24, 8)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    report = bncheck.drift(model, path, options=_opts(mismatch_samples=256, train_batch_size=16))
    sb = report.result.small_batch
    assert sb.max_mean_scatter is None and sb.mean_scatter_se is None and sb.worst_layer is None
    assert "not measurable" in sb.note and "one full batch of 16 (24 samples)" in sb.note
    assert "--train-batch-size at most 12" in sb.note  # DATA itself may hold no more samples
    assert "which DATA and --mismatch-samples must both allow" in sb.note and "raise --mismatch-samples" not in sb.note
    assert any("not measurable" in note for note in report.notes)
    assert '"max_mean_scatter": null' in report.to_json()
    assert "BN201" not in {f.rule for f in report.findings}
    two = bncheck.drift(model, path, options=_opts(mismatch_samples=256, train_batch_size=12)).result.small_batch
    assert two.max_mean_scatter > 0 and two.note is None and "note" not in two.to_dict()


def test_small_batch_scatter_shrinks_with_the_batch_size(calibrated):
    model, _, path = calibrated
    small = bncheck.drift(model, path, options=_opts(mismatch_samples=96, train_batch_size=2))
    large = bncheck.drift(model, path, options=_opts(mismatch_samples=96, train_batch_size=32))
    s2 = small.result.small_batch.max_mean_scatter
    s32 = large.result.small_batch.max_mean_scatter
    assert s2 > 2.5 * s32  # sampling error of a batch mean falls like 1/sqrt(B): 4x here


def test_train_eval_small_when_stats_match(calibrated):
    model, _, path = calibrated
    report = bncheck.drift(model, path, options=_opts(mismatch_samples=96, train_batch_size=32))
    te = report.result.train_eval
    assert te.relative_error < 0.2
    assert "BN301" not in {f.rule for f in report.findings}
    # the stored statistics were not touched by the train-mode passes
    again = bncheck.drift(model, path, options=_opts())
    assert again.result.layers["bn1"]["score"] < 1e-9


def test_only_bn201_runs_a_train_mode_pass(calibrated, monkeypatch):
    """BN301 compares eval-mode runs (stored vs DATA's statistics) and runs no train-mode pass;
    BN201 runs one, in full batches of --train-batch-size, whatever --batch-size is."""
    from bncheck.backends.torch.runner import TorchRunner

    model, _, path = calibrated
    with torch.no_grad():
        model.bn1.running_mean += 1.0
    calls: list[int] = []
    original = TorchRunner.train_moments

    def counted(self, x):
        calls.append(len(x))
        return original(self, x)

    monkeypatch.setattr(TorchRunner, "train_moments", counted)
    small = bncheck.drift(model, path, options=_opts(mismatch_samples=96, batch_size=16, train_batch_size=16, train_pass="always"))
    assert calls == [16] * 6
    calls.clear()
    large = bncheck.drift(model, path, options=_opts(mismatch_samples=96, batch_size=32, train_batch_size=16, train_pass="always"))
    assert calls == [16] * 6
    assert small.result.small_batch == large.result.small_batch  # the same subsample and batches
    assert small.result.train_eval.top1_agreement == pytest.approx(large.result.train_eval.top1_agreement)


def test_save_stats_npz_and_parquet(calibrated, tmp_path):
    model, x, path = calibrated
    npz = tmp_path / "stats.npz"
    bncheck.drift(model, path, options=_opts(save_stats=npz))
    with np.load(npz) as saved:
        mu, var = _population(_bn_inputs(model, x)["bn1"])
        np.testing.assert_allclose(saved["bn1/data_mean"], mu, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(saved["bn1/data_var"], var, rtol=1e-5)
        assert int(saved["bn1/data_count"]) == 96 * 36
        np.testing.assert_array_equal(saved["bn2/running_var"], model.bn2.running_var.double().numpy())
    pq = tmp_path / "stats.parquet"
    bncheck.drift(model, path, options=_opts(save_stats=pq))
    import pandas as pd

    frame = pd.read_parquet(pq)
    assert set(frame["layer"]) == {"bn1", "bn2"} and len(frame) == 16


def test_a_parquet_statistics_file_reports_what_the_npz_one_does(tmp_path):
    """``--save-stats st.parquet`` kept no split halves, so ``--stats st.parquet`` fell back to
    an analytic noise level (0.018 against the halves' 0.025 on the shifted digits' bn3) and
    gave an extra BN101 warning; both formats now keep the even and odd batches' moments and
    read back to the same report."""
    from pathlib import Path

    from bncheck.report.stats_file import read_stats

    samples = Path(__file__).resolve().parents[2] / "sample_models"
    model, data = samples / "digits_cnn.onnx", samples / "data" / "digits" / "shifted"
    reports = {}
    for suffix in ("npz", "parquet"):
        saved = tmp_path / f"st.{suffix}"
        bncheck.drift(model, data, options=_opts(save_stats=saved))
        assert read_stats(saved).halves is not None
        report = bncheck.drift(model, None, options=_opts(stats=saved)).to_dict()
        reports[suffix] = (
            [(f["rule"], f["severity"], f["layer"]) for f in report["findings"]],
            [layer["drift"]["noise"] for layer in report["layers"]],
        )
    assert reports["npz"] == reports["parquet"]
    assert ("BN101", "warning", "/bn3/BatchNormalization") not in reports["parquet"][0]


@pytest.mark.parametrize(
    ("ignore", "runs"),
    [([], {"BN301", "BN201"}), (["BN301"], {"BN201"}), (["BN201"], {"BN301"}), (["BN201", "BN301"], set())],
)
def test_an_analysis_whose_rule_is_selected_off_does_not_run(calibrated, monkeypatch, ignore, runs):
    """`--ignore BN301` skips BN301's comparison with DATA's own statistics (its refinement and
    noise-floor passes: 7 of PP-OCR's 12 s), `--ignore BN201` its train-mode pass; the other
    still runs, and the per-layer drift is the same."""
    from bncheck.commands import drift as drift_command

    model, _, path = calibrated
    with torch.no_grad():
        model.bn1.running_mean += 1.0
    called: set[str] = set()
    stale, small = drift_command.outputs.stale_statistics, drift_command.small_batch.small_batch_risk

    def counted(rule, real):
        def wrapper(*args, **kwargs):
            called.add(rule)
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(drift_command.outputs, "stale_statistics", counted("BN301", stale))
    monkeypatch.setattr(drift_command.small_batch, "small_batch_risk", counted("BN201", small))
    options = _opts(mismatch_samples=96, train_batch_size=2, train_pass="always")
    report = bncheck.drift(model, path, settings=bncheck.Settings(ignore=ignore), options=options)
    assert called == runs
    assert (report.result.train_eval is not None) == ("BN301" in runs)
    assert (report.result.small_batch is not None) == ("BN201" in runs)
    assert not {f.rule for f in report.findings} & set(ignore)
    full = bncheck.drift(model, path, options=options)
    assert report.result.layers == full.result.layers


@pytest.mark.parametrize(
    ("ignore", "mismatch_samples", "outputs"),
    [([], 96, True), (["BN301"], 96, True), (["BN201"], 96, True), (["BN201", "BN301"], 96, False), ([], 0, False)],
)
def test_the_main_pass_keeps_the_subsample_outputs_only_for_an_analysis_that_compares_them(
    calibrated, monkeypatch, ignore, mismatch_samples, outputs
):
    """The subsample's outputs (a CTC recogniser's 96 x 40 x 6,625 scores: 102 MB) are kept for
    BN301 and BN201 only; without them the inputs are still kept (BN103's diagnosis, the
    split halves) and the per-layer figures do not change."""
    from bncheck.engines import local

    model, _, path = calibrated
    seen: list[bool] = []
    real = local.measure

    def spy(*args, **kwargs):
        seen.append(kwargs["keep_outputs"])
        return real(*args, **kwargs)

    monkeypatch.setattr(local, "measure", spy)
    options = _opts(mismatch_samples=mismatch_samples, train_batch_size=2)
    report = bncheck.drift(model, path, settings=bncheck.Settings(ignore=ignore), options=options)
    assert seen == [outputs]
    monkeypatch.setattr(local, "measure", real)
    assert report.result.layers == bncheck.drift(model, path, options=options).result.layers

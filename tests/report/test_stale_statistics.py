"""BN301's typed evidence: a real drift run carries a StaleStatistics whose to_dict() is the
report's train_eval record, and a saved record (either floor shape, a record of an older
version with keys this one does not write) reads back to the same dict, keys in order."""

from __future__ import annotations

import json
import math

import pytest

from bncheck.report import Report
from bncheck.rules.stale_statistics import NoiseFloor, StaleStatistics

TAIL = {
    "method": "population statistics", "statistics_samples": 400, "refinement_passes": 2, "refinement_movement": 0.001,
    "refinement_converged": True, "refinement_tolerance": 0.02, "refinement_method": "one pass", "refinement_levels": 0,
    "batch_axis": 0, "class_axis": 1, "noise_multiple": 2.0,
}  # fmt: skip


def test_a_saved_drift_report_reads_back_its_typed_bn301_record(sample_runs):
    saved = sample_runs["drift_shifted"]
    record = saved.data["drift"]["train_eval"]
    te = Report.load(saved.path).result.train_eval
    assert isinstance(te, StaleStatistics) and isinstance(te.noise_floor, NoiseFloor)
    assert te.top1_agreement == record["top1_agreement"] and te.disagreement == pytest.approx(1 - record["top1_agreement"])
    assert json.dumps(te.to_dict()) == json.dumps(record)  # same keys, same order, same values
    assert te.extra == {}


def test_a_measured_floor_puts_the_flips_before_it():
    record = {
        "samples": 64, "relative_error": 0.3, "positions": 1, "top1_agreement": 0.8, "flips": 13,
        "noise_floor": {"relative_error": 0.01, "top1_agreement": 0.99, "measured": True, "halves": "even samples of the subsample",
                        "half_samples": 32, "scale": 0.5},
        "significance": 7.5, **TAIL, "accuracy_stored": 0.7, "accuracy_population": 0.9, "top_layers": ["bn1", "bn2"],
    }  # fmt: skip
    te = StaleStatistics.from_dict(record)
    assert list(te.to_dict()) == list(record) and te.to_dict() == record
    assert te.noise_floor.measured and te.flips == 13 and te.confidence_stored is None


def test_an_unmeasured_floor_puts_the_flips_after_the_significance_and_keeps_unknown_keys():
    record = {
        "samples": 64, "relative_error": 0.001, "positions": 1, "top1_agreement": 1.0, "noise_floor": {"measured": False},
        "significance": math.nan, "flips": 0, **TAIL, "top_layers": [], "per_layer": {"bn1": 0.2}, "batch_size": 8,
    }  # fmt: skip
    te = StaleStatistics.from_dict(record)
    assert list(te.to_dict()) == list(record)
    assert not te.noise_floor.measured and te.noise_floor.relative_error is None
    assert te.extra == {"per_layer": {"bn1": 0.2}, "batch_size": 8} and math.isnan(te.significance)


def test_without_classes_there_is_no_agreement_and_an_empty_record_is_none():
    record = {"samples": 10, "relative_error": 0.2, "noise_floor": {"relative_error": 0.05, "measured": True, "halves": "h",
              "half_samples": 5, "scale": 0.7}, "significance": 2.0, **TAIL, "top_layers": ["bn1"]}  # fmt: skip
    te = StaleStatistics.from_dict(record)
    assert te.top1_agreement is None and te.disagreement is None and te.to_dict() == record
    assert StaleStatistics.from_dict({}) is None and StaleStatistics.from_dict(None) is None


def test_a_floor_taken_on_part_of_the_subsample_keeps_its_sample_count():
    record = {
        "samples": 256, "relative_error": 0.3, "positions": 1, "top1_agreement": 0.8, "flips": 51,
        "noise_floor": {"relative_error": 0.01, "top1_agreement": 0.99, "measured": True, "halves": "even and odd batches of DATA",
                        "half_samples": 1000, "scale": 1.0, "samples": 64},
        "significance": 9.0, **TAIL, "top_layers": ["bn1"],
    }  # fmt: skip
    te = StaleStatistics.from_dict(record)
    assert te.noise_floor.samples == 64 and te.to_dict() == record


@pytest.mark.parametrize(("significance", "noted"), [(-0.7, False), (0.0, False), (1.5, True), (3.5, False)])
def test_bn301_is_held_back_only_for_an_effect_beyond_the_floor_short_of_significance(significance, noted):
    """The note says "more samples decide" where the effect lies beyond noise_multiple x the floor
    by fewer standard errors than the rule needs; at or below 0 it lies within the noise on the
    samples compared (a floor's pass stopped early for futility), and there is nothing to decide."""
    from bncheck.rules import REGISTRY
    from bncheck.rules.drift import train_eval_held_back

    record = {
        "samples": 256, "relative_error": 0.3, "positions": 1, "top1_agreement": 0.85, "flips": 38,
        "noise_floor": {"relative_error": 0.02, "top1_agreement": 0.95, "measured": True, "halves": "even and odd batches of DATA",
                        "half_samples": 1000, "scale": 1.0, "samples": 64},
        "significance": significance, **TAIL, "top_layers": ["bn1"],
    }  # fmt: skip
    note = train_eval_held_back(StaleStatistics.from_dict(record), dict(REGISTRY["BN301"].thresholds))
    assert (note is not None) == noted
    if noted:
        assert "more samples" in note and "on 256 samples" in note


@pytest.mark.parametrize(("method", "fires"), [("fixed-point passes (diverging: stopped)", False), ("fixed-point passes", True)])
def test_bn301_judges_nothing_where_its_passes_diverged(method, fires):
    """Whole-model passes that diverged leave statistics that are no estimate of DATA's: a
    random-init ResNet-18 as TorchScript read 69% agreement on its own kind of data (89.5% level
    by level as ONNX) and warned. Passes that ran out while settling still warn, qualified."""
    from bncheck.commands.drift_refine import refinement_note
    from bncheck.rules import DriftEvidence, RuleContext, run_rules

    record = {
        "samples": 256, "relative_error": 0.3, "positions": 1, "top1_agreement": 0.69, "flips": 79,
        "noise_floor": {"relative_error": 0.02, "top1_agreement": 0.99, "measured": True, "halves": "even and odd batches of DATA",
                        "half_samples": 1000, "scale": 1.0, "samples": 256},
        "significance": 9.0, **{**TAIL, "refinement_converged": False, "refinement_method": method, "refinement_movement": 0.141},
        "top_layers": ["bn1"],
    }  # fmt: skip
    te = StaleStatistics.from_dict(record)
    from bncheck.config import Settings

    ctx = RuleContext(layers=[], thresholds=Settings().threshold_table(), drift=DriftEvidence(layers={}, samples=1000, train_eval=te))
    findings = run_rules(("drift",), ctx, select=("BN301",))
    bn301 = [f for f in findings if f.rule == "BN301"]
    assert bool(bn301) == fires and all(f.severity.value == "warning" for f in bn301)
    assert ("judges nothing" in refinement_note(te)) == (not fires)

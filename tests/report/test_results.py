"""The typed per-command results: a live run carries a DriftResult / FoldResult /
RecalibrationResult, a saved report loads back into the same type with the same fields, and
the result owns exactly its part of the JSON."""

from __future__ import annotations

import pytest

from bncheck.report import DriftResult, FoldResult, LayerRecalibration, RecalibrationResult, Report
from bncheck.rules import Verification

KINDS = {
    "audit_onnx": type(None),
    "drift_shifted": DriftResult,
    "drift_csv": DriftResult,
    "fold_onnx": FoldResult,
    "recalibrate_onnx": RecalibrationResult,
}


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_saved_report_rebuilds_its_typed_result(sample_runs, name):
    report = Report.load(sample_runs[name].path)
    assert type(report.result) is KINDS[name]
    assert report.to_dict() == sample_runs[name].data
    again = Report.from_dict(report.to_dict())
    assert again.result == report.result


def test_drift_result_fields(sample_runs):
    data = sample_runs["drift_shifted"].data
    result = Report.load(sample_runs["drift_shifted"].path).result
    assert result.first_drifting_layer == data["drift"]["first_drifting_layer"]
    assert result.ranking == data["drift"]["ranking"] and result.ranking
    assert result.thresholds["BN101"] == data["drift"]["thresholds"]["BN101"]
    assert set(result.channels) == set(result.layers) == {layer["name"] for layer in data["layers"] if "drift" in layer}
    assert result.data == data["data"]
    first = data["layers"][0]
    assert result.layer_drift(first["name"]) == first["drift"]


def test_fold_result_fields(sample_runs):
    data = sample_runs["fold_onnx"].data
    result = Report.load(sample_runs["fold_onnx"].path).result
    assert isinstance(result.verification, Verification)
    assert result.verification.passed is data["verification"]["passed"] is True
    assert result.figures.layers_folded == data["fold"]["layers_folded"] > 0
    assert result.figures.to_dict() == data["fold"]
    assert {name: o["status"] for name, o in result.outcomes.items()} == {layer["name"]: layer["fold"]["status"] for layer in data["layers"]}
    assert result.layer_drift(data["layers"][0]["name"]) is None


def test_recalibration_result_fields(sample_runs):
    data = sample_runs["recalibrate_onnx"].data
    result = Report.load(sample_runs["recalibrate_onnx"].path).result
    assert result.summary["method"] == "exact"
    layer = data["layers"][0]
    entry = result.layers[layer["name"]]
    assert isinstance(entry, LayerRecalibration) and entry.recalibrated is True
    assert entry.before == layer["before"] and entry.after == layer["after"] == layer["drift"]
    assert result.layer_drift(layer["name"]) == layer["after"]
    assert entry.after["score"] < entry.before["score"]


def test_extras_are_a_read_only_view_of_the_json(sample_runs):
    report = Report.load(sample_runs["drift_shifted"].path)
    data = sample_runs["drift_shifted"].data
    assert report.extras["drift"] == data["drift"] and report.extras["data"] == data["data"]
    report.extras["drift"] = {}  # a copy: the typed result is unchanged
    assert report.to_dict()["drift"] == data["drift"]
    assert report.layer_extras[data["layers"][0]["name"]] == {"drift": data["layers"][0]["drift"]}


def test_unknown_top_level_keys_are_kept(sample_runs):
    data = dict(sample_runs["audit_onnx"].data, from_the_future={"x": 1})
    assert Report.from_dict(data).to_dict()["from_the_future"] == {"x": 1}


def test_public_api_exports_the_result_types():
    import bncheck

    for name in ("DriftResult", "FoldResult", "RecalibrationResult"):
        assert getattr(bncheck, name) is getattr(bncheck.report, name)

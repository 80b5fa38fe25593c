"""The published JSON Schema (bncheck/report_schema.json, ``bncheck schema``): it is valid, it
is the one the contract tests use, every command's JSON output validates against it, every
field the reports carry is declared in it, and broken reports are rejected."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/contract_schema.py

from support.contract_schema import REPORT_SCHEMA, validate_report  # noqa: E402
from support.reports_support import invoke  # noqa: E402

from bncheck.report.schema import consistency_problems, load_schema, problems, schema_text  # noqa: E402


def test_bncheck_schema_prints_the_published_file():
    result = invoke("schema")
    assert result.exit_code == 0
    published = Path(__file__).resolve().parents[2] / "bncheck" / "report" / "report_schema.json"
    assert result.stdout == published.read_text(encoding="utf-8")
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["schema_version"] == {"enum": [1, 2, 3], "description": "Version of this report shape: bncheck writes 3 and reads 1, 2 and 3."}


def test_the_contract_tests_use_the_published_schema():
    assert REPORT_SCHEMA == load_schema() == json.loads(schema_text())


def test_schema_written_to_a_file(tmp_path):
    out = tmp_path / "schema.json"
    assert invoke("schema", "-o", out).exit_code == 0
    assert json.loads(out.read_text(encoding="utf-8")) == load_schema()


@pytest.mark.parametrize("name", ["audit_onnx", "audit_broken", "drift_shifted", "drift_reference", "drift_csv", "fold_onnx", "recalibrate_onnx"])
def test_every_command_output_validates(sample_runs, name):
    if name not in sample_runs:
        pytest.skip("needs torch")
    run = sample_runs[name]
    validate_report(run.data)
    assert problems(run.data) == []
    assert run.data["command"] == name.split("_")[0]
    assert run.data["summary"]["passed"] is (run.exit_code == 0)


def test_drift_outputs_carry_what_the_charts_need(sample_runs):
    data = sample_runs["drift_shifted"].data
    assert set(data["drift"]["thresholds"]) >= {"BN101", "BN102", "BN201", "BN301"}
    assert set(data["channels"]) == {layer["name"] for layer in data["layers"]}
    for layer in data["layers"]:
        arrays = data["channels"][layer["name"]]
        assert all(len(arrays[k]) == layer["num_features"] for k in ("running_mean", "running_var", "mean", "var", "z", "r"))
    assert "channels" not in sample_runs["drift_csv"].data  # opt-in


def test_baseline_and_run_records_validate(sample_runs, tmp_path):
    out = tmp_path / "judged.json"
    result = invoke("report", sample_runs["drift_shifted"].path, "--baseline", sample_runs["drift_reference"].path, "-f", "json", "-o", out)
    assert result.exit_code == 1
    data = json.loads(out.read_text(encoding="utf-8"))
    validate_report(data)
    assert data["baseline"]["new"] > 0 and all("baseline" in f for f in data["findings"])
    assert data["run"]["command_line"].startswith("bncheck drift ")  # the run that made the report, kept


def _declared(schema_part: dict, defs: dict) -> set[str]:
    if "$ref" in schema_part:
        schema_part = defs[schema_part["$ref"].rsplit("/", 1)[1]]
    return set(schema_part.get("properties", {}))


@pytest.mark.parametrize("name", ["audit_onnx", "drift_shifted", "drift_csv", "fold_onnx", "recalibrate_onnx"])
def test_every_emitted_field_is_declared(sample_runs, name):
    """The schema documents what the reports really hold: top-level keys, model, layer,
    finding and drift/data keys (a new field must be added to the published schema)."""
    schema = load_schema()
    defs = schema["$defs"]
    data = sample_runs[name].data
    assert set(data) <= set(schema["properties"]), set(data) - set(schema["properties"])
    assert set(data["model"]) <= _declared(schema["properties"]["model"], defs)
    for layer in data["layers"]:
        assert set(layer) <= _declared(defs["layer"], defs), set(layer) - _declared(defs["layer"], defs)
    for finding in data["findings"]:
        assert set(finding) <= _declared(defs["finding"], defs)
    for key in ("drift", "data", "fold", "verification", "recalibration"):
        if key in data:
            declared = _declared(schema["properties"][key], defs)
            assert set(data[key]) <= declared, (key, set(data[key]) - declared)


def test_broken_reports_are_rejected(sample_runs):
    good = sample_runs["drift_shifted"].data
    cases = {
        "missing summary": lambda d: d.pop("summary"),
        "wrong count": lambda d: d["summary"].__setitem__("errors", d["summary"]["errors"] + 1),
        "wrong verdict": lambda d: d["summary"].__setitem__("passed", not d["summary"]["passed"]),
        "bad severity": lambda d: d["findings"][0].__setitem__("severity", "fatal"),
        "bad rule code": lambda d: d["findings"][0].__setitem__("rule", "X1"),
        "unknown layer": lambda d: d["findings"][-1].__setitem__("layer", "nope"),
        "score above 1": lambda d: d["layers"][0]["drift"].__setitem__("score", 1.5),
        "no channel arrays": lambda d: d["channels"][d["layers"][0]["name"]].pop("z"),
    }
    for label, damage in cases.items():
        broken = copy.deepcopy(good)
        damage(broken)
        assert problems(broken), label
        with pytest.raises((jsonschema.ValidationError, AssertionError)):
            validate_report(broken)


def test_consistency_counts_existing_baseline_findings_as_not_failing(sample_runs):
    data = copy.deepcopy(sample_runs["drift_shifted"].data)
    assert data["summary"]["passed"] is False
    for f in data["findings"]:
        f["baseline"] = "existing"
    assert consistency_problems(data) == ["summary.passed is False but fail_on 'error' and the findings say True"]
    data["summary"]["passed"] = True
    assert consistency_problems(data) == []


def test_structural_check_without_jsonschema(sample_runs, monkeypatch):
    """``bncheck report`` reads reports without jsonschema installed (it is a test extra)."""
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    good = copy.deepcopy(sample_runs["audit_onnx"].data)
    assert problems(good) == []
    del good["layers"][0]["kind"]
    assert problems(good) == ["$.layers[0]: missing 'kind'"]
    assert problems([]) == ["$: not a JSON object"]

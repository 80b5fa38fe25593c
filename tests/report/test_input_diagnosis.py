"""BN103's typed evidence: a real drift run's saved report reads back into an InputDiagnosis
whose to_dict() is the report's input_diagnosis record, keys in order, and a record with keys
this version does not write keeps them."""

from __future__ import annotations

import json

from bncheck.report import Report
from bncheck.rules.input_diagnosis import InputDiagnosis, ScoredCandidate


def test_a_saved_drift_report_reads_back_its_typed_bn103_record(sample_runs):
    saved = sample_runs["drift_shifted"]
    record = saved.data["drift"]["input_diagnosis"]
    diagnosis = Report.load(saved.path).result.input_diagnosis
    assert isinstance(diagnosis, InputDiagnosis) and all(isinstance(c, ScoredCandidate) for c in diagnosis.candidates)
    assert [c.description for c in diagnosis.candidates] == [c["description"] for c in record["candidates"]]
    assert diagnosis.samples == record["samples"] and diagnosis.layers == record["layers"]
    assert json.dumps(diagnosis.to_dict()) == json.dumps(record)  # same keys, same order, same values
    assert diagnosis.extra == {}


def test_no_best_candidate_and_unknown_keys_read_back_as_they_were():
    record = {
        "baseline": 2.5, "baseline_first_layer": 3.0,
        "candidates": [{"description": "dividing by 255", "options": "--scale 255", "score": 2.0, "first_layer_score": 2.2}],
        "samples": 32, "layers": ["bn1"], "inference": {"affine": False}, "pixel_space": "images",
    }  # fmt: skip
    diagnosis = InputDiagnosis.from_dict(record)
    assert diagnosis.best is None and diagnosis.extra == {"pixel_space": "images"}
    assert list(diagnosis.to_dict()) == list(record) and diagnosis.to_dict() == record
    assert InputDiagnosis.from_dict(None) is None and InputDiagnosis.from_dict({}) is None

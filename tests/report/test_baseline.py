"""Baselines (``--baseline``) and ``bncheck diff``: findings are new, worse or existing (and in
a diff also better or resolved); only new and worse ones fail the gate."""

from __future__ import annotations

import json

import pytest
from support.reports_support import DIGITS, SAMPLES, invoke

from bncheck.report.baseline import DEFAULT_TOLERANCE, apply_baseline, compare, match
from bncheck.report.diff import diff
from bncheck.report.io import load_report
from bncheck.rules.finding import Finding, Severity


def F(rule, layer, severity="warning", **details):
    return Finding(rule, Severity(severity), layer, f"{rule} on {layer}", details)


def _one_error_line(result, *needles):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ---------------------------------------------------------------------------- the rules of comparison


def test_new_existing_and_worse():
    assert compare(None, F("BN101", "bn1"))[0] == "new"
    assert compare(F("BN101", "bn1", mean=0.30), F("BN101", "bn1", mean=0.31)) == ("existing", "as in the baseline")
    state, reason = compare(F("BN101", "bn1", "warning", mean=0.3), F("BN101", "bn1", "error", mean=0.6))
    assert state == "worse" and reason == "severity warning → error"
    state, reason = compare(F("BN101", "bn1", mean=0.30), F("BN101", "bn1", mean=0.40))
    assert state == "worse" and reason == "mean_abs_z 0.3 → 0.4"
    # lower severity or smaller figures are not worse
    assert compare(F("BN102", "bn1", "error", mean=0.9), F("BN102", "bn1", "warning", mean=0.3))[0] == "existing"


def test_tolerance_and_standard_errors():
    old = F("BN102", "bn1", mean=1.0)
    assert compare(old, F("BN102", "bn1", mean=1.0 + DEFAULT_TOLERANCE * 0.99))[0] == "existing"
    assert compare(old, F("BN102", "bn1", mean=1.0 + DEFAULT_TOLERANCE * 1.01))[0] == "worse"
    assert compare(old, F("BN102", "bn1", mean=1.2), tolerance=0.25)[0] == "existing"
    # growth within two combined standard errors is noise
    noisy_old = F("BN101", "bn1", mean=1.0, standard_error=0.1)
    assert compare(noisy_old, F("BN101", "bn1", mean=1.35, standard_error=0.1))[0] == "existing"
    assert compare(noisy_old, F("BN101", "bn1", mean=1.45, standard_error=0.1))[0] == "worse"


def test_figures_of_other_rules():
    assert compare(F("BN301", None, top1_agreement=0.95), F("BN301", None, top1_agreement=0.80))[0] == "worse"
    assert compare(F("BN301", None, top1_agreement=0.80), F("BN301", None, top1_agreement=0.95))[0] == "existing"
    assert compare(F("BN007", "bn1", dead_gamma=1, dead_var=0), F("BN007", "bn1", dead_gamma=3, dead_var=1))[0] == "worse"
    assert compare(F("BN003", "bn1", "error"), F("BN003", "bn1", "error"))[0] == "existing"  # no figures: by severity


def test_matching_pairs_by_rule_and_layer_in_order():
    old = [F("BN101", "bn1"), F("BN101", "bn2"), F("BN009", None), F("BN009", None)]
    new = [F("BN101", "bn2"), F("BN101", "bn3"), F("BN009", None)]
    pairs, resolved = match(old, new)
    assert [(o.layer if o else None, n.layer) for o, n in pairs] == [("bn2", "bn2"), (None, "bn3"), (None, None)]
    assert pairs[2][0] is old[2]
    assert resolved == [old[0], old[3]]


# ---------------------------------------------------------------------------- on real reports


def _new_drift_rules(sample_runs):
    """Rules the shifted digits run raises and the reference run does not; BN101/BN102 only fire
    beyond 3 noise levels, so which of them the sample data reaches is the run's, not the test's,
    to say, but BN102 (the last layer's mean shift) always does."""
    shifted = {f["rule"] for f in sample_runs["drift_shifted"].data["findings"]}
    reference = {f["rule"] for f in sample_runs["drift_reference"].data["findings"]}
    rules = shifted - reference
    assert "BN102" in rules, rules
    return rules


def test_gate_counts_only_new_and_worse(sample_runs):
    shifted = load_report(sample_runs["drift_shifted"].path)
    assert not shifted.passed
    apply_baseline(shifted, sample_runs["drift_reference"].path)
    states = {(f.rule, f.layer): f.baseline for f in shifted.findings}
    assert all(state == "new" for (rule, _), state in states.items() if rule in ("BN101", "BN102"))
    assert not shifted.passed
    summary = shifted.baseline
    assert summary["new"] + summary["worse"] + summary["existing"] == len(shifted.findings)
    assert summary["same_model"] is True and summary["kind"] == "report"
    # against itself every finding exists already: the gate passes, the findings stay listed
    same = load_report(sample_runs["drift_shifted"].path).with_baseline(sample_runs["drift_shifted"].path)
    assert same.passed and same.exit_code == 0 and {f.baseline for f in same.findings} == {"existing"}
    assert same.summary()["errors"] == sample_runs["drift_shifted"].data["summary"]["errors"]
    # reversed: the shifted run as baseline, the reference run resolves its drift findings
    ref = load_report(sample_runs["drift_reference"].path).with_baseline(sample_runs["drift_shifted"].path)
    drift_rules = _new_drift_rules(sample_runs)
    assert {r["rule"] for r in ref.baseline["resolved"]} >= drift_rules


def test_worse_on_a_real_report(sample_runs, tmp_path):
    base = json.loads(json.dumps(sample_runs["drift_shifted"].data))
    for f in base["findings"]:
        if f["rule"] == "BN102":
            f["details"]["mean"] *= 0.5  # the baseline drifted half as much
    path = tmp_path / "base.json"
    path.write_text(json.dumps(base), encoding="utf-8")
    report = load_report(sample_runs["drift_shifted"].path).with_baseline(path)
    worse = [f for f in report.findings if f.baseline == "worse"]
    assert worse and {f.rule for f in worse} == {"BN102"}
    assert all(c["reason"].startswith("mean_abs_r ") for c in report.baseline["changes"] if c["state"] == "worse")
    assert not report.passed  # BN102 errors got worse


def test_cli_baseline_on_every_command(sample_runs, tmp_path):
    # audit: a broken model against its own report passes, against the clean model's fails
    broken = sample_runs.get("audit_broken")
    if broken is not None:
        args = ["audit", SAMPLES / "broken" / "digits_cnn_uncalibrated.pt", "--arch", str(SAMPLES / "architectures.py") + ":digits_cnn"]
        assert invoke(*args, "--baseline", broken.path).exit_code == 0
        assert invoke(*args, "--baseline", sample_runs["audit_onnx"].path).exit_code == 1
    # drift: shifted data against the reference run fails (new drift), against itself passes
    drift = ["drift", SAMPLES / "digits_cnn.onnx", DIGITS / "shifted", "--quiet"]
    assert invoke(*drift, "--baseline", sample_runs["drift_reference"].path).exit_code == 1
    assert invoke(*drift, "--baseline", sample_runs["drift_shifted"].path).exit_code == 0
    # fold: a passing run stays passing
    out = tmp_path / "f.onnx"
    result = invoke("fold", SAMPLES / "digits_cnn.onnx", "--out", out, "--no-timing", "--baseline", sample_runs["fold_onnx"].path, "--format", "json")
    assert result.exit_code == 0 and json.loads(result.stdout)["baseline"]["existing"] == 0
    # recalibrate: judged against its own earlier run
    recal = sample_runs["recalibrate_onnx"]
    result = invoke("recalibrate", SAMPLES / "digits_cnn.onnx", DIGITS / "shifted", "--out", tmp_path / "r.onnx",
                    "--baseline", recal.path, "--format", "json")  # fmt: skip
    assert result.exit_code == 0
    assert json.loads(result.stdout)["baseline"]["new"] == 0


def test_stats_baseline_from_save_stats(sample_runs, tmp_path):
    pytest.importorskip("pyarrow")
    for suffix in (".npz", ".parquet"):
        stats = tmp_path / f"shifted{suffix}"
        result = invoke("drift", SAMPLES / "digits_cnn.onnx", DIGITS / "shifted", "--save-stats", stats, "--quiet", "--fail-on", "never")
        assert result.exit_code == 0 and stats.exists()
        report = load_report(sample_runs["drift_shifted"].path).with_baseline(stats)
        base = report.baseline
        assert base["kind"] == "stats" and base["covered_rules"] == ["BN101", "BN102", "BN104"]
        by_rule = {}
        for f in report.findings:
            by_rule.setdefault(f.rule, set()).add(f.baseline)
        # the drift rules are re-evaluated on the same statistics: nothing new there
        assert "BN102" in by_rule
        assert all(by_rule[rule] == {"existing"} for rule in base["covered_rules"] if rule in by_rule)
        # a statistics file cannot speak for the train-mode rules
        assert by_rule.get("BN301", {"new"}) == {"new"}
        ref_stats = tmp_path / f"reference{suffix}"
        invoke("drift", SAMPLES / "digits_cnn.onnx", DIGITS / "reference", "--save-stats", ref_stats, "--quiet", "--fail-on", "never")
        report = load_report(sample_runs["drift_shifted"].path).with_baseline(ref_stats)
        assert {f.baseline for f in report.findings if f.rule in ("BN101", "BN102")} == {"new"}


def test_bad_baselines_exit_2_before_running(sample_runs, tmp_path):
    drift = ["drift", SAMPLES / "digits_cnn.onnx", DIGITS / "shifted"]
    _one_error_line(invoke(*drift, "--baseline", tmp_path / "missing.json"), "does not exist")
    _one_error_line(invoke(*drift, "--baseline", sample_runs["audit_onnx"].path), "`bncheck audit` report", "bncheck drift --format json")
    _one_error_line(invoke("audit", SAMPLES / "digits_cnn.onnx", "--baseline", tmp_path / "stats.npz"), "only be a baseline for `bncheck drift`")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    _one_error_line(invoke(*drift, "--baseline", junk), "cannot be read as saved statistics")
    notes = tmp_path / "notes.json"
    notes.write_text("[]", encoding="utf-8")
    _one_error_line(invoke(*drift, "--baseline", notes), "not a bncheck JSON report")


# ---------------------------------------------------------------------------- bncheck diff


def test_diff_states_and_exit_code(sample_runs, tmp_path):
    ref, shifted = sample_runs["drift_reference"], sample_runs["drift_shifted"]
    result = invoke("diff", ref.path, shifted.path, "--format", "json")
    assert result.exit_code == 1, result.output  # new drift errors in B
    body = json.loads(result.stdout)
    assert body["counts"]["new"] >= 3 and body["passed"] is False and body["same_model"] is True
    drift_rules = _new_drift_rules(sample_runs)
    assert {c["rule"] for c in body["findings"] if c["state"] == "new"} >= drift_rules
    layers = {c["name"]: c for c in body["layers"]}
    assert all(c["presence"] == "both" and c["delta"]["mean_r"] > 0 for c in layers.values())
    back = json.loads(invoke("diff", shifted.path, ref.path, "-f", "json").stdout)
    assert {c["rule"] for c in back["findings"] if c["state"] == "resolved"} >= drift_rules
    assert invoke("diff", shifted.path, ref.path).exit_code == 0
    same = invoke("diff", shifted.path, shifted.path, "-f", "json")
    assert same.exit_code == 0 and set(c["state"] for c in json.loads(same.stdout)["findings"]) == {"unchanged"}
    # --fail-on never: report only
    assert invoke("diff", ref.path, shifted.path, "--fail-on", "never").exit_code == 0


def test_diff_better_and_worse(sample_runs, tmp_path):
    base = json.loads(json.dumps(sample_runs["drift_shifted"].data))
    improved = json.loads(json.dumps(base))
    for f in improved["findings"]:
        if f["rule"] == "BN102":
            f["details"]["mean"] *= 0.5
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(base), encoding="utf-8")
    b.write_text(json.dumps(improved), encoding="utf-8")
    d = diff(a, b)
    assert {c.state for c in d.findings if c.rule == "BN102"} == {"better"}
    assert d.passed
    d = diff(b, a)
    assert {c.state for c in d.findings if c.rule == "BN102"} == {"worse"} and not d.passed and d.exit_code == 1
    frame = d.to_frame()
    assert list(frame.columns) == ["state", "rule", "layer", "severity_a", "severity_b", "message", "reason"]
    assert len(frame) == len(d.findings)


def test_diff_formats_and_errors(sample_runs, tmp_path):
    ref, shifted = sample_runs["drift_reference"], sample_runs["drift_shifted"]
    table = invoke("diff", ref.path, shifted.path).stdout
    assert "new" in table and "Drift by layer (A → B)" in table and "FAILED" in table
    md = tmp_path / "diff.md"
    assert invoke("diff", ref.path, shifted.path, "-o", md).exit_code == 1
    text = md.read_text(encoding="utf-8")
    assert text.startswith("## ❌ bncheck diff (drift)") and "| 🆕 new | `BN10" in text
    quiet = invoke("diff", ref.path, shifted.path, "--quiet")
    assert quiet.stdout.count("\n") == 1
    _one_error_line(invoke("diff", ref.path, sample_runs["audit_onnx"].path), "same command", "an `audit` report")
    _one_error_line(invoke("diff", ref.path, tmp_path / "none.json"), "does not exist")
    _one_error_line(invoke("diff", ref.path, shifted.path, "-f", "html"), "'html'", "'table', 'json', 'markdown'")


def test_diff_table_folds_paths_and_leaves_the_message_room(sample_runs, monkeypatch):
    """At 100 columns the runs' paths were cut to "/work/.../sample_models/…" (the part that
    tells A from B lost) and the message column got the width of a layer name."""
    ref, shifted = sample_runs["drift_reference"], sample_runs["drift_shifted"]
    monkeypatch.setenv("COLUMNS", "100")
    out = invoke("diff", ref.path, shifted.path).stdout
    assert "…" not in out
    lines = out.splitlines()
    runs = "".join(line.split("│")[3].strip() for line in lines[: lines.index(next(x for x in lines if x.startswith("Findings")))] if line.startswith("│"))
    assert shifted.data["data"]["path"].replace(" ", "") in runs.replace(" ", "")
    heading = next(line for line in lines if line.startswith("┃ change"))
    widths = {name.strip(): len(name) for name in heading.strip("┃").split("┃")}
    assert widths["message"] >= 30 and widths["message"] > 2 * widths["layer"] - 4
    assert max(len(line) for line in lines[1:]) <= 100

"""The typed rule context: drift rules read DriftEvidence, BN401 reads FoldEvidence, and a
context without evidence gives no findings (rather than a KeyError)."""

from __future__ import annotations

import numpy as np

from bncheck.layer import BNLayer
from bncheck.numerics.drift import layer_drift
from bncheck.rules import (
    REGISTRY,
    DriftEvidence,
    FoldEvidence,
    RuleContext,
    Verification,
    default_thresholds,
    get_rule,
    run_rules,
)


def _layer(name: str = "bn", channels: int = 4) -> BNLayer:
    return BNLayer(name=name, kind="BatchNorm2d", num_features=channels, eps=1e-5, momentum=0.1,
                   running_mean=np.zeros(channels), running_var=np.ones(channels))  # fmt: skip


def test_drift_rules_read_the_drift_evidence():
    layer = _layer()
    shifted = layer_drift(np.full(4, 2.0), np.ones(4), layer.running_mean, layer.running_var, 1e-5, samples=500, elements=50_000)
    ctx = RuleContext(layers=[layer], thresholds=default_thresholds(), drift=DriftEvidence(layers={"bn": shifted}, samples=500))
    findings = run_rules("drift", ctx)
    assert [(f.rule, f.severity.value) for f in findings if f.rule == "BN101"] == [("BN101", "error")]


def test_rules_without_evidence_find_nothing():
    ctx = RuleContext(layers=[_layer()], thresholds=default_thresholds())
    assert run_rules(("drift", "fold"), ctx) == []


def test_fold_rule_reads_the_fold_evidence():
    failed = Verification(inputs="random", samples=8, max_abs_err=0.5, max_rel_err=0.1, passed=False)
    ctx = RuleContext(layers=[], thresholds=default_thresholds(), fold=FoldEvidence(failed, atol=1e-4, rtol=1e-4))
    (finding,) = run_rules("fold", ctx)
    assert finding.rule == "BN401" and "max relative error 0.1" in finding.message
    assert finding.details["atol"] == 1e-4 and finding.details["passed"] is False
    ctx.fold = FoldEvidence(failed, atol=1e-4, rtol=1e-4, output_mismatch="output 0 has shape (2,) after folding")
    (finding,) = run_rules("fold", ctx)
    assert "shape (2,)" in finding.message


def test_rules_cite_their_references():
    cited = {code for code, r in REGISTRY.items() if r.references}
    assert {"BN102", "BN201", "BN301"} <= cited
    text = get_rule("BN201").documentation()
    assert "References" in text and "arXiv:1803.08494" in text
    assert "References" not in get_rule("BN101").documentation()


def test_one_sample_gives_no_drift_finding_and_bn104_says_why():
    """From one sample (a --stats file of one) a BatchNorm1d's variance is 0 and no noise level
    exists: BN101/BN102 stay silent, BN104 says drift cannot be measured."""
    layer = _layer()
    one = layer_drift(np.full(4, 2.0), np.zeros(4), layer.running_mean, layer.running_var, 1e-5, samples=1, elements=4)
    ctx = RuleContext(layers=[layer], thresholds=default_thresholds(), drift=DriftEvidence(layers={"bn": one}, samples=1))
    findings = run_rules("drift", ctx)
    assert [f.rule for f in findings] == ["BN104"] and "cannot be measured from one sample" in findings[0].message
    two = layer_drift(np.full(4, 2.0), np.zeros(4), layer.running_mean, layer.running_var, 1e-5, samples=2, elements=8)
    ctx = RuleContext(layers=[layer], thresholds=default_thresholds(), drift=DriftEvidence(layers={"bn": two}, samples=2))
    assert "BN101" in {f.rule for f in run_rules("drift", ctx)}

"""JUnit XML: one testcase per BN layer (plus one for model-level findings); findings at or
above ``--fail-on`` are failures, the others are reported in system-out."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from bncheck.report.report import Report
from bncheck.rules.finding import reaches


def render(report: Report, **_: object) -> str:
    by_layer: dict[str | None, list] = {}
    for f in report.findings:
        by_layer.setdefault(f.layer, []).append(f)
    cases = [(layer.name, layer.kind) for layer in report.layers]
    if None in by_layer or not cases:
        cases.insert(0, ("(model)", "model"))
    failures = 0
    suite = ET.Element("testsuite", name=f"bncheck.{report.command}")
    for name, kind in cases:
        key = None if name == "(model)" else name
        case = ET.SubElement(
            suite, "testcase", classname=f"bncheck.{report.command}.{report.model.format}", name=name
        )
        case.set("file", report.model.path)
        found = by_layer.get(key, [])
        failing = [f for f in found if reaches(f.severity, report.fail_on) and f.gating]
        if failing:
            failures += 1
            el = ET.SubElement(
                case,
                "failure",
                message="; ".join(f"{f.rule}: {f.message}" for f in failing),
                type=max(failing, key=lambda f: f.severity.rank).severity.value,
            )
            el.text = "\n".join(f"[{f.severity.value}] {f.rule} {f.message}" for f in failing)
        rest = [f for f in found if f not in failing]
        if rest:
            ET.SubElement(case, "system-out").text = "\n".join(
                f"[{f.severity.value}] {f.rule} {f.message}" for f in rest
            )
        if kind != "model":
            case.set("kind", kind)
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", "0")
    root = ET.Element("testsuites", name="bncheck", tests=str(len(cases)), failures=str(failures))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def combine(texts: list[str], reports: list[Report]) -> str:
    """Several reports: one ``<testsuites>`` holding every report's ``<testsuite>``."""
    roots = [ET.fromstring(text.split("?>", 1)[1]) for text in texts]
    root = ET.Element("testsuites", name="bncheck")
    for key in ("tests", "failures"):
        root.set(key, str(sum(int(r.get(key, "0")) for r in roots)))
    for tree, report in zip(roots, reports, strict=True):
        for suite in tree:  # every suite is bncheck.<command>: name the model too
            suite.set("name", f"{suite.get('name')} {report.model.path}")
            root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"

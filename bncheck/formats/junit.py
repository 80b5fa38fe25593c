"""JUnit XML: one testcase per BN layer (plus one for model-level findings); findings at or
above ``--fail-on`` are failures, the others are reported in system-out.

Layer names, paths and messages come from the model file: the document is serialised here, not
by ElementTree, so that any text stays well-formed XML that reads back as the same text.
Characters XML 1.0 cannot carry at all (C0 controls but tab/newline/carriage return, lone
surrogates, U+FFFE/U+FFFF) become ``#xNN`` as pytest's JUnit writer does; ``&``, ``<``, ``>``
and quotes become entities; newlines, tabs and carriage returns in attributes and carriage
returns in text become character references, which XML parsers do not normalise."""

from __future__ import annotations

import re
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
    return document(root)


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
    return document(root)


_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_TEXT = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"}
_ATTRIBUTE = {**_TEXT, '"': "&quot;", "\n": "&#10;", "\t": "&#9;"}


def xml_safe(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot represent (pytest's ``#xNN`` notation)."""
    return _ILLEGAL.sub(lambda m: f"#x{ord(m.group()):02X}", text)


def _escape(text: str | None, table: dict[str, str]) -> str:
    return "".join(table.get(c, c) for c in xml_safe(text or ""))


def _serialise(element: ET.Element, out: list[str]) -> None:
    attributes = "".join(f' {key}="{_escape(value, _ATTRIBUTE)}"' for key, value in element.attrib.items())
    if len(element) or element.text:
        out.append(f"<{element.tag}{attributes}>{_escape(element.text, _TEXT)}")
        for child in element:
            _serialise(child, out)
        out.append(f"</{element.tag}>")
    else:
        out.append(f"<{element.tag}{attributes} />")
    out.append(_escape(element.tail, _TEXT))


def document(root: ET.Element) -> str:
    """``root`` indented, as a UTF-8 XML document."""
    ET.indent(root)
    out: list[str] = []
    _serialise(root, out)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + "".join(out) + "\n"

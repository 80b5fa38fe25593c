"""GitHub Actions workflow commands: one annotation per finding (``::error``, ``::warning``,
``::notice`` for info), shown on the run's summary page and, for files in the checkout, next
to the file. The headline comes first as a plain log line.

Escaping follows the Actions toolkit (``@actions/core`` ``issueCommand``): in the message
``%``, CR and LF become ``%25``, ``%0D``, ``%0A``; in property values ``:`` and ``,`` become
``%3A`` and ``%2C`` as well, so a layer name like ``features.0:bn,1`` or a message with a
newline cannot end the command early or inject another one.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from bncheck.formats.common import headline
from bncheck.report.report import Report
from bncheck.rules import REGISTRY
from bncheck.rules.finding import Finding

#: bncheck severity -> workflow command
COMMANDS = {"error": "error", "warning": "warning", "info": "notice"}


def escape_data(text: str) -> str:
    return str(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(report: Report, finding: Finding) -> str:
    """``::error file=…,line=1,title=…::message`` for one finding."""
    rule = REGISTRY.get(finding.rule)
    title = f"bncheck {finding.rule}" + (f" {rule.name}" if rule is not None else "") + (f" ({finding.layer})" if finding.layer else "")
    properties = {"title": title}
    path = report.model.path
    if path and not str(path).startswith("<"):
        properties = {"file": PurePosixPath(str(path).replace("\\", "/")).as_posix(), "line": "1", **properties}
    message = finding.message + (f" [layer {finding.layer}]" if finding.layer else "") + (f" [{finding.baseline}]" if finding.baseline else "")
    joined = ",".join(f"{key}={escape_property(value)}" for key, value in properties.items())
    return f"::{COMMANDS[finding.severity.value]} {joined}::{escape_data(message)}"


def render(report: Report, **_: object) -> str:
    lines = [escape_data(headline(report))]
    lines += [annotation(report, f) for f in report.findings]
    return "\n".join(lines) + "\n"

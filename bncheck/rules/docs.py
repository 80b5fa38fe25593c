"""The rule list as a table, Markdown (the README's rule table is generated from this) or JSON."""

from __future__ import annotations

import io
import json

from bncheck.errors import UsageError
from bncheck.rules.registry import REGISTRY


def rule_rows() -> list[dict]:
    rows = []
    for code in sorted(REGISTRY):
        r = REGISTRY[code]
        rows.append(
            {
                "code": code,
                "name": r.name,
                "severity": r.severity.value,
                "phase": r.phase,
                "summary": r.summary,
                "thresholds": dict(r.thresholds),
            }
        )
    return rows


def render_rule_list(fmt: str = "table") -> str:
    rows = rule_rows()
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if fmt == "markdown":
        lines = ["| code | name | default | what it catches | thresholds |", "| --- | --- | --- | --- | --- |"]
        for row in rows:
            th = ", ".join(f"`{k}={v:g}`" for k, v in row["thresholds"].items())
            lines.append(f"| {row['code']} | {row['name']} | {row['severity']} | {row['summary']} | {th} |")
        return "\n".join(lines)
    if fmt != "table":
        raise UsageError(f"unknown format {fmt!r} for rules; use table, markdown or json.")
    from rich.console import Console
    from rich.table import Table

    table = Table(title="bncheck rules")
    for col in ("code", "name", "default", "phase", "what it catches"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["code"], row["name"], row["severity"], row["phase"], row["summary"])
    buffer = io.StringIO()
    Console(file=buffer, width=140).print(table)
    return buffer.getvalue().rstrip()

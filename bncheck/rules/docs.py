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


def render_rule_list(fmt: str = "table", width: int | None = None) -> str:
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
    # narrow terminals: the phase goes first (the codes' hundreds say it), names fold, never cut
    cols = ("code", "name", "default", "phase", "what it catches") if (width or 140) >= 100 else ("code", "name", "default", "what it catches")
    keys = {"code": "code", "name": "name", "default": "severity", "phase": "phase", "what it catches": "summary"}
    # code, name and severity are words looked up and copied (--select, --ignore): never broken
    # across lines; only the explanation wraps (folding a word only where it cannot fit)
    for col in cols:
        whole = col != "what it catches"
        widest = max((len(row[keys[col]]) for row in rows), default=0)
        table.add_column(col, no_wrap=whole, min_width=max(len(col), widest) if whole else None, overflow="ellipsis" if whole else "fold")
    for row in rows:
        table.add_row(*(row[keys[col]] for col in cols))
    buffer = io.StringIO()
    Console(file=buffer, width=width or 140).print(table)
    return buffer.getvalue().rstrip()

"""``bncheck diff`` as a terminal table or Markdown (a PR comment: release against candidate)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from bncheck.formats.common import fmt_num, md_cell, md_code

if TYPE_CHECKING:
    from bncheck.report.diff import ReportDiff

STATE_STYLE = {"new": "bold red", "worse": "red", "better": "green", "unchanged": "dim", "resolved": "green"}
STATE_ICON = {"new": "🆕", "worse": "🔺", "better": "🔻", "unchanged": "·", "resolved": "✅"}


def headline(d: ReportDiff) -> str:
    counts = ", ".join(f"{d.count(state)} {state}" for state in ("new", "worse", "better", "unchanged", "resolved"))
    gate = "PASSED" if d.passed else "FAILED"
    return f"bncheck diff ({d.b.command}) {d.a_name} → {d.b_name}: {counts} — {gate} (fail-on {d.fail_on}: new or worse findings)"


def _delta(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:+.3g}"


def _drift_layers(d: ReportDiff):
    return [c for c in d.layers if (c.a or c.b)]


def render_table(d: ReportDiff, *, color: bool = False, width: int | None = None) -> str:
    parts: list = [Text(headline(d), style="bold green" if d.passed else "bold red")]
    facts = Table(title="Runs", title_justify="left")
    for col in ("", d.a_name, d.b_name):
        facts.add_column(col, overflow="fold")  # paths fold: the end that tells A from B stays
    for what, a, b in d.facts():
        facts.add_row(what, a, Text(b, style="bold") if a != b else b)
    parts.append(facts)
    if d.findings:
        table = Table(title="Findings", title_justify="left")
        # long layer names wrap whole, never cut; layer and why keep to a share of the width so
        # that the message has the rest (rich narrows the widest columns first)
        limits = {"layer": max(12, (width or 160) // 6), "why": max(10, (width or 160) // 8)}
        for col in ("change", "rule", "layer", "severity", "message", "why"):
            table.add_column(col, overflow="fold", max_width=limits.get(col))
        for c in d.findings:
            sev = f"{c.severity_a or '-'} → {c.severity_b or '-'}" if c.severity_a != c.severity_b else (c.severity_b or "-")
            table.add_row(Text(c.state, style=STATE_STYLE[c.state]), c.rule, c.layer or "(model)", sev, c.message, c.reason)
        parts.append(table)
    else:
        parts.append(Text("no findings in either run", style="green"))
    layers = _drift_layers(d)
    if layers:
        table = Table(title="Drift by layer (A → B)", title_justify="left")
        table.add_column("layer", overflow="fold")
        for col in ("mean|z|", "Δ", "mean|r|", "Δ", "score", "Δ"):
            table.add_column(col, justify="right")
        for c in layers:
            a, b = c.a or {}, c.b or {}
            row = [c.name + ("" if c.presence == "both" else f" ({c.presence})")]
            for key in ("mean_z", "mean_r", "score"):
                row += [f"{fmt_num(a.get(key))} → {fmt_num(b.get(key))}", _delta(c.delta(key))]
            table.add_row(*row)
        parts.append(table)
    changed = [c for c in d.layers if c.presence != "both" and not (c.a or c.b)]
    for c in changed:
        parts.append(Text(f"layer {c.name}: {c.presence}", style="yellow"))
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=color, no_color=not color, width=width or 160, soft_wrap=False)
    console.print(Group(*parts))
    return buffer.getvalue()


def render_markdown(d: ReportDiff) -> str:
    lines = [f"## {'✅' if d.passed else '❌'} {md_cell(headline(d))}", "", f"| | {md_cell(d.a_name)} | {md_cell(d.b_name)} |", "|---|---|---|"]
    for what, a, b in d.facts():
        lines.append(f"| {what} | {md_cell(a)} | {'**' + md_cell(b) + '**' if a != b else md_cell(b)} |")
    lines.append("")
    if d.findings:
        lines += ["### Findings", "", "| change | rule | layer | severity | message | why |", "|---|---|---|---|---|---|"]
        for c in d.findings:
            sev = f"{c.severity_a or '-'} → {c.severity_b or '-'}" if c.severity_a != c.severity_b else (c.severity_b or "-")
            lines.append(
                f"| {STATE_ICON[c.state]} {c.state} | `{c.rule}` | {md_cell(c.layer or '(model)')} | {sev} | {md_cell(c.message)} | {md_cell(c.reason)} |"
            )
        lines.append("")
    layers = _drift_layers(d)
    if layers:
        lines += ["<details><summary>Drift by layer (A → B)</summary>", "", "| layer | mean \\|z\\| | Δ | mean \\|r\\| | Δ | score | Δ |", "|---|---:|---:|---:|---:|---:|---:|"]
        for c in layers:
            a, b = c.a or {}, c.b or {}
            row = f"| {md_code(c.name)}{'' if c.presence == 'both' else ' (' + c.presence + ')'} |"
            for key in ("mean_z", "mean_r", "score"):
                row += f" {fmt_num(a.get(key))} → {fmt_num(b.get(key))} | {_delta(c.delta(key))} |"
            lines.append(row)
        lines += ["", "</details>", ""]
    return "\n".join(lines) + "\n"

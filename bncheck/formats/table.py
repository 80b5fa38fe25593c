"""The terminal report: a summary line, the layers, the command's section, the findings,
coloured by severity."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from bncheck.formats.bars import bar, drift_level, drift_shape
from bncheck.formats.common import fmt_num, foldable_text, headline
from bncheck.formats.plot import thresholds
from bncheck.formats.section import Section, section_for
from bncheck.report.report import Report

STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
RANK = {"info": 1, "warning": 2, "error": 3}


def _stats(layer) -> str:
    if not layer.has_running_stats:
        return "none"
    with np.errstate(all="ignore"):
        return f"μ∈[{fmt_num(np.nanmin(layer.running_mean), 2)}, {fmt_num(np.nanmax(layer.running_mean), 2)}] σ²∈[{fmt_num(np.nanmin(layer.running_var), 2)}, {fmt_num(np.nanmax(layer.running_var), 2)}]"


def build(report: Report, width: int | None = None) -> Group:
    s = report.summary()
    section = section_for(report)
    # the headline is one line at any width (scripts and CI logs grep it): never wrapped nor cut
    top = Text(headline(report), style="bold green" if s["passed"] else "bold red", no_wrap=True, overflow="ignore")
    parts: list[RenderableType] = [top]
    for note in [*report.notes, *report.model.notes]:
        parts.append(Text(f"note: {note}", style="dim"))
    data = report.data
    if data:
        parts.append(Text(f"data: {data.get('path')} — {data.get('samples')} samples, batch size {data.get('batch_size')}"))
    if report.layers:
        parts += _layers(report, section, width)
    parts += section.table_parts()
    parts += _findings(report)
    for part in parts:  # narrow terminals: cells wrap (long layer names fold), never get cut
        if isinstance(part, Table):
            for column in part.columns:
                column.overflow = "fold"
    return Group(*parts)


def _worst(report: Report) -> tuple[dict[str, str], dict[str, int]]:
    """Per layer, the worst severity of its findings and how many it has."""
    worst: dict[str, str] = {}
    counts: dict[str, int] = {}
    for f in report.findings:
        if f.layer is None:
            continue
        counts[f.layer] = counts.get(f.layer, 0) + 1
        if f.layer not in worst or RANK[f.severity.value] > RANK[worst[f.layer]]:
            worst[f.layer] = f.severity.value
    return worst, counts


#: layer-table columns given up, in this order, when the table would not fit the width
#: (static facts first: ``bncheck audit`` and ``--format json`` still have them)
NARROW_DROPS = ("eps", "mom.", "producer", "kind", "max|z|", "C", "running stats")
RIGHT = {"#", "C", "eps", "mom.", "mean|z|", "max|z|", "mean|r|", "score", "findings"}


def _layer_cells(report: Report, section: Section) -> tuple[list[str], list[dict[str, RenderableType]]]:
    """The layers table's column names and, per layer, its cells by column."""
    drift = any(report.layer_drift(layer.name) is not None for layer in report.layers)
    names = ["#", "layer", "kind", "C", "eps", "mom.", "producer", "fold"]
    names += ["mean|z|", "max|z|", "mean|r|", "score", "drift (│ error)"] if drift else ["running stats"]
    names.append("findings")
    if drift:
        limits = thresholds(report)
        warn_level = min(limits["BN101"]["warning"] / limits["BN101"]["error"], limits["BN102"]["warning"] / limits["BN102"]["error"])
    worst, counts = _worst(report)
    rows = []
    for i, layer in enumerate(report.layers):
        sev = worst.get(layer.name)
        row: dict[str, RenderableType] = {
            "#": str(i),
            "layer": Text(layer.name, style=STYLE.get(sev, "")),
            "kind": layer.kind,
            "C": str(layer.num_features),
            "eps": fmt_num(layer.eps),
            "mom.": fmt_num(layer.momentum),
            "producer": f"{layer.producer_kind or '?'}:{layer.producer}" if layer.producer else "?",
            "fold": section.fold_cell(layer) or foldable_text(layer),
            "findings": Text(str(counts.get(layer.name, 0)) if layer.name in counts else "", style=STYLE.get(sev, "")),
        }
        if drift:
            d = report.layer_drift(layer.name) or {}
            ms, vr = d.get("mean_shift") or {}, d.get("var_log_ratio") or {}
            row.update({"mean|z|": fmt_num(ms.get("mean")), "max|z|": fmt_num(ms.get("max")), "mean|r|": fmt_num(vr.get("mean"))})
            row["score"] = fmt_num(d.get("score"))
            row["drift (│ error)"] = bar(drift_level(report, layer.name, limits), warn_level)
        else:
            row["running stats"] = _stats(layer)
        rows.append(row)
    return names, rows


def _layer_table(names: list[str], rows: list[dict[str, RenderableType]]) -> Table:
    table = Table(title="BN layers", title_justify="left", expand=False)
    for name in names:
        table.add_column(name, justify="right" if name in RIGHT else "left", style="dim" if name == "#" else "")
    for row in rows:
        table.add_row(*(row[name] for name in names))
    return table


def _column_widths(names: list[str], rows: list[dict[str, RenderableType]]) -> dict[str, int]:
    """Each column's share of the width the layers table needs with no word broken, except
    layer names, which fold down to 24 columns: rich's own measure of the column alone (on an
    unbounded console), less its right border, which the next column's left border is. Measured
    once per column: measuring the whole table again for each dropped column cost 5x as much."""
    short = [{**row, "layer": Text(str(row["layer"])[:24])} for row in rows]
    console = Console(width=100_000)
    return {name: Measurement.get(console, console.options, _layer_table([name], short)).minimum - 1 for name in names}


def _needed_width(names: list[str], widths: dict[str, int]) -> int:
    """The width the layers table of columns ``names`` needs: its columns' shares and the
    right border (what rich measures for the whole table; tests/formats check both agree)."""
    return sum(widths[name] for name in names) + 1


def _layers(report: Report, section: Section, width: int | None) -> list[RenderableType]:
    """The layers table (with the drift columns when the report has drift figures, without
    the static columns that do not fit ``width``) and the drift shape."""
    names, rows = _layer_cells(report, section)
    table = _layer_table(names, rows)
    widths = _column_widths(names, rows)
    dropped = []
    for name in NARROW_DROPS:
        if _needed_width(names, widths) <= (width or 160):
            break
        if name in names:
            names = [n for n in names if n != name]
            dropped.append(name)
    if dropped:
        table = _layer_table(names, rows)
    parts: list[RenderableType] = [table]
    if dropped:
        parts.append(Text(f"(narrow terminal: {', '.join(dropped)} not shown; --format json has every column)", style="dim"))
    shape = drift_shape(report) if "score" in names or any(report.layer_drift(layer.name) for layer in report.layers) else None
    return parts if shape is None else [*parts, shape]


def _findings(report: Report) -> list[RenderableType]:
    if not report.findings:
        return [Text("no findings", style="green")]
    table = Table(title="Findings", title_justify="left")
    for col in ("severity", "rule"):
        table.add_column(col, no_wrap=True)
    table.add_column("layer")
    table.add_column("message")
    states = any(f.baseline for f in report.findings)
    if states:
        table.add_column("baseline")
    for f in report.findings:
        table.add_row(
            Text(f.severity.value, style=STYLE[f.severity.value]),
            f.rule,
            f.layer or "(model)",
            f.message,
            *([Text(f.baseline or "", style="bold" if f.baseline in ("new", "worse") else "dim")] if states else []),
        )
    return [table, Text("`bncheck rules CODE` explains a rule.", style="dim")]


def render(report: Report, *, color: bool = False, width: int | None = None, **_: object) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=color, no_color=not color, width=width or 160, soft_wrap=False)
    console.print(build(report, width), crop=False)  # the tables fit the width already; the headline may not
    return buffer.getvalue()

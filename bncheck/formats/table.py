"""The terminal report: a summary line, the layers, the command's section, the findings,
coloured by severity."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console, Group, RenderableType
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


def build(report: Report) -> Group:
    s = report.summary()
    section = section_for(report)
    parts: list[RenderableType] = [Text(headline(report), style="bold green" if s["passed"] else "bold red")]
    for note in [*report.notes, *report.model.notes]:
        parts.append(Text(f"note: {note}", style="dim"))
    data = report.data
    if data:
        parts.append(Text(f"data: {data.get('path')} — {data.get('samples')} samples, batch size {data.get('batch_size')}"))
    if report.layers:
        parts += _layers(report, section)
    parts += section.table_parts()
    parts += _findings(report)
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


def _layers(report: Report, section: Section) -> list[RenderableType]:
    """The layers table (with the drift columns when the report has drift figures) and the
    drift shape."""
    drift = any(report.layer_drift(layer.name) is not None for layer in report.layers)
    table = Table(title="BN layers", title_justify="left", expand=False)
    table.add_column("#", justify="right", style="dim")
    for col in ("layer", "kind"):
        table.add_column(col)
    for col in ("C", "eps", "mom."):
        table.add_column(col, justify="right")
    table.add_column("producer")
    table.add_column("fold")
    if drift:
        limits = thresholds(report)
        warn_level = min(limits["BN101"]["warning"] / limits["BN101"]["error"], limits["BN102"]["warning"] / limits["BN102"]["error"])
        for col in ("mean|z|", "max|z|", "mean|r|", "score"):
            table.add_column(col, justify="right")
        table.add_column("drift (│ error)")
    else:
        table.add_column("running stats")
    table.add_column("findings", justify="right")
    worst, counts = _worst(report)
    for i, layer in enumerate(report.layers):
        sev = worst.get(layer.name)
        row: list[RenderableType] = [
            str(i),
            Text(layer.name, style=STYLE.get(sev, "")),
            layer.kind,
            str(layer.num_features),
            fmt_num(layer.eps),
            fmt_num(layer.momentum),
            f"{layer.producer_kind or '?'}:{layer.producer}" if layer.producer else "?",
            section.fold_cell(layer) or foldable_text(layer),
        ]
        if drift:
            d = report.layer_drift(layer.name) or {}
            ms, vr = d.get("mean_shift") or {}, d.get("var_log_ratio") or {}
            row += [fmt_num(ms.get("mean")), fmt_num(ms.get("max")), fmt_num(vr.get("mean")), fmt_num(d.get("score"))]
            row.append(bar(drift_level(report, layer.name, limits), warn_level))
        else:
            row.append(_stats(layer))
        row.append(Text(str(counts.get(layer.name, 0)) if layer.name in counts else "", style=STYLE.get(sev, "")))
        table.add_row(*row)
    shape = drift_shape(report) if drift else None
    return [table] if shape is None else [table, shape]


def _findings(report: Report) -> list[RenderableType]:
    if not report.findings:
        return [Text("no findings", style="green")]
    table = Table(title="Findings", title_justify="left")
    for col in ("severity", "rule", "layer", "message"):
        table.add_column(col)
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
    console.print(build(report))
    return buffer.getvalue()

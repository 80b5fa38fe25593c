"""The terminal report: a summary line, the layers, the findings, coloured by severity."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from bncheck.formats import fold_section, recalibrate_section
from bncheck.formats.common import fmt_num, foldable_text, headline
from bncheck.report.report import Report

STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def _stats(layer) -> str:
    if not layer.has_running_stats:
        return "none"
    with np.errstate(all="ignore"):
        return f"μ∈[{fmt_num(np.nanmin(layer.running_mean), 2)}, {fmt_num(np.nanmax(layer.running_mean), 2)}] σ²∈[{fmt_num(np.nanmin(layer.running_var), 2)}, {fmt_num(np.nanmax(layer.running_var), 2)}]"


def build(report: Report) -> Group:
    s = report.summary()
    style = "bold green" if s["passed"] else "bold red"
    parts = [Text(headline(report), style=style)]
    for note in [*report.notes, *report.model.notes]:
        parts.append(Text(f"note: {note}", style="dim"))
    data = report.extras.get("data")
    if data:
        parts.append(Text(f"data: {data.get('path')} — {data.get('samples')} samples, batch size {data.get('batch_size')}"))
    worst: dict[str, str] = {}
    counts: dict[str, int] = {}
    rank = {"info": 1, "warning": 2, "error": 3}
    for f in report.findings:
        if f.layer is None:
            continue
        counts[f.layer] = counts.get(f.layer, 0) + 1
        if f.layer not in worst or rank[f.severity.value] > rank[worst[f.layer]]:
            worst[f.layer] = f.severity.value
    if report.layers:
        drift = any("drift" in report.layer_extras.get(layer.name, {}) for layer in report.layers)
        table = Table(title="BN layers", title_justify="left", expand=False)
        table.add_column("#", justify="right", style="dim")
        table.add_column("layer")
        table.add_column("kind")
        table.add_column("C", justify="right")
        table.add_column("eps", justify="right")
        table.add_column("mom.", justify="right")
        table.add_column("producer")
        table.add_column("fold")
        if drift:
            from bncheck.formats.bars import bar, drift_level
            from bncheck.formats.plot import thresholds

            limits = thresholds(report)
            warn_level = min(limits["BN101"]["warning"] / limits["BN101"]["error"], limits["BN102"]["warning"] / limits["BN102"]["error"])
            for col in ("mean|z|", "max|z|", "mean|r|", "score"):
                table.add_column(col, justify="right")
            table.add_column("drift (│ error)")
        else:
            table.add_column("running stats")
        table.add_column("findings", justify="right")
        for i, layer in enumerate(report.layers):
            sev = worst.get(layer.name)
            row = [
                str(i),
                Text(layer.name, style=STYLE.get(sev, "")),
                layer.kind,
                str(layer.num_features),
                fmt_num(layer.eps),
                fmt_num(layer.momentum),
                f"{layer.producer_kind or '?'}:{layer.producer}" if layer.producer else "?",
                fold_section.fold_cell(fold) if (fold := fold_section.layer_fold(report, layer.name)) else foldable_text(layer),
            ]
            if drift:
                d = report.layer_extras.get(layer.name, {}).get("drift") or {}
                ms, vr = d.get("mean_shift") or {}, d.get("var_log_ratio") or {}
                row += [fmt_num(ms.get("mean")), fmt_num(ms.get("max")), fmt_num(vr.get("mean")), fmt_num(d.get("score"))]
                row.append(bar(drift_level(report, layer.name, limits), warn_level))
            else:
                row.append(_stats(layer))
            row.append(Text(str(counts.get(layer.name, 0)) if layer.name in counts else "", style=STYLE.get(sev, "")))
            table.add_row(*row)
        parts.append(table)
        if drift:
            from bncheck.formats.bars import drift_shape

            shape = drift_shape(report)
            if shape is not None:
                parts.append(shape)
    if report.command == "recalibrate":
        parts += [Text(line) for line in recalibrate_section.summary_lines(report)]
        table = Table(title="Drift before -> after", title_justify="left")
        for col in ("layer", "mean|z| before", "after", "mean|r| before", "after"):
            table.add_column(col, justify="left" if col == "layer" else "right")
        for row in recalibrate_section.layer_rows(report):
            table.add_row(*row)
        parts.append(table)
    if report.command == "fold":
        parts += [Text(line) for line in fold_section.summary_lines(report)]
        kept = fold_section.kept_rows(report)
        if kept:
            table = Table(title="Not folded", title_justify="left")
            for col in ("layer", "status", "reason"):
                table.add_column(col)
            for row in kept:
                table.add_row(*row)
            parts.append(table)
    if report.findings:
        table = Table(title="Findings", title_justify="left")
        table.add_column("severity")
        table.add_column("rule")
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
        parts.append(table)
        parts.append(Text("`bncheck rules CODE` explains a rule.", style="dim"))
    else:
        parts.append(Text("no findings", style="green"))
    return Group(*parts)


def render(report: Report, *, color: bool = False, width: int | None = None, **_: object) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=color, no_color=not color, width=width or 160, soft_wrap=False)
    console.print(build(report))
    return buffer.getvalue()

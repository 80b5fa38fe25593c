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
from bncheck.formats.common import (
    ASSUMED_LEGEND,
    ASSUMED_MARK,
    data_summary,
    fmt_num,
    foldable_text,
    headline,
    layer_num,
)
from bncheck.formats.plot import thresholds
from bncheck.formats.section import Section, section_for
from bncheck.report.report import Report
from bncheck.rules import REGISTRY

STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
RANK = {"info": 1, "warning": 2, "error": 3}


def _stats(report: Report, layer) -> str:
    if not layer.has_running_stats:
        # a saved report keeps the fact, not the arrays: "?" there, "none" only when there are none
        return "?" if report.layer_other.get(layer.name, {}).get("has_running_stats") else "none"
    with np.errstate(all="ignore"):
        # one space, between the two ranges: the only place the cell may wrap
        return f"μ∈[{fmt_num(np.nanmin(layer.running_mean), 2)},{fmt_num(np.nanmax(layer.running_mean), 2)}] σ²∈[{fmt_num(np.nanmin(layer.running_var), 2)},{fmt_num(np.nanmax(layer.running_var), 2)}]"


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
        parts.append(Text(f"data: {data_summary(data)}"))
    if report.layers:
        parts += _layers(report, section, width)
    parts += section.table_parts()
    parts += _findings(report, width)
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


BAR = "drift (│=error)"
#: layer-table columns given up, in this order, when the table would not fit the width with no
#: number or word broken (static facts first: ``bncheck audit`` and ``--format json`` still
#: have them; the findings table lists what the count column counts)
NARROW_DROPS = ("eps", "mom.", "producer", "kind", "max|z|", BAR, "C", "fold", "findings", "running stats")
RIGHT = {"#", "C", "eps", "mom.", "mean|z|", "max|z|", "mean|r|", "score", "findings"}
#: columns whose cells may wrap (at spaces; layer names anywhere): every other cell stays whole
WRAPPING = {"layer", "running stats", "producer", "fold"}
#: the layer names shown whole before static columns are given up for them
LAYER_WIDTH = 28


def _layer_cells(report: Report, section: Section) -> tuple[list[str], list[dict[str, RenderableType]]]:
    """The layers table's column names and, per layer, its cells by column."""
    drift = any(report.layer_drift(layer.name) is not None for layer in report.layers)
    names = ["#", "layer", "kind", "C", "eps", "mom.", "producer", "fold"]
    names += ["mean|z|", "max|z|", "mean|r|", "score", BAR] if drift else ["running stats"]
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
            "eps": layer_num(layer, "eps"),
            "mom.": layer_num(layer, "momentum"),
            "producer": f"{layer.producer_kind or '?'}:{layer.producer}" if layer.producer else "?",
            "fold": section.fold_cell(layer) or foldable_text(layer),
            "findings": Text(str(counts.get(layer.name, 0)) if layer.name in counts else "", style=STYLE.get(sev, "")),
        }
        if drift:
            d = report.layer_drift(layer.name) or {}
            ms, vr = d.get("mean_shift") or {}, d.get("var_log_ratio") or {}
            row.update({"mean|z|": fmt_num(ms.get("mean")), "max|z|": fmt_num(ms.get("max")), "mean|r|": fmt_num(vr.get("mean"))})
            row["score"] = fmt_num(d.get("score"))
            row[BAR] = bar(drift_level(report, layer.name, limits), warn_level)
        else:
            row["running stats"] = _stats(report, layer)
        rows.append(row)
    return names, rows


def _layer_table(names: list[str], rows: list[dict[str, RenderableType]], *, whole: bool = False) -> Table:
    """The table of ``names``; ``whole``: only the WRAPPING columns may wrap (the table fits),
    and the layer column keeps names up to LAYER_WIDTH whole (rich would otherwise narrow it
    together with the running statistics, breaking a 24-character name that fits)."""
    table = Table(title="BN layers", title_justify="left", expand=False)
    longest = max((len(str(row["layer"])) for row in rows), default=0)
    for name in names:
        table.add_column(
            name, justify="right" if name in RIGHT else "left", style="dim" if name == "#" else "",
            no_wrap=whole and name not in WRAPPING,
            width=max(len(name), min(longest, LAYER_WIDTH)) if whole and name == "layer" else None,
        )
    for row in rows:
        table.add_row(*(row[name] for name in names))
    return table


def _needed_width(names: list[str], rows: list[dict[str, RenderableType]]) -> int:
    """The width the layers table needs with no number, word or heading broken: layer names
    shown up to LAYER_WIDTH characters, running statistics on two lines (rich's own measure)."""

    def narrowest(row: dict[str, RenderableType]) -> dict[str, RenderableType]:
        short = {**row, "layer": Text(str(row["layer"])[:LAYER_WIDTH])}
        if "running stats" in row:
            short["running stats"] = max(str(row["running stats"]).split(" "), key=len)
        return short

    console = Console(width=100_000)
    return Measurement.get(console, console.options, _layer_table(names, [narrowest(r) for r in rows])).maximum


def _uninformative(names: list[str], rows: list[dict[str, RenderableType]]) -> list[str]:
    """Columns that say "?" on every row: producer and fold of a state dict without --arch (the
    note above the table says producers are unknown), running statistics of a saved report;
    and the findings count when no layer has a finding (an empty column)."""
    unknown = [n for n in ("producer", "fold", "running stats") if n in names and rows and all(str(r[n]) == "?" for r in rows)]
    empty = ["findings"] if "findings" in names and rows and not any(str(r["findings"]) for r in rows) else []
    return unknown + empty


def _layers(report: Report, section: Section, width: int | None) -> list[RenderableType]:
    """The layers table (with the drift columns when the report has drift figures, without
    the static columns that do not fit ``width``) and the drift shape."""
    names, rows = _layer_cells(report, section)
    unknown = _uninformative(names, rows)
    names = [n for n in names if n not in unknown]
    dropped = []
    # a fold report's fold column is its outcome: the last static column given up
    folding = any(section.fold_cell(layer) is not None for layer in report.layers)
    drops = (*(n for n in NARROW_DROPS if n != "fold"), "fold") if folding else NARROW_DROPS
    for name in drops:
        if _needed_width(names, rows) <= (width or 160):
            break
        if name in names:
            names = [n for n in names if n != name]
            dropped.append(name)
    # a table that fits keeps every number whole; one that cannot (a very narrow terminal)
    # wraps its cells rather than cutting them
    table = _layer_table(names, rows, whole=_needed_width(names, rows) <= (width or 160))
    parts: list[RenderableType] = [table]
    if any(str(row[n]).endswith(ASSUMED_MARK) for row in rows for n in ("eps", "mom.") if n in names):
        parts.append(Text(ASSUMED_LEGEND, style="dim"))
    if dropped:
        parts.append(Text(f"({', '.join(dropped)} not shown at {width or 160} columns; a wider terminal or COLUMNS, or --format json, has every column)", style="dim"))
    shape = drift_shape(report) if "score" in names or any(report.layer_drift(layer.name) for layer in report.layers) else None
    return parts if shape is None else [*parts, shape]


def _findings(report: Report, width: int | None = None) -> list[RenderableType]:
    if not report.findings:
        return [Text("no findings", style="green")]
    table = Table(title="Findings", title_justify="left")
    for col in ("severity", "rule"):
        table.add_column(col, no_wrap=True)
    # layer names get at most a quarter of the width, so that the message keeps the rest; a name
    # longer than that goes whole on the message's first line instead of being broken in a column
    layer_width = max(12, (width or 160) // 4)
    inline = any(len(f.layer or "(model)") > layer_width for f in report.findings)
    if not inline:
        table.add_column("layer", max_width=layer_width)
    table.add_column("layer: message" if inline else "message")
    states = any(f.baseline for f in report.findings)
    if states:
        table.add_column("baseline")
    for f in report.findings:
        table.add_row(
            Text(f.severity.value, style=STYLE[f.severity.value]),
            f.rule,
            *([] if inline else [f.layer or "(model)"]),
            Text.assemble((f.layer or "(model)", "bold"), ":\n", f.message) if inline else f.message,
            *([Text(f.baseline or "", style="bold" if f.baseline in ("new", "worse") else "dim")] if states else []),
        )
    return [table, *_fixes(report), Text("`bncheck rules CODE` explains a rule.", style="dim")]


def _fixes(report: Report) -> list[RenderableType]:
    """One "how to fix" line per rule that fired (warnings and errors, by code), from
    the rule's documentation, so that the terminal report ends with what to do."""
    codes = sorted({f.rule for f in report.findings if f.severity.value != "info" and f.rule in REGISTRY})
    # a preprocessing mismatch explains the drift after it: its fix comes first
    codes.sort(key=lambda code: code != "BN103")
    if not codes:
        return []
    table = Table(title="How to fix", title_justify="left", show_header=False, box=None, padding=(0, 1))
    table.add_column("rule", no_wrap=True, style="bold")
    table.add_column("fix", overflow="fold")
    for code in codes:
        table.add_row(code, " ".join(REGISTRY[code].fix.split()))
    return [table]


def render(report: Report, *, color: bool = False, width: int | None = None, **_: object) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=color, no_color=not color, width=width or 160, soft_wrap=False)
    console.print(build(report, width), crop=False)  # the tables fit the width already; the headline may not
    return buffer.getvalue()

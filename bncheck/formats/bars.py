"""Unicode bars and sparklines for the terminal: the shape of the drift across layers at a
glance, without opening a file."""

from __future__ import annotations

import math

from rich.text import Text

from bncheck.report.report import Report

BLOCKS = " ▏▎▍▌▋▊▉█"
SPARKS = "▁▂▃▄▅▆▇█"
#: Width of the per-layer bar; the error threshold sits at the middle.
BAR_WIDTH = 12


def drift_level(report: Report, name: str, table: dict[str, dict[str, float]]) -> float | None:
    """How far a layer is towards its error thresholds: max(mean |z| / BN101.error,
    mean |r| / BN102.error); 1.0 is the error threshold, None when not measured."""
    d = report.layer_drift(name)
    if not d:
        return None
    ratios = []
    for key, code in (("mean_shift", "BN101"), ("var_log_ratio", "BN102")):
        value, limit = d[key]["mean"], table.get(code, {}).get("error")
        if isinstance(value, (int, float)) and math.isfinite(value) and limit:
            ratios.append(value / limit)
    return max(ratios) if ratios else None


def bar(level: float | None, warn_level: float, width: int = BAR_WIDTH) -> Text:
    """A bar whose middle is the error threshold (level 1.0), coloured green below the warning
    level, yellow up to the error threshold, red beyond; ``▶`` marks a bar cut at 2x."""
    if level is None:
        return Text("-", style="dim")
    cells = min(level, 2.0) / 2.0 * width
    full = int(cells)
    rest = int(round((cells - full) * 8))
    if rest == 8:
        full, rest = full + 1, 0
    text = "█" * full + (BLOCKS[rest] if rest and full < width else "")
    if level > 2.0:
        text = text[: width - 1] + "▶"
    style = "red" if level >= 1.0 else "yellow" if level >= warn_level else "green"
    out = Text()
    out.append(text, style=style)
    mid = width // 2
    if len(text) <= mid:  # the error threshold's tick, where the bar does not cover it
        out.append(" " * (mid - len(text)))
        out.append("│", style="dim")
    return Text.assemble(out, " " * (width - len(out.plain)))


def sparkline(values: list[float | None], width: int = 80, *, floor: float = 0.0) -> str:
    """One character per value (max-pooled down to ``width``), ▁ lowest to █ highest; a space
    where a value is missing. ``floor``: the top of the scale is at least this (values far below
    it stay ▁ rather than a relative shape of rounding noise)."""
    if len(values) > width:
        step = len(values) / width
        pooled: list[float | None] = []
        for i in range(width):
            chunk = [v for v in values[int(i * step) : int((i + 1) * step)] if v is not None]
            pooled.append(max(chunk) if chunk else None)
        values = pooled
    finite = [v for v in values if v is not None and math.isfinite(v)]
    top = max([*finite, floor]) if finite else 0.0
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(" ")
        elif top <= 0:
            out.append(SPARKS[0])
        else:
            out.append(SPARKS[min(len(SPARKS) - 1, int(v / top * (len(SPARKS) - 1) + 0.5))])
    return "".join(out)


def drift_shape(report: Report) -> Text | None:
    """``drift shape: ▁▂▃█  (score by layer, network order; max 0.12 at bn3)``."""
    scores: list[float | None] = []
    for layer in report.layers:
        d = report.layer_drift(layer.name)
        score = d.get("score") if d else None
        scores.append(score if isinstance(score, (int, float)) and math.isfinite(score) else None)
    finite = [(s, i) for i, s in enumerate(scores) if s is not None]
    if not finite:
        return None
    best, where = max(finite)
    text = Text("drift shape: ")
    text.append(sparkline(scores, floor=SHAPE_FLOOR), style="bold magenta")
    flat = f"; bars on a 0-{SHAPE_FLOOR:g} scale" if best < SHAPE_FLOOR else ""
    text.append(f"  (score by layer, network order; max {best:.3g} at {report.layers[where].name}{flat})", style="dim")
    return text


#: the drift shape's scale reaches at least this score (a layer at BN101's warning level, mean
#: |z| 0.25, scores about 0.008): a recalibrated model's scores of 1e-13 drew full bars
SHAPE_FLOOR = 1e-3

"""Charts of the HTML report as inline SVG, drawn here in Python (no matplotlib: the HTML report
works on the core install): the per-layer drift chart, the per-channel scatter plots of a
layer, and the small-batch and train/eval bar charts. They read the report's serialised
figures like :mod:`bncheck.formats.plot` (whose colours and helpers they share), so a saved
JSON report draws the same charts.

Sizes: a channel scatter is one ``<path>`` of ``M x yh0`` moves (round caps draw the dots),
coordinates rounded to whole pixels, about 9 bytes a channel; a ResNet-50 report with every
layer's scatter stays far under a megabyte.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from bncheck.formats.html_parts import esc
from bncheck.formats.plot import (
    ERROR_COLOR,
    FIRST_COLOR,
    GRID_COLOR,
    R_COLOR,
    WARN_COLOR,
    Z_COLOR,
    channel_data,
    drift_rows,
    short_names,
    thresholds,
)
from bncheck.report.report import Report
from bncheck.report.results import DriftResult

FONT = 'font-family="-apple-system,Segoe UI,DejaVu Sans,Helvetica,Arial,sans-serif"'
BAR_COLOR = "#9467bd"
#: opacity of a channel dot (overlapping dots show darker)
DOT_OPACITY = 0.8


def _f(value: float) -> str:
    """A coordinate: one decimal, no trailing zeros."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``top``."""
    if not math.isfinite(top) or top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(math.ceil(top / step - 1e-9)) + 1)]


def _svg(width: int, height: int, body: list[str], label: str, id_: str | None = None) -> str:
    ident = f' id="{esc(id_)}"' if id_ else ""
    return (
        f'<svg{ident} xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'style="max-width:{width}px" role="img" aria-label="{esc(label)}" {FONT} font-size="12">'
        f"<title>{esc(label)}</title>" + "".join(body) + "</svg>"
    )


def _x_labels(names: list[str], x_of, y: float, body: list[str]) -> None:
    labels = short_names(names)
    step = max(1, math.ceil(len(labels) / 60))
    for i in range(0, len(labels), step):
        x = x_of(i)
        body.append(f'<text transform="translate({_f(x)},{_f(y)}) rotate(-45)" text-anchor="end" font-size="10" fill="#444">{esc(labels[i])}</text>')


def _y_axis(ticks: list[float], y_of, left: float, right: float, body: list[str]) -> None:
    for t in ticks:
        y = y_of(t)
        body.append(f'<line x1="{_f(left)}" x2="{_f(right)}" y1="{_f(y)}" y2="{_f(y)}" stroke="{GRID_COLOR}"/>')
        body.append(f'<text x="{_f(left - 6)}" y="{_f(y + 4)}" text-anchor="end" font-size="10" fill="#444">{t:g}</text>')


def drift_chart(report: Report) -> str:
    """Mean |z| and mean |r| per layer in network order, the BN101/BN102 warning and error
    thresholds (bands above them shaded), the first drifting layer marked."""
    rows = drift_rows(report)
    names = [row["name"] for row in rows]
    n = max(1, len(rows))
    width = int(min(1160, max(720, 18 * n + 120)))
    height, left, right, top_pad, bottom = 380, 56, width - 16, 34, 280
    t = thresholds(report)
    zw, ze, rw, re = t["BN101"]["warning"], t["BN101"]["error"], t["BN102"]["warning"], t["BN102"]["error"]
    values = [v for row in rows for v in (row["z"], row["r"]) if isinstance(v, (int, float)) and math.isfinite(v)]
    ticks = nice_ticks(max([*values, ze, re, 0.0]) * 1.15)
    top = ticks[-1]

    def x_of(i: float) -> float:
        return left + (i + 0.5) * (right - left) / n

    def y_of(v: float) -> float:
        return bottom - (min(v, top) / top) * (bottom - top_pad)

    body = [f'<text x="{left}" y="18" font-size="14" font-weight="600">Drift by layer</text>']
    _y_axis(ticks, y_of, left, right, body)
    if (zw, ze) == (rw, re):
        body.append(f'<rect x="{left}" y="{_f(y_of(ze))}" width="{right - left}" height="{_f(y_of(zw) - y_of(ze))}" fill="{WARN_COLOR}" fill-opacity="0.10"/>')
        body.append(f'<rect x="{left}" y="{top_pad}" width="{right - left}" height="{_f(y_of(ze) - top_pad)}" fill="{ERROR_COLOR}" fill-opacity="0.08"/>')
        lines = [(zw, WARN_COLOR, "6 4", f"warning threshold {zw:g}"), (ze, ERROR_COLOR, "", f"error threshold {ze:g}")]
    else:
        lines = [(zw, Z_COLOR, "6 4", f"BN101 warning {zw:g}"), (ze, Z_COLOR, "", f"BN101 error {ze:g}"),
                 (rw, R_COLOR, "6 4", f"BN102 warning {rw:g}"), (re, R_COLOR, "", f"BN102 error {re:g}")]  # fmt: skip
    for k, (value, colour, dash, label) in enumerate(lines):
        y = y_of(value)
        body.append(f'<line x1="{left}" x2="{right}" y1="{_f(y)}" y2="{_f(y)}" stroke="{colour}" stroke-width="1.6"' + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
        x = right - 4 - 150 * (k % 2 == 0) - 300 * (k // 2)  # side by side: close lines keep readable labels
        body.append(f'<text x="{x}" y="{_f(y - 4)}" text-anchor="end" font-size="10" fill="{colour}">{esc(label)}</text>')
    first = report.result.first_drifting_layer if isinstance(report.result, DriftResult) else None
    if first in names:
        x = x_of(names.index(first))
        body.append(f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{top_pad}" y2="{bottom}" stroke="{FIRST_COLOR}" stroke-width="1.6" stroke-dasharray="2 3"/>')
        anchor = "start" if names.index(first) < n * 0.7 else "end"
        body.append(f'<text x="{_f(x + (6 if anchor == "start" else -6))}" y="{top_pad + 12}" text-anchor="{anchor}" fill="{FIRST_COLOR}" font-size="11">first drifting layer: {esc(short_names([first], 40)[0])}</text>')
    for key, colour, label in (("z", Z_COLOR, "mean |z|"), ("r", R_COLOR, "mean |r|")):
        points = [(x_of(i), y_of(row[key]), row) for i, row in enumerate(rows) if isinstance(row[key], (int, float)) and math.isfinite(row[key])]
        if not points:
            continue
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2.2" points="' + " ".join(f"{_f(x)},{_f(y)}" for x, y, _ in points) + '"/>')
        radius = 4 if n <= 60 else 2.5
        for x, y, row in points:
            mark = (f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{radius}"' if key == "z"
                    else f'<rect x="{_f(x - radius)}" y="{_f(y - radius)}" width="{2 * radius}" height="{2 * radius}"')  # fmt: skip
            body.append(f'{mark} fill="{colour}"><title>{esc(row["name"])}: {label} {row[key]:.3g}</title>' + ("</circle>" if key == "z" else "</rect>"))
    body.append(f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#888"/>')
    _x_labels(names, x_of, bottom + 12, body)
    legend_y = height - 10
    body.append(f'<circle cx="{left + 6}" cy="{legend_y - 4}" r="4" fill="{Z_COLOR}"/><text x="{left + 16}" y="{legend_y}">mean |z| (mean shift)</text>')
    body.append(f'<rect x="{left + 182}" y="{legend_y - 8}" width="8" height="8" fill="{R_COLOR}"/><text x="{left + 196}" y="{legend_y}">mean |r| (variance log-ratio)</text>')
    body.append(f'<text x="{right}" y="{legend_y}" text-anchor="end" fill="#444">BN layer (network order)</text>')
    return _svg(width, height, body, "mean |z| and mean |r| per BN layer in network order with the warning and error thresholds", "drift-svg")


def _panel(xs: Sequence, ys: Sequence, score: Sequence, *, log: bool, colour: str, title: str, what: str, x0: int) -> list[str]:
    """One scatter panel (stored on x, measured on y) of 300x250 at ``x0``."""
    size, top_pad, left = 210, 30, x0 + 50
    body = [f'<text x="{x0 + 4}" y="16" font-size="12" font-weight="600">{esc(title)}</text>']
    points = [
        (float(x), float(y), abs(float(s))) for x, y, s in zip(xs, ys, score, strict=True)
        if x is not None and y is not None and s is not None and math.isfinite(x) and math.isfinite(y) and math.isfinite(s)
        and (not log or (x > 0 and y > 0))
    ]  # fmt: skip
    if not points:
        return [*body, f'<text x="{left + 60}" y="{top_pad + 100}">no finite values</text>']
    tf = math.log10 if log else float
    lo = min(min(tf(p[0]), tf(p[1])) for p in points)
    hi = max(max(tf(p[0]), tf(p[1])) for p in points)
    pad = (hi - lo) * 0.06 or abs(hi) * 0.1 or 1.0
    lo, hi = lo - pad, hi + pad

    def at(v: float, flip: bool) -> float:
        frac = (tf(v) - lo) / (hi - lo)
        return (top_pad + size - frac * size) if flip else (left + frac * size)

    body.append(f'<rect x="{left}" y="{top_pad}" width="{size}" height="{size}" fill="none" stroke="#bbb"/>')
    body.append(f'<line x1="{left}" y1="{top_pad + size}" x2="{left + size}" y2="{top_pad}" stroke="#888" stroke-dasharray="5 4"/>')
    dots = "".join(f"M{round(at(x, False))} {round(at(y, True))}h0" for x, y, _ in points)
    body.append(f'<path d="{dots}" stroke="{colour}" stroke-opacity="{DOT_OPACITY}" stroke-width="6" stroke-linecap="round" fill="none"/>')
    worst = max(points, key=lambda p: p[2])
    wx, wy = at(worst[0], False), at(worst[1], True)
    body.append(f'<circle cx="{_f(wx)}" cy="{_f(wy)}" r="7" fill="none" stroke="{ERROR_COLOR}" stroke-width="1.8"/>')
    body.append(f'<text x="{left}" y="{top_pad + size + 44}" fill="{ERROR_COLOR}" font-size="10">max {what} {worst[2]:.2g} (circled)</text>')
    for value, anchor_x, anchor_y, rotate in ((lo, left, top_pad + size + 14, False), (hi, left + size, top_pad + size + 14, False)):
        shown = 10**value if log else value
        body.append(f'<text x="{_f(anchor_x)}" y="{_f(anchor_y)}" text-anchor="middle" font-size="9" fill="#444">{shown:.3g}</text>')
        if not rotate:
            body.append(f'<text x="{left - 4}" y="{_f(top_pad + size - (value - lo) / (hi - lo) * size + 3)}" text-anchor="end" font-size="9" fill="#444">{shown:.3g}</text>')
    body.append(f'<text x="{left}" y="{top_pad + size + 30}" font-size="10" fill="#444">x: stored{" (log)" if log else ""}, y: on DATA</text>')
    return body


def channel_chart(report: Report, layer: str) -> str | None:
    """Stored against measured mean (left) and variance (right, log-log) of ``layer``, one dot
    per channel; the dashed diagonal is "no drift", the worst channel is circled. None when
    the report carries no per-channel figures for it."""
    data = channel_data(report, layer)
    if data is None:
        return None
    body = _panel(data["running_mean"], data["mean"], data["z"], log=False, colour=Z_COLOR, title="mean per channel", what="|z|", x0=0)
    body += _panel(data["running_var"], data["var"], data["r"], log=True, colour=R_COLOR, title="variance per channel", what="|r|", x0=300)
    return _svg(600, 292, body, f"stored against measured mean and variance per channel of {layer}")


def bar_chart(report: Report, per_layer: dict[str, list[float]], colours: list[str], labels: list[str], title: str, limit: float | None = None) -> str | None:
    """Grouped bars, one group per layer of ``per_layer`` (``{layer: [value per series]}``) in
    network order; a red dashed line at ``limit``."""
    names = [layer.name for layer in report.layers if layer.name in per_layer]
    if not names:
        return None
    n, k = len(names), len(colours)
    width = int(min(1160, max(720, 18 * n + 120)))
    left, right, top_pad, bottom = 56, width - 16, 34, 230
    values = [v for name in names for v in per_layer[name] if math.isfinite(v)]
    ticks = nice_ticks(max([*values, limit or 0.0, 1e-12]) * 1.1)
    top = ticks[-1]

    def y_of(v: float) -> float:
        return bottom - (max(0.0, min(v, top)) / top) * (bottom - top_pad)

    slot = (right - left) / n
    body = [f'<text x="{left}" y="18" font-size="14" font-weight="600">{esc(title)}</text>']
    _y_axis(ticks, y_of, left, right, body)
    bar = slot * 0.8 / k
    for i, name in enumerate(names):
        for j, value in enumerate(per_layer[name]):
            if not math.isfinite(value):
                continue
            x = left + i * slot + slot * 0.1 + j * bar
            body.append(f'<rect x="{_f(x)}" y="{_f(y_of(value))}" width="{_f(bar)}" height="{_f(bottom - y_of(value))}" fill="{colours[j]}"><title>{esc(name)}: {esc(labels[j])} {value:.3g}</title></rect>')
    if limit is not None:
        body.append(f'<line x1="{left}" x2="{right}" y1="{_f(y_of(limit))}" y2="{_f(y_of(limit))}" stroke="{ERROR_COLOR}" stroke-dasharray="6 4" stroke-width="1.4"/>')
    body.append(f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#888"/>')
    _x_labels(names, lambda i: left + (i + 0.5) * slot, bottom + 12, body)
    x = left
    for colour, label in zip(colours, labels, strict=True):
        body.append(f'<rect x="{x}" y="322" width="10" height="10" fill="{colour}"/><text x="{x + 14}" y="331">{esc(label)}</text>')
        x += 14 + 7 * len(label) + 24
    return _svg(width, 340, body, title)


def small_batch_chart(report: Report) -> str | None:
    """BN201: the scatter of per-batch statistics at the training batch size, per layer."""
    sb = report.result.small_batch if isinstance(report.result, DriftResult) else None
    per_layer = sb.layers if sb is not None else {}
    values = {name: [_num(v.mean_scatter), _num(v.var_scatter)] for name, v in per_layer.items()}
    limit = thresholds(report).get("BN201", {}).get("mean_scatter")
    return bar_chart(report, values, [Z_COLOR, R_COLOR], ["batch-mean scatter (channel std devs)", "batch-variance scatter (log-ratio)"],
                     f"Small-batch risk at batch size {sb.batch_size if sb is not None else None}", limit)  # fmt: skip


def train_eval_chart(report: Report) -> str | None:
    """BN301: per layer, how far batch statistics (train mode) are from the running ones."""
    te = report.result.train_eval if isinstance(report.result, DriftResult) else None
    extra = te.extra if te is not None else {}  # per-layer figures: only in reports of older versions
    per_layer = extra.get("per_layer") or {}
    values = {name: [_num(v)] for name, v in per_layer.items()}
    return bar_chart(report, values, [BAR_COLOR], ["batch vs running statistics (mean squared Hellinger)"],
                     f"Train vs eval mode at batch size {extra.get('batch_size')}")  # fmt: skip


def _num(value) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0

"""Charts of a report, drawn with matplotlib (the optional ``report`` extra:
``pip install 'bncheck[report]'``): the per-layer drift chart (also written alone by
``--plot FILE.png|svg``), per-channel scatter plots, and the small-batch and train/eval figures
of ``bncheck drift``. Every function reads only the report's serialised figures (``to_dict``
shapes), so a saved JSON report draws the same charts as a live run.

Uses matplotlib's object API (``Figure``), never pyplot: no global backend is switched, so a
notebook's own plotting is left alone.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bncheck.errors import UsageError
from bncheck.report.report import Report
from bncheck.report.results import DriftResult
from bncheck.rules import default_thresholds

Z_COLOR = "#1f77b4"  # mean |z|: blue
R_COLOR = "#ff7f0e"  # mean |r|: orange
WARN_COLOR = "#e6a700"
ERROR_COLOR = "#d62728"
FIRST_COLOR = "#6a3d9a"
GRID_COLOR = "#dddddd"

#: Registry defaults, used when a report does not record the thresholds it was judged by.
DEFAULT_THRESHOLDS = {"BN101": {"warning": 0.25, "error": 0.5}, "BN102": {"warning": 0.25, "error": 0.5}}


def require_matplotlib() -> None:
    """Raise a one-sentence UsageError (exit 2) when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise UsageError(
            "--plot and Report.plot() draw with matplotlib, which is not installed; "
            "install it with `pip install 'bncheck[report]'`."
        ) from exc


def drift_rows(report: Report) -> list[dict[str, Any]]:
    """Per layer in network order: name, mean |z|, mean |r|, score (None where not measured)."""
    rows = []
    for layer in report.layers:
        d = report.layer_drift(layer.name)
        if not d:
            rows.append({"name": layer.name, "z": None, "r": None, "score": None})
            continue
        rows.append(
            {
                "name": layer.name,
                "z": d["mean_shift"]["mean"],
                "r": d["var_log_ratio"]["mean"],
                "score": d.get("score"),
            }
        )
    return rows


def _drift(report: Report) -> DriftResult:
    """The report's drift result (an empty one for a report of another command)."""
    if isinstance(report.result, DriftResult):
        return report.result
    return DriftResult(data=None, layers={}, first_drifting_layer=None)


def has_drift(report: Report) -> bool:
    return any(row["z"] is not None or row["r"] is not None for row in drift_rows(report))


def thresholds(report: Report) -> dict[str, dict[str, float]]:
    """The thresholds the report was judged by (recorded by drift), else the registry's."""
    recorded = _drift(report).thresholds or {}
    out = {code: dict(values) for code, values in DEFAULT_THRESHOLDS.items()}
    out.update(default_thresholds())
    for code, values in recorded.items():
        out.setdefault(code, {}).update(values)
    return out


def short_names(names: list[str], limit: int = 26) -> list[str]:
    """Layer names made short enough for an axis: a suffix every name shares (ONNX's
    ``/BatchNormalization``) and a leading ``/`` are dropped, long names are cut in the middle."""
    if not names:
        return []
    parts = [n.split("/") for n in names]
    common = 0
    if len(names) > 1:
        while all(len(p) > common + 1 for p in parts) and len({p[-1 - common] for p in parts}) == 1:
            common += 1
    out = []
    for name, p in zip(names, parts, strict=True):
        text = "/".join(p[: len(p) - common]) if common else name
        text = text.strip("/") or name
        if len(text) > limit:
            keep = (limit - 1) // 2
            text = text[:keep] + "…" + text[-(limit - 1 - keep) :]
        out.append(text)
    return out


def _figure(width: float, height: float):
    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def _style(ax) -> None:
    ax.grid(True, axis="y", color=GRID_COLOR, linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _x_labels(ax, names: list[str]) -> None:
    labels = short_names(names)
    n = len(labels)
    step = max(1, math.ceil(n / 40))
    ax.set_xticks(range(0, n, step))
    rotate = n > 6 or max((len(s) for s in labels), default=0) > 12
    ax.set_xticklabels(
        labels[::step], rotation=45 if rotate else 0, ha="right" if rotate else "center", fontsize=9
    )
    ax.set_xlim(-0.6, n - 0.4)


def drift_figure(report: Report):
    """mean |z| and mean |r| per layer in network order, the BN101/BN102 warning and error
    thresholds drawn (bands above them shaded), the first drifting layer marked."""
    rows = drift_rows(report)
    if not has_drift(report):
        raise UsageError("the report has no drift figures to plot (it is not a `bncheck drift` report with measured layers).")
    names = [row["name"] for row in rows]
    n = len(rows)
    fig = _figure(min(16.0, max(9.0, 0.35 * n + 5)), 5.0)
    ax = fig.add_subplot()
    _style(ax)
    t = thresholds(report)
    zw, ze = t["BN101"]["warning"], t["BN101"]["error"]
    rw, re = t["BN102"]["warning"], t["BN102"]["error"]
    xs = list(range(n))
    z = [math.nan if row["z"] is None else row["z"] for row in rows]
    r = [math.nan if row["r"] is None else row["r"] for row in rows]
    finite = [v for v in z + r if math.isfinite(v)]
    top = max([*finite, ze, re, 0.0]) * 1.18 or 1.0
    if (zw, ze) == (rw, re):
        ax.axhspan(zw, ze, color=WARN_COLOR, alpha=0.10, linewidth=0)
        ax.axhspan(ze, top * 2, color=ERROR_COLOR, alpha=0.08, linewidth=0)
        ax.axhline(zw, color=WARN_COLOR, linestyle="--", linewidth=1.4, label=f"warning threshold {zw:g}")
        ax.axhline(ze, color=ERROR_COLOR, linestyle="-", linewidth=1.4, label=f"error threshold {ze:g}")
    else:
        ax.axhline(zw, color=Z_COLOR, linestyle="--", linewidth=1.0, alpha=0.7, label=f"BN101 warning {zw:g}")
        ax.axhline(ze, color=Z_COLOR, linestyle="-", linewidth=1.0, alpha=0.7, label=f"BN101 error {ze:g}")
        ax.axhline(rw, color=R_COLOR, linestyle="--", linewidth=1.0, alpha=0.7, label=f"BN102 warning {rw:g}")
        ax.axhline(re, color=R_COLOR, linestyle="-", linewidth=1.0, alpha=0.7, label=f"BN102 error {re:g}")
    marker = 7 if n <= 40 else 4
    ax.plot(xs, z, color=Z_COLOR, marker="o", markersize=marker, linewidth=2.2, label="mean |z| (mean shift)")
    ax.plot(xs, r, color=R_COLOR, marker="s", markersize=marker, linewidth=2.2, label="mean |r| (variance log-ratio)")
    first = _drift(report).first_drifting_layer
    if first in names:
        i = names.index(first)
        ax.axvline(i, color=FIRST_COLOR, linestyle=":", linewidth=1.6)
        ax.annotate(
            f"first drifting layer\n{short_names([first], 40)[0]}",
            xy=(i, top * 0.97),
            xytext=(6, 0),
            textcoords="offset points",
            ha="left" if i < n * 0.7 else "right",
            va="top",
            fontsize=9,
            color=FIRST_COLOR,
        )
    ax.set_ylim(0, top)
    _x_labels(ax, names)
    ax.set_ylabel("mean over channels")
    ax.set_xlabel("BN layer (network order)")
    ax.set_title(f"Drift by layer — {Path(report.model.path).name}", loc="left", fontsize=12, fontweight="bold")
    fig.legend(loc="outside lower center", fontsize=9, frameon=False, ncol=4)
    return fig


def channel_data(report: Report, layer: str) -> dict[str, list] | None:
    return (_drift(report).channels or {}).get(layer)


def channel_figure(report: Report, layer: str):
    """Two scatter plots of one layer, one point per channel: stored running mean against the
    mean measured on DATA, and the same for the variance (log-log); the line y = x is "no
    drift", the channel with the largest |z| (left) and |r| (right) is marked."""
    data = channel_data(report, layer)
    if data is None:
        raise UsageError(
            f"the report has no per-channel figures for layer {layer!r}; run drift with --channels "
            "(or --format html) to record them."
        )
    fig = _figure(11.0, 4.6)
    left, right = fig.subplots(1, 2)
    pairs = [
        (left, data["running_mean"], data["mean"], data["z"], "running_mean (stored)", "mean on DATA", Z_COLOR, "|z|", False),
        (right, data["running_var"], data["var"], data["r"], "running_var (stored)", "variance on DATA", R_COLOR, "|r|", True),
    ]
    for ax, xs, ys, score, xlabel, ylabel, color, what, log in pairs:
        _style(ax)
        ax.grid(True, axis="x", color=GRID_COLOR, linewidth=0.8)
        points = [
            (x, y, abs(s)) for x, y, s in zip(xs, ys, score, strict=True)
            if x is not None and y is not None and s is not None and math.isfinite(x) and math.isfinite(y)
            and (not log or (x > 0 and y > 0))
        ]  # fmt: skip
        if not points:
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
            continue
        px, py, ps = zip(*points, strict=True)
        lo, hi = min(min(px), min(py)), max(max(px), max(py))
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
        pad = (hi - lo) * 0.05 or abs(hi) * 0.1 or 1.0
        ends = [lo / 1.3, hi * 1.3] if log else [lo - pad, hi + pad]
        ax.plot(ends, ends, color="#888888", linewidth=1.0, linestyle="--", label="y = x (no drift)")
        ax.scatter(px, py, s=22, color=color, alpha=0.75, edgecolors="white", linewidths=0.4, label="channel")
        worst = max(range(len(ps)), key=lambda i: ps[i])
        ax.scatter([px[worst]], [py[worst]], s=70, facecolors="none", edgecolors=ERROR_COLOR, linewidths=1.8)
        ax.annotate(
            f"max {what} {ps[worst]:.2g}", xy=(px[worst], py[worst]), xytext=(8, -4),
            textcoords="offset points", fontsize=9, color=ERROR_COLOR,
        )  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Per-channel statistics of {layer}", x=0.01, ha="left", fontsize=12, fontweight="bold")
    return fig


def _layer_bars(report: Report, per_layer: dict[str, Any], draw: Callable[[Any, list[str]], None], title: str, ylabel: str):
    """A figure with one bar group per layer of ``per_layer`` (network order), drawn by
    ``draw(axes, names)``, with the layer names below and ``title`` and ``ylabel``; None when
    no layer has figures."""
    names = [layer.name for layer in report.layers if layer.name in per_layer]
    if not names:
        return None
    fig = _figure(min(16.0, max(9.0, 0.35 * len(names) + 5)), 4.0)
    ax = fig.add_subplot()
    _style(ax)
    draw(ax, names)
    _x_labels(ax, names)
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    ax.set_ylabel(ylabel)
    return fig


def small_batch_figure(report: Report):
    """BN201: how far per-batch statistics at the training batch size scatter, per layer."""
    sb = _drift(report).small_batch
    per_layer = sb.layers if sb is not None else {}
    limit = thresholds(report).get("BN201", {}).get("mean_scatter")

    def draw(ax, names: list[str]) -> None:
        xs = range(len(names))
        width = 0.38
        ms = [_num(per_layer[n].mean_scatter) for n in names]
        vs = [_num(per_layer[n].var_scatter) for n in names]
        ax.bar([x - width / 2 for x in xs], ms, width, color=Z_COLOR, label="batch-mean scatter (channel std devs)")
        ax.bar([x + width / 2 for x in xs], vs, width, color=R_COLOR, label="batch-variance scatter (log-ratio)")
        if limit is not None:
            ax.axhline(limit, color=ERROR_COLOR, linestyle="--", linewidth=1.3, label=f"BN201 mean-scatter threshold {limit:g}")
        ax.legend(loc="upper left", fontsize=8)

    flip = sb.flip_rate if sb is not None else None
    extra = f", {flip:.1%} of predictions change in train mode" if isinstance(flip, (int, float)) else ""
    title = f"Small-batch risk at batch size {sb.batch_size if sb else None} ({sb.samples if sb else None} samples{extra})"
    return _layer_bars(report, per_layer, draw, title, "RMS over batches")


def train_eval_figure(report: Report):
    """BN301: per layer, how far batch statistics (train mode) are from the running ones."""
    te = _drift(report).train_eval
    extra = te.extra if te is not None else {}  # per-layer figures: only in reports of older versions
    per_layer = extra.get("per_layer") or {}

    def draw(ax, names: list[str]) -> None:
        values = [_num(per_layer[n]) for n in names]
        worst = max(range(len(values)), key=lambda i: values[i])
        bars = ax.bar(range(len(names)), values, 0.6, color=["#9467bd" if i != worst else ERROR_COLOR for i in range(len(names))])
        if len(names) <= 24:
            ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], fontsize=8, padding=2)

    parts = []
    if te is not None and isinstance(te.top1_agreement, (int, float)):
        parts.append(f"top-1 agreement {te.top1_agreement:.1%}")
    if te is not None and isinstance(te.relative_error, (int, float)):
        parts.append(f"relative output error {te.relative_error:.2g}")
    title = f"Train vs eval mode at batch size {extra.get('batch_size')}: " + ", ".join(parts)
    return _layer_bars(report, per_layer, draw, title, "batch vs running statistics\n(mean squared Hellinger)")


def _num(value) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0


def figure_bytes(fig, fmt: str) -> bytes:
    """The figure as PNG or SVG bytes (SVG text stays text: smaller and searchable)."""
    import matplotlib

    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "bncheck"}):
        # no creation date in the file: the same report gives the same bytes
        metadata = {"Date": None} if fmt == "svg" else None
        fig.savefig(buffer, format=fmt, dpi=100 if fmt == "png" else None, facecolor="white", metadata=metadata)
    return buffer.getvalue()


def plot_format(path: Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in (".png", ".svg"):
        raise UsageError(f"--plot {path}: use a .png or .svg file name.")
    return suffix[1:]


def plot_bytes(report: Report, path: Path) -> bytes:
    """The drift chart of ``report`` in the format ``path`` names (.png or .svg)."""
    fmt = plot_format(path)
    require_matplotlib()
    if not isinstance(report.result, DriftResult):
        raise UsageError(
            f"--plot draws the drift chart; this `{report.command}` report has no drift figures (use it with drift reports)."
        )
    return figure_bytes(drift_figure(report), fmt)

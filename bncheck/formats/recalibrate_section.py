"""The recalibration part of the human-readable reports: method, passes, accuracy and the
per-layer drift before -> after."""

from __future__ import annotations

from bncheck.formats.common import fmt_num
from bncheck.report.report import Report


def summary_lines(report: Report) -> list[str]:
    rc = report.extras.get("recalibration") or {}
    if not rc:
        return []
    passes = rc.get("passes") or []
    modes = ", ".join(p["mode"] for p in passes)
    acc = rc.get("accuracy") or {}
    lines = [
        f"method: {rc.get('method')} (running_var: {rc.get('variance')}); {rc.get('layers')} layer(s) recalibrated",
        f"passes over the data: {rc.get('estimation_passes')} to estimate ({modes}), {rc.get('total_passes')} in all with the before/after drift runs",
    ]
    if acc.get("before") is not None:
        after = acc.get("after")
        lines.append(f"accuracy on DATA: {acc['before']:.1%} -> {after:.1%}" if after is not None else f"accuracy before: {acc['before']:.1%}")
    out = rc.get("output") or {}
    lines.append(f"output: {out.get('path')} ({out.get('kind')})")
    return lines


def layer_rows(report: Report) -> list[tuple[str, str, str, str, str]]:
    """(layer, mean|z| before, after, mean|r| before, after) per layer."""
    rows = []
    for layer in report.layers:
        extra = report.layer_extras.get(layer.name, {})
        b, a = extra.get("before") or {}, extra.get("after") or {}
        rows.append(
            (
                layer.name,
                fmt_num((b.get("mean_shift") or {}).get("mean")),
                fmt_num((a.get("mean_shift") or {}).get("mean")),
                fmt_num((b.get("var_log_ratio") or {}).get("mean")),
                fmt_num((a.get("var_log_ratio") or {}).get("mean")),
            )
        )
    return rows

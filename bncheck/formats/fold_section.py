"""The ``bncheck fold`` part of the human-readable formats: per-layer outcome cells and the
summary lines (verification record, counts, sizes, speedup). Plain text; table.py and
markdown.py place it."""

from __future__ import annotations

from typing import Any

from bncheck.formats.common import fmt_num
from bncheck.report.report import Report


def layer_fold(report: Report, name: str) -> dict[str, Any] | None:
    return report.layer_extras.get(name, {}).get("fold")


def fold_cell(fold: dict[str, Any]) -> str:
    """``folded → conv1``, ``affine``, ``kept``."""
    if fold["status"] == "folded":
        return f"folded → {fold.get('into') or '?'}"
    return fold["status"]


def kept_rows(report: Report) -> list[tuple[str, str, str]]:
    """(layer, status, reason) of every layer that was not folded."""
    rows = []
    for layer in report.layers:
        fold = layer_fold(report, layer.name)
        if fold and fold["status"] != "folded":
            rows.append((layer.name, fold["status"], fold.get("reason") or ""))
    return rows


def _size(value) -> str:
    if value is None:
        return "-"
    value = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def summary_lines(report: Report) -> list[str]:
    """Verification, counts, sizes and speed, one fact per line."""
    v = report.extras.get("verification")
    f = report.extras.get("fold")
    if not v or not f:
        return []
    tol = f.get("tolerance") or {}
    lines = [
        f"verification: {'passed' if v['passed'] else 'FAILED'} on {v['samples']} {v['inputs']} sample(s): "
        f"max abs error {fmt_num(v['max_abs_err'])}, max relative error {fmt_num(v['max_rel_err'])} "
        f"(atol {fmt_num(tol.get('atol'))}, rtol {fmt_num(tol.get('rtol'))})",
        f"layers: {f['layers_folded']} folded, {f['layers_kept']} kept"
        + (f", {f['layers_affine']} affine" if f.get("layers_affine") else ""),
    ]
    params, nodes, sizes = f.get("parameters") or {}, f.get("nodes") or {}, f.get("file_size") or {}
    lines.append(
        f"parameters: {fmt_num(params.get('before'))} → {fmt_num(params.get('after'))}; "
        f"nodes: {fmt_num(nodes.get('before'))} → {fmt_num(nodes.get('after'))}; "
        f"file size: {_size(sizes.get('before'))} → {_size(sizes.get('after'))}"
    )
    timing = f.get("timing")
    if timing:
        lines.append(
            f"speedup: {timing['speedup']:.2f}x ({fmt_num(timing['original_ms'])} ms → {fmt_num(timing['folded_ms'])} ms "
            f"per batch of {timing['batch']}, {timing['runtime']})"
        )
    output = f.get("output") or {}
    if output.get("path"):
        state = "written" if output.get("written") else "not written"
        lines.append(f"output: {output['path']} ({output.get('kind')}, {state})")
    return lines

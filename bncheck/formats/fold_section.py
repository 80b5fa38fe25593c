"""The ``bncheck fold`` section of the human-readable formats (a :class:`FoldResult`):
per-layer outcome cells, the summary lines (verification record, counts, sizes, speedup) and
the layers that were not folded."""

from __future__ import annotations

from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from bncheck.formats.common import fmt_num
from bncheck.formats.html_parts import esc
from bncheck.formats.section import Section
from bncheck.layer import BNLayer
from bncheck.report.results import FoldResult


def fold_cell(fold: dict[str, Any]) -> str:
    """``folded → conv1``, ``affine``, ``kept``."""
    if fold["status"] == "folded":
        return f"folded → {fold.get('into') or '?'}"
    return fold["status"]


def _size(value) -> str:
    if value is None:
        return "-"
    value = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _verification_line(result: FoldResult) -> str:
    v, f = result.verification, result.figures
    if v.samples == 0 and not _changed(result):
        return "verification: not needed: nothing was folded, the model is unchanged"
    if v.samples == 0:
        return "verification: whole model not run (no input could be built); the folded sites were proved on their own"
    line = (
        f"verification: {'passed' if v.passed else 'FAILED'} on {v.samples} {v.inputs} sample(s): "
        f"max abs error {fmt_num(v.max_abs_err)}, max relative error {fmt_num(v.max_rel_err)} "
        f"(atol {fmt_num(f.atol)}, rtol {fmt_num(f.rtol)})"
    )
    return line + _near_zero(v, f)


def _near_zero(v, f) -> str:
    """Where the whole-model check passed on atol alone (the relative error above rtol): the
    outputs on those inputs are near zero, so the check says little and the site proofs are the
    evidence (PP-OCR's detector maps random inputs to a near-zero probability map)."""
    try:
        abs_err, rel_err, rtol = float(v.max_abs_err), float(v.max_rel_err), float(f.rtol)
    except (TypeError, ValueError):
        return ""
    if not v.passed or not rel_err > rtol or not 0 < rel_err < float("inf"):
        return ""
    return (f"; passed on atol alone: the outputs on these inputs are near zero (scale {fmt_num(abs_err / rel_err)}), "
            "so the per-site proofs carry the evidence (--verify DATA checks on real inputs)")


def _changed(result: FoldResult) -> bool:
    return any(outcome.get("status") in ("folded", "affine") for outcome in result.outcomes.values())


def _inputs_line(result: FoldResult) -> list[str]:
    used = result.inputs
    if used is None or (used.origin == "none" and not _changed(result)):
        return []
    shapes = "; ".join("×".join(str(d) for d in s) for s in used.shapes or [])
    return [f"verification inputs: {used.origin}{f' ({shapes})' if shapes else ''}: {used.why}"]


def _proofs_line(result: FoldResult) -> list[str]:
    if not result.site_proofs:
        return []
    counts = result.proof_counts()
    worst = max(result.site_proofs.values(), key=lambda p: p.max_rel_err if p.max_rel_err is not None else -1.0)
    line = (
        f"site proofs: {counts.passed} passed, {counts.failed} failed (kept), "
        f"{counts.not_proved} not proved on their own"
    )
    if worst.max_rel_err is not None:
        line += f"; worst {worst.layer}: max abs error {fmt_num(worst.max_abs_err)}, max relative error {fmt_num(worst.max_rel_err)}"
    return [line]


def site_lines(result: FoldResult, *, failed_only: bool = False) -> list[str]:
    """One line per proved site (``failed_only``: per site that did not pass): its verdict,
    errors and the input it ran on."""
    lines = []
    for name, proof in result.site_proofs.items():
        if failed_only and proof.passed:
            continue
        verdict = {True: "passed", False: "FAILED", None: "not proved"}[proof.passed]
        shape = "×".join(str(d) for d in proof.input_shape) if proof.input_shape else "-"
        errors = (f": max abs error {fmt_num(proof.max_abs_err)}, max relative error {fmt_num(proof.max_rel_err)} on {shape}"
                  if proof.max_abs_err is not None else "")
        lines.append(f"{name}: {verdict}{errors}{f' ({proof.reason})' if proof.reason else ''}")
    return lines


def summary_lines(result: FoldResult) -> list[str]:
    """Verification, counts, sizes and speed, one fact per line."""
    f = result.figures
    lines = [
        _verification_line(result),
        *_inputs_line(result),
        *_proofs_line(result),
        f"layers: {f.layers_folded} folded, {f.layers_kept} kept" + (f", {f.layers_affine} affine" if f.layers_affine else ""),
    ]
    params, nodes, sizes = f.parameters, f.nodes, f.file_size
    lines.append(
        f"parameters: {fmt_num(params.before)} → {fmt_num(params.after)}; "
        f"nodes: {fmt_num(nodes.before)} → {fmt_num(nodes.after)}; "
        f"file size: {_size(sizes.before)} → {_size(sizes.after)}"
    )
    timing = f.timing
    if timing:
        lines.append(
            f"speedup: {timing.speedup:.2f}x ({fmt_num(timing.original_ms)} ms → {fmt_num(timing.folded_ms)} ms "
            f"per batch of {timing.batch}, {timing.runtime})"
        )
    if f.output.path:
        state = "written" if f.output.written else "not written"
        lines.append(f"output: {f.output.path} ({f.output.kind}, {state})")
    return lines


class FoldSection(Section):
    result_type = FoldResult
    fold_column = "fold"
    result: FoldResult

    def summary_lines(self) -> list[str]:
        return summary_lines(self.result)

    def fold_cell(self, layer: BNLayer, *, reason: bool = False) -> str | None:
        fold = self.result.outcomes.get(layer.name)
        if not fold:
            return None
        text = fold_cell(fold)
        return f"{text}: {fold.get('reason') or ''}" if reason and fold["status"] != "folded" else text

    def kept_rows(self) -> list[tuple[str, str, str]]:
        """(layer, status, reason) of every layer that was not folded."""
        rows = []
        for layer in self.report.layers:
            fold = self.result.outcomes.get(layer.name)
            if fold and fold["status"] != "folded":
                rows.append((layer.name, fold["status"], fold.get("reason") or ""))
        return rows

    def table_parts(self) -> list[RenderableType]:
        parts: list[RenderableType] = [Text(line) for line in self.summary_lines()]
        # the summary line above has the counts and the worst site; list the sites that did not
        # pass (every site, each with its errors: --format json, `site_proof` per layer)
        sites = site_lines(self.result, failed_only=True)
        if sites:
            parts.append(Text("site proofs that did not pass (original pair in float64 against the folded op, on its own):"))
            parts.extend(Text(f"  {line}") for line in sites)
        kept = self.kept_rows()
        if kept:
            table = Table(title="Not folded", title_justify="left")
            for col in ("layer", "status", "reason"):
                table.add_column(col)
            for row in kept:
                table.add_row(*row)
            parts.append(table)
        return parts

    def markdown_lines(self) -> list[str]:
        lines = ["### Fold", ""] + [f"- {line}" for line in self.summary_lines()] + [""]
        sites = site_lines(self.result)
        if sites:
            lines += ["#### Site proofs", "", *[f"- {line}" for line in sites], ""]
        return lines

    def html_top(self) -> str:
        lines = self.summary_lines()
        parts = ["<h2 id=\"fold\">Fold</h2>"]
        if lines:
            parts.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in lines) + "</ul>")
        sites = site_lines(self.result)
        if sites:
            parts.append("<h3>Site proofs</h3><ul>" + "".join(f"<li>{esc(line)}</li>" for line in sites) + "</ul>")
        kept = self.kept_rows()
        if kept:
            parts.append(
                "<h3>Not folded</h3><table><tr><th>layer</th><th>status</th><th>reason</th></tr>"
                + "".join(f"<tr><td>{esc(a)}</td><td>{esc(b)}</td><td>{esc(c)}</td></tr>" for a, b, c in kept)
                + "</table>"
            )
        return "\n".join(parts)

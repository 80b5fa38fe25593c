"""GitHub-flavoured Markdown for a PR comment or ``$GITHUB_STEP_SUMMARY``."""

from __future__ import annotations

from bncheck.formats.common import (
    fmt_num,
    foldable_text,
    layer_num,
    limit_note,
    md_cell,
    md_code,
    preprocessing_pipeline,
    verdict,
)
from bncheck.formats.section import Section, section_for
from bncheck.report.report import Report

ICONS = {"error": "🔴", "warning": "🟠", "info": "🔵"}


def render(report: Report, **_: object) -> str:
    s = report.summary()
    section = section_for(report)
    lines = [
        f"## bncheck {report.command}: {'✅' if s['passed'] else '❌'} {verdict(report)}",
        "",
        f"**Model** {md_code(report.model.path)} ({report.model.format}) — {s['layers']} BN layer(s): "
        f"{s['errors']} error(s), {s['warnings']} warning(s), {s['infos']} info(s).",
        "",
    ]
    for note in [*report.notes, *report.model.notes]:
        lines.append(f"> {note}")
    if report.notes or report.model.notes:
        lines.append("")
    data = report.data
    if data:
        pipeline = preprocessing_pipeline(data)
        tail = f"; preprocessing: {md_code(pipeline)}" if pipeline else ""
        lines += [f"**Data** {md_code(data.get('path'))} — {data.get('samples')} samples{limit_note(data)}, batch size {data.get('batch_size')}{tail}.", ""]
    lines += section.markdown_lines()
    lines += _findings(report)
    if report.layers:
        lines += _layers(report, section)
    lines.append(f"<sub>bncheck {report.to_dict()['tool']['version']} · `{report.model.sha256[:12]}`</sub>")
    return "\n".join(lines) + "\n"


def _findings(report: Report) -> list[str]:
    if not report.findings:
        return []
    states = any(f.baseline for f in report.findings)
    lines = ["### Findings", "", "| | rule | layer | message |" + (" baseline |" if states else ""),
             "|---|---|---|---|" + ("---|" if states else "")]  # fmt: skip
    for f in report.findings:
        lines.append(
            f"| {ICONS[f.severity.value]} {f.severity.value} | `{f.rule}` | {md_cell(f.layer or '(model)')} | {md_cell(f.message)} |"
            + (f" {f.baseline or ''} |" if states else "")
        )
    return [*lines, ""]


def _layers(report: Report, section: Section) -> list[str]:
    drift = any(report.layer_drift(layer.name) is not None for layer in report.layers)
    head = "| layer | kind | C | eps | producer | foldable |"
    sep = "|---|---|---:|---:|---|---|"
    if drift:
        head += " mean \\|z\\| | max \\|z\\| | mean \\|r\\| | score |"
        sep += "---:|---:|---:|---:|"
    lines = ["<details><summary>Layers</summary>", "", head, sep]
    for layer in report.layers:
        fold = section.fold_cell(layer, reason=True)
        row = (
            f"| {md_code(layer.name)} | {layer.kind} | {layer.num_features} | {layer_num(layer, 'eps', ' (assumed)')} | "
            f"{md_cell(layer.producer or '-')} | {md_cell(fold) if fold else foldable_text(layer)} |"
        )
        if drift:
            d = report.layer_drift(layer.name) or {}
            ms, vr = d.get("mean_shift") or {}, d.get("var_log_ratio") or {}
            row += f" {fmt_num(ms.get('mean'))} | {fmt_num(ms.get('max'))} | {fmt_num(vr.get('mean'))} | {fmt_num(d.get('score'))} |"
        lines.append(row)
    return [*lines, "", "</details>", ""]

"""GitHub-flavoured Markdown for a PR comment or ``$GITHUB_STEP_SUMMARY``."""

from __future__ import annotations

from bncheck.formats import fold_section, recalibrate_section
from bncheck.formats.common import fmt_num, foldable_text, verdict
from bncheck.report.report import Report

ICONS = {"error": "🔴", "warning": "🟠", "info": "🔵"}


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(report: Report, **_: object) -> str:
    s = report.summary()
    lines = [
        f"## bncheck {report.command}: {'✅' if s['passed'] else '❌'} {verdict(report)}",
        "",
        f"**Model** `{report.model.path}` ({report.model.format}) — {s['layers']} BN layer(s): "
        f"{s['errors']} error(s), {s['warnings']} warning(s), {s['infos']} info(s).",
        "",
    ]
    for note in [*report.notes, *report.model.notes]:
        lines.append(f"> {note}")
    if report.notes or report.model.notes:
        lines.append("")
    data = report.extras.get("data")
    if data:
        lines += [f"**Data** `{data.get('path')}` — {data.get('samples')} samples, batch size {data.get('batch_size')}.", ""]
    if report.command == "recalibrate":
        lines += ["### Recalibration", ""] + [f"- {line}" for line in recalibrate_section.summary_lines(report)] + [""]
        lines += ["| layer | mean \\|z\\| before | after | mean \\|r\\| before | after |", "|---|---:|---:|---:|---:|"]
        lines += [f"| `{_cell(r[0])}` | {r[1]} | {r[2]} | {r[3]} | {r[4]} |" for r in recalibrate_section.layer_rows(report)] + [""]
    if report.command == "fold":
        lines += ["### Fold", ""] + [f"- {line}" for line in fold_section.summary_lines(report)] + [""]
    if report.findings:
        states = any(f.baseline for f in report.findings)
        lines += ["### Findings", "", "| | rule | layer | message |" + (" baseline |" if states else ""),
                  "|---|---|---|---|" + ("---|" if states else "")]  # fmt: skip
        for f in report.findings:
            lines.append(
                f"| {ICONS[f.severity.value]} {f.severity.value} | `{f.rule}` | {_cell(f.layer or '(model)')} | {_cell(f.message)} |"
                + (f" {f.baseline or ''} |" if states else "")
            )
        lines.append("")
    if report.layers:
        drift = any("drift" in report.layer_extras.get(layer.name, {}) for layer in report.layers)
        head = "| layer | kind | C | eps | producer | foldable |"
        sep = "|---|---|---:|---:|---|---|"
        if drift:
            head += " mean \\|z\\| | max \\|z\\| | mean \\|r\\| | score |"
            sep += "---:|---:|---:|---:|"
        lines += ["<details><summary>Layers</summary>", "", head, sep]
        for layer in report.layers:
            row = (
                f"| `{_cell(layer.name)}` | {layer.kind} | {layer.num_features} | {fmt_num(layer.eps)} | "
                f"{_cell(layer.producer or '-')} | {_fold_text(report, layer)} |"
            )
            if drift:
                d = report.layer_extras.get(layer.name, {}).get("drift") or {}
                ms, vr = d.get("mean_shift") or {}, d.get("var_log_ratio") or {}
                row += f" {fmt_num(ms.get('mean'))} | {fmt_num(ms.get('max'))} | {fmt_num(vr.get('mean'))} | {fmt_num(d.get('score'))} |"
            lines.append(row)
        lines += ["", "</details>", ""]
    lines.append(f"<sub>bncheck {report.to_dict()['tool']['version']} · `{report.model.sha256[:12]}`</sub>")
    return "\n".join(lines) + "\n"


def _fold_text(report: Report, layer) -> str:
    fold = fold_section.layer_fold(report, layer.name)
    if not fold:
        return foldable_text(layer)
    text = fold_section.fold_cell(fold)
    return _cell(text if fold["status"] == "folded" else f"{text}: {fold.get('reason') or ''}")

"""One self-contained HTML file for people: the verdict, the drift chart, the small-batch and
train/eval figures, the findings by rule, the layers with their findings (sortable, filterable,
each expandable to its facts and per-channel chart: :mod:`bncheck.formats.html_layers`), the
rules' explanations, and how the report was made. No network and no extra: CSS and a little
JavaScript are inline, every chart is inline SVG drawn in Python (:mod:`bncheck.formats.svg`),
so the core install renders it (matplotlib is only for ``--plot`` and ``Report.plot``).
"""

from __future__ import annotations

import datetime as _dt
import sys

from bncheck.errors import UsageError
from bncheck.formats.common import fmt_num, foldable_text, layer_num, package_versions, verdict
from bncheck.formats.html_layers import CSS as LAYERS_CSS
from bncheck.formats.html_layers import SCRIPT, chosen_layer, findings_by_rule, layer_table
from bncheck.formats.html_parts import cell_class, chip, esc, facts, inline
from bncheck.formats.plot import thresholds
from bncheck.formats.section import Section, section_for
from bncheck.report.report import Report
from bncheck.rules import REGISTRY
from bncheck.rules.finding import Severity, reaches

CSS = """
:root { --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --info: #0969da; --muted: #57606a;
        --line: #d0d7de; --soft: #f6f8fa;
        font: 15px/1.5 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: #1f2328; }
* { box-sizing: border-box; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 20px 0 6px; }
.sub { color: var(--muted); margin: 0 0 16px; }
.verdict { display: flex; align-items: center; gap: 20px; padding: 16px 20px; border-radius: 8px;
           color: #fff; margin: 12px 0 8px; }
.verdict.passed { background: var(--ok); } .verdict.failed { background: var(--bad); }
.verdict .word { font-size: 30px; font-weight: 700; letter-spacing: 1px; }
.verdict .why { font-size: 15px; }
.counts { display: flex; gap: 12px; flex-wrap: wrap; margin: 8px 0 16px; }
.count { border: 1px solid var(--line); border-radius: 6px; padding: 6px 14px; background: var(--soft); }
.count b { font-size: 20px; margin-right: 6px; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 8px 0; }
.facts dt { color: var(--muted); } .facts dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; margin: 8px 0; font-size: 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.flag-error td.name { border-left: 4px solid var(--bad); }
tr.flag-warning td.name { border-left: 4px solid #d4a72c; }
td.cell-error { background: #ffebe9; color: var(--bad); font-weight: 600; }
td.cell-warning { background: #fff8c5; color: var(--warn); font-weight: 600; }
.chip { display: inline-block; border-radius: 10px; padding: 0 8px; font-size: 12px; font-weight: 600; color: #fff; }
.sev-error { background: var(--bad); } .sev-warning { background: #bf8700; } .sev-info { background: var(--info); }
.state { display: inline-block; border: 1px solid var(--line); border-radius: 10px; padding: 0 7px; font-size: 12px; }
.state-new, .state-worse { border-color: var(--bad); color: var(--bad); }
.state-existing { color: var(--muted); }
.bar { background: #eaeef2; height: 10px; width: 120px; border-radius: 5px; overflow: hidden; display: inline-block; }
.bar span { display: block; height: 100%; }
figure { margin: 12px 0 20px; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
details { margin: 6px 0; } summary { cursor: pointer; }
.rule { border: 1px solid var(--line); border-radius: 6px; padding: 4px 12px; margin: 8px 0; }
.rule p { margin: 4px 0 8px; }
.note { background: #ddf4ff; border-left: 4px solid var(--info); padding: 6px 12px; margin: 6px 0; }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
      white-space: pre-wrap; overflow-wrap: anywhere; }
footer { color: var(--muted); font-size: 13px; margin-top: 32px; }
"""


PAGE_CSS = "body { margin: 0; background: #fff; } main { max-width: 1200px; margin: 0 auto; padding: 24px 32px 48px; }"


def scoped_css(css: str = CSS, scope: str = ".bncheck") -> str:
    """``css`` with every selector limited to elements inside ``scope`` (``:root`` becomes the
    scope itself), so the styles cannot leak into a notebook or a page that embeds the report."""
    out = []
    for block in css.split("}"):
        if "{" not in block:
            continue
        selectors, body = block.split("{", 1)
        scoped = []
        for sel in selectors.split(","):
            sel = sel.strip()
            scoped.append(scope if sel == ":root" else f"{scope} {sel}")
        out.append(f"{', '.join(scoped)} {{{body}}}")
    return "\n".join(out)


def render(report: Report, *, layer: str | None = None, **_: object) -> str:
    """The whole page. ``layer`` is the layer opened on load (default: the one with the
    highest drift score)."""
    title = f"bncheck {report.command} — {report.model.path}"
    section = section_for(report)
    opened = chosen_layer(report, layer)
    body = [
        _header(report, section),
        _baseline(report),
        section.html_top(),
        findings_by_rule(report),
        section.html_details(layer),
        layer_table(report, section, opened),
        _data(report),
        _explanations(report),
        _provenance(report),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{esc(title)}</title>\n<style>\n{PAGE_CSS}\n{scoped_css(CSS + LAYERS_CSS)}\n</style>\n</head>\n<body>\n"
        "<main class=\"bncheck\">\n"
        + "\n".join(part for part in body if part)
        + f"\n</main>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


def render_fragment(report: Report) -> str:
    """Summary, findings and layers without charts or page wrapper (Jupyter's display)."""
    section = section_for(report)
    return (
        f"<div class=\"bncheck\"><style>{scoped_css()}</style>"
        + _header(report, section) + _findings(report) + _layers(report, section) + "</div>"
    )


def _header(report: Report, section: Section) -> str:
    s = report.summary()
    state = "passed" if s["passed"] else "failed"
    word = "PASSED" if s["passed"] else "FAILED"
    parts = [
        f"<h1>bncheck {esc(report.command)}: {esc(report.model.path)}</h1>",
        f"<p class=\"sub\">{esc(report.model.format)} model, {s['layers']} batch-norm layer(s) · {esc(verdict(report))}</p>",
        f"<div class=\"verdict {state}\" role=\"status\"><span class=\"word\">{word}</span>"
        f"<span class=\"why\">exit code {report.exit_code}: {esc(_why(report))}</span></div>",
        "<div class=\"counts\">"
        f"<span class=\"count\"><b>{s['errors']}</b>error(s)</span>"
        f"<span class=\"count\"><b>{s['warnings']}</b>warning(s)</span>"
        f"<span class=\"count\"><b>{s['infos']}</b>info(s)</span>"
        f"<span class=\"count\"><b>{s['layers']}</b>BN layer(s)</span></div>",
    ]
    items = [("model", f"<code>{esc(report.model.path)}</code> ({esc(report.model.format)})")]
    if report.model.sha256:
        items.append(("sha256", f"<code>{esc(report.model.sha256)}</code>"))
    data = report.data
    if data:
        items.append(("data", f"<code>{esc(data.get('path', '-'))}</code>: {esc(data.get('samples'))} samples, batch size {esc(data.get('batch_size'))}"))
    items += section.html_facts()
    parts.append("<dl class=\"facts\">" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items) + "</dl>")
    for note in [*report.notes, *report.model.notes]:
        parts.append(f"<div class=\"note\">{esc(note)}</div>")
    return "\n".join(parts)


def _why(report: Report) -> str:
    """Why the gate passed or failed, in words."""
    if report.fail_on == "never":
        return "the gate is off (--fail-on never)"
    failing = report.failing()
    if failing:
        why = f"{len(failing)} finding(s) at or above --fail-on {report.fail_on}"
        return why + (" that are new or worse than the baseline" if report.baseline else "")
    why = f"no finding reaches --fail-on {report.fail_on}"
    if report.baseline and any(reaches(f.severity, report.fail_on) for f in report.findings):
        why += " except ones the baseline already had"
    return why


def _baseline(report: Report) -> str:
    b = report.baseline
    if not b:
        return ""
    parts = [
        "<h2 id=\"baseline\">Baseline</h2>",
        f"<p>Compared with <code>{esc(b['path'])}</code> ({'a saved JSON report' if b['kind'] == 'report' else 'saved statistics'}"
        + ("" if b.get("same_model") in (None, True) else ", made on a different model file")
        + f"): <b>{b['new']}</b> new, <b>{b['worse']}</b> worse, <b>{b['existing']}</b> existing, "
        f"<b>{len(b['resolved'])}</b> resolved. Only new and worse findings fail the gate.</p>",
    ]
    if b.get("covered_rules") is not None:
        parts.append(f"<p class=\"sub\">The baseline speaks for {esc(', '.join(b['covered_rules']))} only; other rules' findings count as new.</p>")
    if b["resolved"]:
        rows = "".join(
            f"<tr><td>{chip(r['severity'])}</td><td><code>{esc(r['rule'])}</code></td><td>{esc(r['layer'] or '(model)')}</td><td>{esc(r['message'])}</td></tr>"
            for r in b["resolved"]
        )
        parts.append("<h3>Resolved since the baseline</h3><table><tr><th>severity</th><th>rule</th><th>layer</th><th>message</th></tr>" + rows + "</table>")
    return "\n".join(parts)


def _findings(report: Report, *, explain: bool = False) -> str:
    if not report.findings:
        return "<h2 id=\"findings\">Findings</h2><p>No findings.</p>"
    with_state = any(f.baseline for f in report.findings)
    head = "<tr><th>severity</th><th>rule</th><th>layer</th><th>message</th>" + ("<th>baseline</th>" if with_state else "") + "</tr>"
    order = sorted(report.findings, key=lambda f: -f.severity.rank)
    rows = []
    for f in order:
        state = f"<td><span class=\"state state-{esc(f.baseline)}\">{esc(f.baseline)}</span></td>" if with_state else ""
        rule = f"<a href=\"#rule-{esc(f.rule)}\"><code>{esc(f.rule)}</code></a>" if explain else f"<code>{esc(f.rule)}</code>"
        rows.append(
            f"<tr class=\"flag-{f.severity.value}\"><td class=\"name\">{chip(f.severity.value)}</td><td>{rule}</td>"
            f"<td>{esc(f.layer or '(model)')}</td><td>{esc(f.message)}</td>{state}</tr>"
        )
    parts = [f"<h2 id=\"findings\">Findings ({len(report.findings)})</h2>", "<table>" + head + "".join(rows) + "</table>"]
    if explain:
        parts.append("<p class=\"sub\">Each rule is explained at the end of the report (<a href=\"#rules\">what the rules mean</a>).</p>")
    return "\n".join(parts)


def _explanations(report: Report) -> str:
    codes = sorted({f.rule for f in report.findings})
    if not codes:
        return ""
    parts = ["<h2 id=\"rules\">What the rules mean</h2>"]
    for code in codes:
        rule = REGISTRY.get(code)
        if rule is None:
            parts.append(f"<div class=\"rule\" id=\"rule-{esc(code)}\"><p><b>{esc(code)}</b>: not known to this bncheck version.</p></div>")
            continue
        sections = [("What it does", rule.what), ("Why is this bad?", rule.why), ("Example", rule.example), ("How to fix", rule.fix)]
        inner = "".join(f"<p><b>{title}</b><br>{inline(text)}</p>" for title, text in sections)
        parts.append(
            f"<details class=\"rule\" id=\"rule-{esc(code)}\" open><summary><b>{esc(code)}</b> {esc(rule.name)} "
            f"({esc(rule.severity.value)} by default): {inline(rule.summary)}</summary>{inner}</details>"
        )
    return "\n".join(parts)


def _layers(report: Report, section: Section) -> str:
    if not report.layers:
        return ""
    worst: dict[str, Severity] = {}
    counts: dict[str, int] = {}
    for f in report.findings:
        if f.layer is not None:
            counts[f.layer] = counts.get(f.layer, 0) + 1
            if f.layer not in worst or f.severity.rank > worst[f.layer].rank:
                worst[f.layer] = f.severity
    drift = any(report.layer_drift(layer.name) is not None for layer in report.layers)
    if drift:
        head = ("<tr><th>#</th><th>layer</th><th>kind</th><th class=\"num\">C</th><th class=\"num\">mean |z|</th>"
                "<th class=\"num\">max |z| (ch)</th><th class=\"num\">mean |r|</th><th class=\"num\">max |r| (ch)</th>"
                "<th class=\"num\">score</th><th>score bar</th><th class=\"num\">findings</th></tr>")  # fmt: skip
        cells = _drift_cells(report)
    else:
        head = ("<tr><th>#</th><th>layer</th><th>kind</th><th class=\"num\">C</th><th class=\"num\">eps</th>"
                "<th class=\"num\">momentum</th><th>producer</th><th>" + section.fold_column + "</th>"
                "<th class=\"num\">findings</th></tr>")  # fmt: skip
        cells = _static_cells(section)
    rows = []
    for i, layer in enumerate(report.layers):
        sev = worst.get(layer.name)
        cls = f" class=\"flag-{sev.value}\"" if sev else ""
        start = f"<tr{cls}><td class=\"num\">{i}</td><td class=\"name\"><code>{esc(layer.name)}</code></td><td>{esc(layer.kind)}</td><td class=\"num\">{layer.num_features}</td>"
        end = f"<td class=\"num\">{counts.get(layer.name, '')}</td></tr>"
        rows.append(start + cells(layer, sev) + end)
    return "<h2 id=\"layers\">Layers</h2><table>" + head + "".join(rows) + "</table>"


def _drift_cells(report: Report):
    """The drift columns of one layer's row (coloured by threshold, with a score bar)."""
    t = thresholds(report)
    top = max([(report.layer_drift(x.name) or {}).get("score") or 0.0 for x in report.layers] + [1e-12])

    def cells(layer, sev: Severity | None) -> str:
        d = report.layer_drift(layer.name)
        if not d:
            return "<td colspan=\"6\">not measured</td>"
        ms, vr, score = d["mean_shift"], d["var_log_ratio"], d.get("score")
        width = 0 if not isinstance(score, (int, float)) else max(2, round(100 * score / top))
        colour = "var(--bad)" if sev is Severity.ERROR else "#d4a72c" if sev is Severity.WARNING else "var(--ok)"
        return (
            f"<td class=\"num{cell_class(ms['mean'], t['BN101']['warning'], t['BN101']['error'])}\">{fmt_num(ms['mean'])}</td>"
            f"<td class=\"num\">{fmt_num(ms['max'])} ({ms['channel']})</td>"
            f"<td class=\"num{cell_class(vr['mean'], t['BN102']['warning'], t['BN102']['error'])}\">{fmt_num(vr['mean'])}</td>"
            f"<td class=\"num\">{fmt_num(vr['max'])} ({vr['channel']})</td>"
            f"<td class=\"num\">{fmt_num(score)}</td>"
            f"<td><span class=\"bar\"><span style=\"width:{width}%;background:{colour}\"></span></span></td>"
        )

    return cells


def _static_cells(section: Section):
    """The eps, momentum, producer and fold columns of one layer's row."""

    def cells(layer, sev: Severity | None) -> str:
        fold_text = section.fold_cell(layer) or foldable_text(layer)
        producer = f"{layer.producer_kind or '?'}: {layer.producer}" if layer.producer else "?"
        return (
            f"<td class=\"num\">{layer_num(layer, 'eps', ' (assumed)')}</td><td class=\"num\">{layer_num(layer, 'momentum', ' (assumed)')}</td>"
            f"<td>{esc(producer)}</td><td>{esc(fold_text)}</td>"
        )

    return cells


def _data(report: Report) -> str:
    data = report.data
    if not data:
        return ""
    pre = data.get("preprocessing") or {}
    items = [
        ("path", data.get("path")),
        ("kind", data.get("kind")),
        ("samples", data.get("samples")),
        ("batch size", data.get("batch_size")),
        ("sample shape", data.get("sample_shape")),
        ("preprocessing", pre.get("pipeline") or ", ".join(f"{k}={v}" for k, v in pre.items() if v is not None)),
        ("skipped files", data.get("skipped_files")),
        ("non-finite samples", data.get("nonfinite_samples")),
    ]
    return f"<h2 id=\"data\">Data</h2>{facts([(k, v) for k, v in items if v not in (None, '', [])])}"


def _provenance(report: Report) -> str:
    run = report.run or {}
    origin = report.origin or {}
    parts = ["<h2 id=\"run\">How this report was made</h2>"]
    if run.get("command_line"):
        parts.append(f"<p>Command{' (in ' + esc(run['cwd']) + ')' if run.get('cwd') else ''}:</p><pre>{esc(run['command_line'])}</pre>")
    else:
        parts.append("<p>Made with the Python API (no command line recorded).</p>")
    versions = run.get("versions") or {}
    if versions:
        listed = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
        parts.append(f"<p>Versions when it ran: {esc(listed)}{'; ' + esc(run['platform']) if run.get('platform') else ''}.</p>")
    now = package_versions()
    rendered = ", ".join(f"{k} {v}" for k, v in now.items() if v)
    source = f" from <code>{esc(origin['source'])}</code> (written by bncheck {esc(origin.get('tool_version'))})" if origin.get("source") else ""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f"<footer>Rendered {stamp}{source} with {esc(rendered)} on {esc(sys.platform)}. "
                 "Self-contained: this file loads nothing from the network.</footer>")
    return "\n".join(parts)


def combine(texts: list[str], reports: list[Report]) -> str:
    """An HTML report shows one model."""
    raise UsageError("--format html shows one model; run bncheck audit once per model for HTML reports.")

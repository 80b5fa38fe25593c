"""One self-contained HTML file for people: the verdict, the drift chart, per-channel scatter
plots, the small-batch and train/eval figures, the layers, the findings with their
explanations, and how the report was made. No network: CSS is inline and every chart is a
``data:`` image (SVG for line and bar charts, PNG for scatter plots). Charts need matplotlib
(``pip install 'bncheck[report]'``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import sys
from typing import Any

from bncheck.formats import fold_section
from bncheck.formats.common import fmt_num, foldable_text, package_versions, verdict
from bncheck.report.report import Report
from bncheck.rules.finding import Severity, reaches

SEVERITY_CLASS = {"error": "sev-error", "warning": "sev-warning", "info": "sev-info"}

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


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# ---------------------------------------------------------------------------- entry points


def render(report: Report, *, layer: str | None = None, **_: object) -> str:
    """The whole page. ``layer`` picks the layer of the per-channel scatter plots (default:
    the one with the highest drift score)."""
    from bncheck.formats.plot import require_matplotlib

    require_matplotlib()
    title = f"bncheck {report.command} — {report.model.path}"
    body = [
        _header(report),
        _baseline(report),
        _drift_chart(report),
        _fold(report),
        _recalibration(report),
        _findings(report, explain=True),
        _drift_details(report, layer),
        _layers(report),
        _data(report),
        _explanations(report),
        _provenance(report),
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{esc(title)}</title>\n<style>\n{PAGE_CSS}\n{scoped_css()}\n</style>\n</head>\n<body>\n"
        "<main class=\"bncheck\">\n"
        + "\n".join(part for part in body if part)
        + "\n</main>\n</body>\n</html>\n"
    )


def render_fragment(report: Report) -> str:
    """Summary, findings and layers without charts or page wrapper (Jupyter's display)."""
    return (
        f"<div class=\"bncheck\"><style>{scoped_css()}</style>"
        + _header(report) + _findings(report) + _layers(report) + "</div>"
    )


# ---------------------------------------------------------------------------- sections


def _header(report: Report) -> str:
    s = report.summary()
    state = "passed" if s["passed"] else "failed"
    word = "PASSED" if s["passed"] else "FAILED"
    failing = report.failing()
    if report.fail_on == "never":
        why = "the gate is off (--fail-on never)"
    elif failing:
        why = f"{len(failing)} finding(s) at or above --fail-on {report.fail_on}"
        if report.extras.get("baseline"):
            why += " that are new or worse than the baseline"
    else:
        why = f"no finding reaches --fail-on {report.fail_on}"
        if report.extras.get("baseline") and any(reaches(f.severity, report.fail_on) for f in report.findings):
            why += " except ones the baseline already had"
    parts = [
        f"<h1>bncheck {esc(report.command)}: {esc(report.model.path)}</h1>",
        f"<p class=\"sub\">{esc(report.model.format)} model, {s['layers']} batch-norm layer(s) · {esc(verdict(report))}</p>",
        f"<div class=\"verdict {state}\" role=\"status\"><span class=\"word\">{word}</span>"
        f"<span class=\"why\">exit code {report.exit_code}: {esc(why)}</span></div>",
        "<div class=\"counts\">"
        f"<span class=\"count\"><b>{s['errors']}</b>error(s)</span>"
        f"<span class=\"count\"><b>{s['warnings']}</b>warning(s)</span>"
        f"<span class=\"count\"><b>{s['infos']}</b>info(s)</span>"
        f"<span class=\"count\"><b>{s['layers']}</b>BN layer(s)</span></div>",
    ]
    facts = [("model", f"<code>{esc(report.model.path)}</code> ({esc(report.model.format)})")]
    if report.model.sha256:
        facts.append(("sha256", f"<code>{esc(report.model.sha256)}</code>"))
    data = report.extras.get("data")
    if data:
        facts.append(("data", f"<code>{esc(data.get('path', '-'))}</code>: {esc(data.get('samples'))} samples, batch size {esc(data.get('batch_size'))}"))
    drift = report.extras.get("drift") or {}
    if drift.get("first_drifting_layer"):
        facts.append(("first drifting layer", f"<code>{esc(drift['first_drifting_layer'])}</code>"))
    if isinstance(drift.get("accuracy"), (int, float)):
        facts.append(("accuracy on DATA", f"{drift['accuracy']:.1%} (labels from the data)"))
    parts.append("<dl class=\"facts\">" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts) + "</dl>")
    for note in [*report.notes, *report.model.notes]:
        parts.append(f"<div class=\"note\">{esc(note)}</div>")
    return "\n".join(parts)


def _baseline(report: Report) -> str:
    b = report.extras.get("baseline")
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
            f"<tr><td>{_chip(r['severity'])}</td><td><code>{esc(r['rule'])}</code></td><td>{esc(r['layer'] or '(model)')}</td><td>{esc(r['message'])}</td></tr>"
            for r in b["resolved"]
        )
        parts.append("<h3>Resolved since the baseline</h3><table><tr><th>severity</th><th>rule</th><th>layer</th><th>message</th></tr>" + rows + "</table>")
    return "\n".join(parts)


def _img(fig, fmt: str, alt: str) -> str:
    from bncheck.formats.plot import figure_bytes

    data = base64.b64encode(figure_bytes(fig, fmt)).decode("ascii")
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    return f"<img src=\"data:{mime};base64,{data}\" alt=\"{esc(alt)}\">"


def _drift_chart(report: Report) -> str:
    from bncheck.formats import plot

    if report.command != "drift" or not plot.has_drift(report):
        return ""
    d = report.extras.get("drift") or {}
    t = plot.thresholds(report)
    first = d.get("first_drifting_layer")
    parts = [
        "<h2 id=\"drift\">Drift by layer</h2>",
        "<figure id=\"drift-chart\">"
        + _img(plot.drift_figure(report), "svg", "mean |z| and mean |r| per BN layer in network order with the warning and error thresholds")
        + "<figcaption>Mean over channels of |z| (mean shift, in stored standard deviations) and |r| "
        f"(log of the variance ratio) for every BN layer in network order. Dashed: warning "
        f"(BN101 {t['BN101']['warning']:g}, BN102 {t['BN102']['warning']:g}); solid: error "
        f"(BN101 {t['BN101']['error']:g}, BN102 {t['BN102']['error']:g})."
        + (f" The first layer to drift is <code>{esc(first)}</code>: look upstream of it (the input, when it is the first layer)." if first else " No layer reaches a warning threshold.")
        + "</figcaption></figure>",
    ]
    return "\n".join(parts)


def _drift_details(report: Report, layer: str | None) -> str:
    """BN103's input diagnosis, the per-channel scatter, the small-batch and train/eval figures."""
    from bncheck.formats import plot

    if report.command != "drift" or not plot.has_drift(report):
        return ""
    d = report.extras.get("drift") or {}
    rows = plot.drift_rows(report)
    parts = []
    diagnosis = d.get("input_diagnosis")
    if diagnosis and diagnosis.get("candidates"):
        best = (diagnosis.get("best") or {}).get("description")
        marked = ' class="flag-warning"'
        cand = "".join(
            f"<tr{marked if c['description'] == best else ''}><td class=\"name\">{esc(c['description'])}</td>"
            f"<td class=\"num\">{fmt_num(c['score'])}</td></tr>"
            for c in diagnosis["candidates"]
        )
        parts.append(
            "<h3>Input diagnosis (BN103)</h3>"
            f"<p>Drift score of the first layer(s) as measured: <b>{fmt_num(diagnosis.get('baseline'))}</b>; "
            f"re-measured on {esc(diagnosis.get('samples'))} samples with each candidate correction:"
            + (f" <b>{esc(best)}</b> removes most of it." if best else " none removes most of it.")
            + "</p><table><tr><th>correction</th><th class=\"num\">score</th></tr>" + cand + "</table>"
        )
    chosen = layer
    ranking = [n for n in d.get("ranking") or [] if any(r["name"] == n for r in rows)]
    if chosen is None:
        chosen = ranking[0] if ranking else None
    elif not any(r["name"] == chosen for r in rows):
        from bncheck.errors import UsageError

        raise UsageError(f"--layer {chosen!r} is not a measured layer of this report; `bncheck report RUN.json` lists them.")
    if chosen is not None:
        parts.append(f"<h2 id=\"channels\">Per-channel statistics: {esc(chosen)}</h2>")
        if plot.channel_data(report, chosen) is not None:
            parts.append(
                "<figure id=\"channel-chart\">"
                + _img(plot.channel_figure(report, chosen), "png", f"stored against measured mean and variance per channel of {chosen}")
                + "<figcaption>One point per channel: the stored running statistics against what the layer receives on DATA. "
                "Points on the dashed line have not drifted; the circled channel drifts most. "
                + ("This is the layer with the highest drift score; " if layer is None else "")
                + "<code>bncheck report RUN.json --format html --layer NAME</code> shows another layer.</figcaption></figure>"
            )
        else:
            parts.append(
                "<p class=\"note\">This report does not carry per-channel figures. Run drift with "
                "<code>--channels</code> (or <code>--format html</code>) to record them.</p>"
            )
    sb = d.get("small_batch")
    fig = plot.small_batch_figure(report) if sb else None
    if fig is not None:
        parts.append(
            "<h2 id=\"small-batch\">Small-batch risk (BN201)</h2><figure>"
            + _img(fig, "svg", "batch statistics scatter per layer at the training batch size")
            + f"<figcaption>With batches of {esc(sb.get('batch_size'))} (--train-batch-size), how far each batch's "
            "channel means (in channel standard deviations) and variances (log-ratio) scatter around the whole data's. "
            "Large scatter means noisy training statistics and a model that behaves differently in train mode."
            "</figcaption></figure>"
        )
    te = d.get("train_eval")
    fig = plot.train_eval_figure(report) if te else None
    if fig is not None:
        parts.append(
            "<h2 id=\"train-eval\">Train/eval mismatch (BN301)</h2><figure>"
            + _img(fig, "svg", "train-mode against eval-mode divergence per layer")
            + f"<figcaption>The model run with BN in train mode (batch statistics, batches of {esc(te.get('batch_size'))}) "
            "against eval mode (running statistics) on the same samples; per layer, the mean squared Hellinger "
            "distance between batch and running statistics (red: the largest).</figcaption></figure>"
        )
    return "\n".join(parts)


def _fold(report: Report) -> str:
    if report.command != "fold":
        return ""
    lines = fold_section.summary_lines(report)
    parts = ["<h2 id=\"fold\">Fold</h2>"]
    if lines:
        parts.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in lines) + "</ul>")
    kept = fold_section.kept_rows(report)
    if kept:
        parts.append(
            "<h3>Not folded</h3><table><tr><th>layer</th><th>status</th><th>reason</th></tr>"
            + "".join(f"<tr><td>{esc(a)}</td><td>{esc(b)}</td><td>{esc(c)}</td></tr>" for a, b, c in kept)
            + "</table>"
        )
    return "\n".join(parts)


def _recalibration(report: Report) -> str:
    rec = report.extras.get("recalibration")
    if report.command != "recalibrate" or not rec:
        return ""
    acc = rec.get("accuracy") or {}
    out = rec.get("output") or {}
    facts = [
        ("method", f"{rec.get('method')} ({rec.get('variance')} variance)"),
        ("layers recalibrated", rec.get("layers")),
        ("passes", len(rec.get("passes") or [])),
        ("written", f"{out.get('path')} ({out.get('kind')})" if out.get("path") else None),
    ]
    if acc.get("before") is not None or acc.get("after") is not None:
        before = f"{acc['before']:.1%}" if isinstance(acc.get("before"), (int, float)) else "-"
        after = f"{acc['after']:.1%}" if isinstance(acc.get("after"), (int, float)) else "-"
        facts.append(("accuracy on DATA", f"{before} → {after}"))
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts if v is not None)
    rows = []
    for layer in report.layers:
        extra = report.layer_extras.get(layer.name, {})
        b, a = extra.get("before"), extra.get("after")
        if not b and not a:
            continue
        cells = []
        for key in ("mean_shift", "var_log_ratio"):
            cells.append(f"{fmt_num((b or {}).get(key, {}).get('mean'))} → {fmt_num((a or {}).get(key, {}).get('mean'))}")
        cells.append(f"{fmt_num((b or {}).get('score'))} → {fmt_num((a or {}).get('score'))}")
        rows.append(
            f"<tr><td class=\"name\"><code>{esc(layer.name)}</code></td>"
            + "".join(f"<td class=\"num\">{c}</td>" for c in cells) + "</tr>"
        )
    table = (
        "<table><tr><th>layer</th><th class=\"num\">mean |z| before → after</th>"
        "<th class=\"num\">mean |r| before → after</th><th class=\"num\">score before → after</th></tr>"
        + "".join(rows) + "</table>"
    ) if rows else ""
    return f"<h2 id=\"recalibration\">Recalibration</h2><dl class=\"facts\">{items}</dl>{table}"


def _chip(severity: str) -> str:
    return f"<span class=\"chip {SEVERITY_CLASS[severity]}\">{esc(severity)}</span>"


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
            f"<tr class=\"flag-{f.severity.value}\"><td class=\"name\">{_chip(f.severity.value)}</td><td>{rule}</td>"
            f"<td>{esc(f.layer or '(model)')}</td><td>{esc(f.message)}</td>{state}</tr>"
        )
    parts = [f"<h2 id=\"findings\">Findings ({len(report.findings)})</h2>", "<table>" + head + "".join(rows) + "</table>"]
    if explain:
        parts.append("<p class=\"sub\">Each rule is explained at the end of the report (<a href=\"#rules\">what the rules mean</a>).</p>")
    return "\n".join(parts)


def _explanations(report: Report) -> str:
    import bncheck.rules  # noqa: F401  (registers the rules)
    from bncheck.rules.registry import REGISTRY

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
        inner = "".join(f"<p><b>{title}</b><br>{esc(text)}</p>" for title, text in sections)
        parts.append(
            f"<details class=\"rule\" id=\"rule-{esc(code)}\" open><summary><b>{esc(code)}</b> {esc(rule.name)} "
            f"({esc(rule.severity.value)} by default): {esc(rule.summary)}</summary>{inner}</details>"
        )
    return "\n".join(parts)


def _cell_class(value, warn, error) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    if error is not None and value >= error:
        return " cell-error"
    if warn is not None and value >= warn:
        return " cell-warning"
    return ""


def _layers(report: Report) -> str:
    if not report.layers:
        return ""
    worst: dict[str, Severity] = {}
    counts: dict[str, int] = {}
    for f in report.findings:
        if f.layer is not None:
            counts[f.layer] = counts.get(f.layer, 0) + 1
            if f.layer not in worst or f.severity.rank > worst[f.layer].rank:
                worst[f.layer] = f.severity
    drift = any("drift" in report.layer_extras.get(layer.name, {}) for layer in report.layers)
    fold = report.command == "fold"
    if drift:
        from bncheck.formats.plot import thresholds

        t = thresholds(report)
        top = max(
            [(report.layer_extras.get(x.name, {}).get("drift") or {}).get("score") or 0.0 for x in report.layers] + [1e-12]
        )
        head = ("<tr><th>#</th><th>layer</th><th>kind</th><th class=\"num\">C</th><th class=\"num\">mean |z|</th>"
                "<th class=\"num\">max |z| (ch)</th><th class=\"num\">mean |r|</th><th class=\"num\">max |r| (ch)</th>"
                "<th class=\"num\">score</th><th>score bar</th><th class=\"num\">findings</th></tr>")  # fmt: skip
    else:
        head = ("<tr><th>#</th><th>layer</th><th>kind</th><th class=\"num\">C</th><th class=\"num\">eps</th>"
                "<th class=\"num\">momentum</th><th>producer</th><th>" + ("fold" if fold else "foldable") + "</th>"
                "<th class=\"num\">findings</th></tr>")  # fmt: skip
    rows = []
    for i, layer in enumerate(report.layers):
        sev = worst.get(layer.name)
        cls = f" class=\"flag-{sev.value}\"" if sev else ""
        start = f"<tr{cls}><td class=\"num\">{i}</td><td class=\"name\"><code>{esc(layer.name)}</code></td><td>{esc(layer.kind)}</td><td class=\"num\">{layer.num_features}</td>"
        end = f"<td class=\"num\">{counts.get(layer.name, '')}</td></tr>"
        if drift:
            d = report.layer_extras.get(layer.name, {}).get("drift")
            if not d:
                rows.append(start + "<td colspan=\"6\">not measured</td>" + end)
                continue
            ms, vr, score = d["mean_shift"], d["var_log_ratio"], d.get("score")
            width = 0 if not isinstance(score, (int, float)) else max(2, round(100 * score / top))
            colour = "var(--bad)" if sev is Severity.ERROR else "#d4a72c" if sev is Severity.WARNING else "var(--ok)"
            rows.append(
                start
                + f"<td class=\"num{_cell_class(ms['mean'], t['BN101']['warning'], t['BN101']['error'])}\">{fmt_num(ms['mean'])}</td>"
                f"<td class=\"num\">{fmt_num(ms['max'])} ({ms['channel']})</td>"
                f"<td class=\"num{_cell_class(vr['mean'], t['BN102']['warning'], t['BN102']['error'])}\">{fmt_num(vr['mean'])}</td>"
                f"<td class=\"num\">{fmt_num(vr['max'])} ({vr['channel']})</td>"
                f"<td class=\"num\">{fmt_num(score)}</td>"
                f"<td><span class=\"bar\"><span style=\"width:{width}%;background:{colour}\"></span></span></td>"
                + end
            )
        else:
            outcome = fold_section.layer_fold(report, layer.name)
            fold_text = fold_section.fold_cell(outcome) if outcome else foldable_text(layer)
            producer = f"{layer.producer_kind or '?'}: {layer.producer}" if layer.producer else "?"
            rows.append(
                start
                + f"<td class=\"num\">{fmt_num(layer.eps)}</td><td class=\"num\">{fmt_num(layer.momentum)}</td>"
                f"<td>{esc(producer)}</td><td>{esc(fold_text)}</td>" + end
            )
    return "<h2 id=\"layers\">Layers</h2><table>" + head + "".join(rows) + "</table>"


def _data(report: Report) -> str:
    data = report.extras.get("data")
    if not data:
        return ""
    pre = data.get("preprocessing") or {}
    facts = [
        ("path", data.get("path")),
        ("kind", data.get("kind")),
        ("samples", data.get("samples")),
        ("batch size", data.get("batch_size")),
        ("sample shape", data.get("sample_shape")),
        ("preprocessing", pre.get("pipeline") or ", ".join(f"{k}={v}" for k, v in pre.items() if v is not None)),
        ("skipped files", data.get("skipped_files")),
        ("non-finite samples", data.get("nonfinite_samples")),
    ]
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts if v not in (None, "", []))
    return f"<h2 id=\"data\">Data</h2><dl class=\"facts\">{items}</dl>"


def _provenance(report: Report) -> str:
    run = report.extras.get("run") or {}
    origin = getattr(report, "origin", None) or {}
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

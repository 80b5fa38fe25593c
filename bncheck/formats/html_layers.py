"""The interactive part of the HTML report: the findings grouped by rule, and one table of the
layers with their findings, sortable (click a heading), filterable (text and severity) and
expandable (click a layer: its findings, its facts and its per-channel chart). A little inline
JavaScript does the sorting, filtering and expanding; without it the page still shows every
layer and the expanded one (``--layer``, else the layer with the highest drift score).

Each layer is one ``<tbody>`` (its row and its detail row), so sorting moves whole groups.
``report.html#layer-7`` opens layer 7 (network order) on load.
"""

from __future__ import annotations

from bncheck.errors import UsageError
from bncheck.formats.common import fmt_num, foldable_text, layer_num
from bncheck.formats.html_parts import cell_class, chip, esc, inline
from bncheck.formats.plot import drift_rows, thresholds
from bncheck.formats.section import Section
from bncheck.formats.svg import channel_chart
from bncheck.report.report import Report
from bncheck.report.results import DriftResult
from bncheck.rules import REGISTRY
from bncheck.rules.finding import Finding

CSS = """
.tools { display: flex; gap: 10px; flex-wrap: wrap; align-items: center; margin: 8px 0; }
.tools input[type=search] { flex: 1 1 260px; padding: 5px 8px; border: 1px solid var(--line); border-radius: 6px; font: inherit; }
.tools select, .tools button { padding: 4px 8px; border: 1px solid var(--line); border-radius: 6px; background: var(--soft); font: inherit; }
.tools .shown { color: var(--muted); font-size: 13px; }
table.layers th[data-key] { cursor: pointer; user-select: none; white-space: nowrap; }
table.layers th[data-key]::after { content: " \\2195"; color: #8c959f; font-size: 11px; }
table.layers th.asc::after { content: " \\25B2"; color: var(--info); }
table.layers th.desc::after { content: " \\25BC"; color: var(--info); }
table.layers tr.main { cursor: pointer; }
table.layers tr.main:hover td { background: #f3f8ff; }
table.layers tr.main td.name::before { content: "\\25B8 "; color: var(--muted); }
table.layers tbody.open tr.main td.name::before { content: "\\25BE "; }
table.layers tr.detail > td { background: #fbfcfd; padding: 8px 16px 14px; }
table.layers tbody.open tr.main td { border-bottom-color: transparent; }
.detail ul.found { margin: 4px 0 10px; padding-left: 18px; }
.detail svg { display: block; margin: 6px 0; }
"""

SCRIPT = """
(function () {
  var table = document.getElementById("bn-layers");
  if (!table) return;
  var groups = Array.prototype.slice.call(table.tBodies);
  var text = document.getElementById("bn-filter"), level = document.getElementById("bn-level"),
      shown = document.getElementById("bn-shown");
  function toggle(group, open) {
    var detail = group.rows[1];
    if (open === undefined) open = detail.hidden;
    detail.hidden = !open;
    group.classList.toggle("open", open);
    group.rows[0].setAttribute("aria-expanded", open ? "true" : "false");
  }
  groups.forEach(function (group) {
    group.rows[0].addEventListener("click", function () { toggle(group); });
    group.rows[0].addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); toggle(group); }
    });
  });
  function filter() {
    var words = text.value.toLowerCase().split(/\\s+/).filter(Boolean), min = Number(level.value), count = 0;
    groups.forEach(function (group) {
      var hay = group.getAttribute("data-text"), ok = Number(group.getAttribute("data-sev")) >= min;
      words.forEach(function (w) { if (hay.indexOf(w) < 0) ok = false; });
      group.hidden = !ok;
      if (ok) count++;
    });
    shown.textContent = count + " of " + groups.length + " layer(s) shown";
  }
  text.addEventListener("input", filter);
  level.addEventListener("change", filter);
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th) {
    var key = th.getAttribute("data-key");
    if (!key) return;
    th.addEventListener("click", function () {
      var desc = th.classList.contains("asc");
      Array.prototype.forEach.call(heads, function (h) { h.classList.remove("asc", "desc"); });
      th.classList.add(desc ? "desc" : "asc");
      var numeric = th.classList.contains("num") || key === "sev";
      groups.sort(function (a, b) {
        var x = a.getAttribute("data-" + key), y = b.getAttribute("data-" + key), d;
        if (numeric) { x = x === "" ? -Infinity : Number(x); y = y === "" ? -Infinity : Number(y); d = x - y; }
        else d = x.localeCompare(y);
        if (d === 0) d = Number(a.getAttribute("data-idx")) - Number(b.getAttribute("data-idx"));
        return desc ? -d : d;
      });
      groups.forEach(function (g) { table.appendChild(g); });
    });
  });
  document.getElementById("bn-expand").addEventListener("click", function () { groups.forEach(function (g) { if (!g.hidden) toggle(g, true); }); });
  document.getElementById("bn-collapse").addEventListener("click", function () { groups.forEach(function (g) { toggle(g, false); }); });
  Array.prototype.forEach.call(document.querySelectorAll("a[data-rule]"), function (a) {
    a.addEventListener("click", function (e) { e.preventDefault(); text.value = a.getAttribute("data-rule"); level.value = "1"; filter(); table.scrollIntoView(); });
  });
  function openHash(scroll) {
    var m = /^#layer-(\\d+|model)$/.exec(location.hash), g = m && document.getElementById("layer-" + m[1]);
    if (g) { g.hidden = false; toggle(g, true); if (scroll === true) g.scrollIntoView(); }
  }
  window.addEventListener("hashchange", function () { openHash(true); });
  openHash(false);
  filter();
})();
"""

#: worst severity -> data-sev (0: no finding)
_RANK = {"info": 1, "warning": 2, "error": 3}


def _by_layer(report: Report) -> dict[str | None, list[Finding]]:
    out: dict[str | None, list[Finding]] = {}
    for f in sorted(report.findings, key=lambda f: -f.severity.rank):
        out.setdefault(f.layer, []).append(f)
    return out


def _index(report: Report) -> dict[str, int]:
    return {layer.name: i for i, layer in enumerate(report.layers)}


def findings_by_rule(report: Report) -> str:
    """The findings, one row per rule: severity, how many layers, which (links open them)."""
    if not report.findings:
        return "<h2 id=\"findings\">Findings</h2><p>No findings.</p>"
    index = _index(report)
    rules: dict[str, list[Finding]] = {}
    for f in sorted(report.findings, key=lambda f: (-f.severity.rank, f.rule)):
        rules.setdefault(f.rule, []).append(f)
    rows = []
    for code, found in rules.items():
        rule = REGISTRY.get(code)
        links = []
        for f in found[:8]:
            where = f"#layer-{index[f.layer]}" if f.layer in index else "#layer-model"
            links.append(f"<a href=\"{where}\">{esc(f.layer or '(model)')}</a>")
        more = f" and {len(found) - 8} more" if len(found) > 8 else ""
        rows.append(
            f"<tr class=\"flag-{found[0].severity.value}\"><td class=\"name\">{chip(found[0].severity.value)}</td>"
            f"<td><a href=\"#rule-{esc(code)}\"><code>{esc(code)}</code></a> {esc(rule.name if rule else '')}</td>"
            f"<td class=\"num\"><a href=\"#layers\" data-rule=\"{esc(code)}\" title=\"show only these layers\">{len(found)}</a></td>"
            f"<td>{', '.join(links)}{more}</td></tr>"
        )
    return (
        f"<h2 id=\"findings\">Findings ({len(report.findings)})</h2>"
        "<table><tr><th>severity</th><th>rule</th><th class=\"num\">layers</th><th>where (a link opens the layer below)</th></tr>"
        + "".join(rows) + "</table>"
        "<p class=\"sub\">Every finding is listed with its layer in the table below; each rule is explained at the end "
        "(<a href=\"#rules\">what the rules mean</a>).</p>"
    )


def chosen_layer(report: Report, layer: str | None) -> str | None:
    """The layer opened on load: ``layer`` (``--layer``), else the highest drift score."""
    measured = {row["name"] for row in drift_rows(report) if row["z"] is not None}
    if layer is not None:
        if layer not in measured:
            raise UsageError(f"--layer {layer!r} is not a measured layer of this report; `bncheck report RUN.json` lists them.")
        return layer
    ranking = report.result.ranking if isinstance(report.result, DriftResult) else None
    return next((name for name in ranking or [] if name in measured), None)


def layer_table(report: Report, section: Section, opened: str | None) -> str:
    """The sortable, filterable, expandable table of the layers and their findings."""
    if not report.layers and not report.findings:
        return ""
    found = _by_layer(report)
    drift = any(report.layer_drift(layer.name) is not None for layer in report.layers)
    heads = ["<th data-key=\"idx\" class=\"num\">#</th>", "<th data-key=\"name\">layer</th>", "<th data-key=\"kind\">kind</th>",
             "<th data-key=\"c\" class=\"num\">C</th>", "<th data-key=\"sev\">worst</th>", "<th data-key=\"n\" class=\"num\">findings</th>"]  # fmt: skip
    if drift:
        heads += ["<th data-key=\"z\" class=\"num\">mean |z|</th>", "<th data-key=\"r\" class=\"num\">mean |r|</th>", "<th data-key=\"score\" class=\"num\">score</th>"]
    else:
        heads += [f"<th data-key=\"fold\">{esc(section.fold_column)}</th>"]
    width = len(heads)
    groups = []
    if None in found:
        groups.append(_group(report, "model", -1, "(model)", "model", "", found[None], width, ["<td></td>"] * (width - 6), {}, opened=True))
    t = thresholds(report)
    for i, layer in enumerate(report.layers):
        d = report.layer_drift(layer.name) or {}
        sort: dict[str, object] = {}
        if drift:
            ms, vr, score = (d.get("mean_shift") or {}).get("mean"), (d.get("var_log_ratio") or {}).get("mean"), d.get("score")
            cells = [f"<td class=\"num{cell_class(ms, t['BN101']['warning'], t['BN101']['error'])}\">{fmt_num(ms)}</td>",
                     f"<td class=\"num{cell_class(vr, t['BN102']['warning'], t['BN102']['error'])}\">{fmt_num(vr)}</td>",
                     f"<td class=\"num\">{fmt_num(score)}</td>"]  # fmt: skip
            sort = {"z": ms, "r": vr, "score": score}
        else:
            fold_text = section.fold_cell(layer) or foldable_text(layer)
            cells = [f"<td>{esc(fold_text)}</td>"]
            sort = {"fold": fold_text}
        groups.append(_group(report, str(i), i, layer.name, layer.kind, str(layer.num_features), found.get(layer.name, []),
                             width, cells, sort, opened=layer.name == opened, layer=layer))  # fmt: skip
    tools = (
        "<div class=\"tools\"><input type=\"search\" id=\"bn-filter\" placeholder=\"Filter by layer, rule or message\" aria-label=\"filter layers\">"
        "<select id=\"bn-level\" aria-label=\"severity\"><option value=\"0\">every layer</option><option value=\"1\">with findings</option>"
        "<option value=\"2\">warning or worse</option><option value=\"3\">errors only</option></select>"
        "<button type=\"button\" id=\"bn-expand\">expand all</button><button type=\"button\" id=\"bn-collapse\">collapse all</button>"
        f"<span class=\"shown\" id=\"bn-shown\">{len(groups)} layer(s)</span></div>"
    )
    return (
        "<h2 id=\"layers\">Layers and their findings</h2>"
        "<p class=\"sub\">Click a heading to sort, a layer to see its findings, facts and per-channel chart.</p>"
        + tools + "<table class=\"layers\" id=\"bn-layers\"><thead><tr>" + "".join(heads) + "</tr></thead>"
        + "".join(groups) + "</table>"
    )


def _group(report: Report, key: str, index: int, name: str, kind: str, channels: str, findings: list[Finding], width: int,
           cells: list[str], sort: dict[str, object], *, opened: bool, layer=None) -> str:  # fmt: skip
    worst = findings[0].severity.value if findings else None
    rank = _RANK.get(worst or "", 0)
    text = " ".join([name, kind, *(f"{f.rule} {f.severity.value} {f.message}" for f in findings)]).lower()
    data = {"idx": index, "name": name, "kind": kind, "c": channels, "sev": rank, "n": len(findings), **sort}
    attrs = " ".join(f"data-{k}=\"{esc('' if v is None else v)}\"" for k, v in data.items())
    flag = f" flag-{worst}" if worst else ""
    main = (
        f"<tr class=\"main{flag}\" tabindex=\"0\" aria-expanded=\"{'true' if opened else 'false'}\">"
        f"<td class=\"num\">{index if index >= 0 else ''}</td><td class=\"name\"><code>{esc(name)}</code></td><td>{esc(kind)}</td>"
        f"<td class=\"num\">{esc(channels)}</td><td>{chip(worst) if worst else ''}</td><td class=\"num\">{len(findings) or ''}</td>"
        + "".join(cells) + "</tr>"
    )
    detail = f"<tr class=\"detail\"{'' if opened else ' hidden'}><td colspan=\"{width}\">{_detail(report, name, findings, layer, opened)}</td></tr>"
    return f"<tbody id=\"layer-{key}\" class=\"grp{' open' if opened else ''}\" data-text=\"{esc(text)}\" {attrs}>{main}{detail}</tbody>"


def _detail(report: Report, name: str, findings: list[Finding], layer, opened: bool) -> str:
    parts = []
    if findings:
        items = "".join(
            f"<li>{chip(f.severity.value)} <a href=\"#rule-{esc(f.rule)}\"><code>{esc(f.rule)}</code></a> {inline(f.message)}"
            + (f" <span class=\"state state-{esc(f.baseline)}\">{esc(f.baseline)}</span>" if f.baseline else "") + "</li>"
            for f in findings
        )
        parts.append(f"<ul class=\"found\">{items}</ul>")
    else:
        parts.append("<p class=\"sub\">No findings on this layer.</p>")
    if layer is not None:
        producer = f"{layer.producer_kind or '?'}: {layer.producer}" if layer.producer else "?"
        facts = [("eps", layer_num(layer, "eps", " (assumed)")), ("momentum", layer_num(layer, "momentum", " (assumed)")), ("producer", producer), ("fold", foldable_text(layer))]
        d = report.layer_drift(name) or {}
        for key, label in (("mean_shift", "max |z|"), ("var_log_ratio", "max |r|")):
            if d.get(key):
                facts.append((label, f"{fmt_num(d[key].get('max'))} (channel {d[key].get('channel')})"))
        parts.append("<dl class=\"facts\">" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts) + "</dl>")
        chart = channel_chart(report, name)
        if chart is not None:
            ident = " id=\"channel-chart\"" if opened else ""
            parts.append(f"<figure{ident}>{chart}<figcaption>One dot per channel: the stored running statistics against what "
                         "the layer receives on DATA. Dots on the dashed line have not drifted.</figcaption></figure>")  # fmt: skip
        elif report.layer_drift(name) is not None:
            parts.append("<p class=\"note\">This report does not carry per-channel figures: run drift with <code>--channels</code> (or <code>--format html</code>).</p>")
    return "".join(parts)

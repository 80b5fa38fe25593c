"""The ``bncheck drift`` section of the human-readable reports (a :class:`DriftResult`): the
header facts, the drift chart, BN103's input diagnosis, the per-channel scatter plots and the
small-batch and train/eval figures (HTML; the terminal and Markdown show drift in the layers
table, which every result with layer drift figures shares)."""

from __future__ import annotations

from bncheck.errors import UsageError
from bncheck.formats import plot
from bncheck.formats.common import fmt_num
from bncheck.formats.html_parts import esc, img
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
            + img(plot.drift_figure(self.report), "svg", "mean |z| and mean |r| per BN layer in network order with the warning and error thresholds")
            + "<figcaption>Mean over channels of |z| (mean shift, in stored standard deviations) and |r| "
            f"(log of the variance ratio) for every BN layer in network order. Dashed: warning "
            f"(BN101 {t['BN101']['warning']:g}, BN102 {t['BN102']['warning']:g}); solid: error "
            f"(BN101 {t['BN101']['error']:g}, BN102 {t['BN102']['error']:g})."
            + (f" The first layer to drift is <code>{esc(first)}</code>: look upstream of it (the input, when it is the first layer)." if first else " No layer reaches a warning threshold.")
            + "</figcaption></figure>",
        ])  # fmt: skip

    def html_details(self, layer: str | None) -> str:
        """BN103's input diagnosis, the per-channel scatter, the small-batch and train/eval figures."""
        if not plot.has_drift(self.report):
            return ""
        parts = [self._diagnosis(), self._channels(layer), self._small_batch(), self._train_eval()]
        return "\n".join(part for part in parts if part)

    def _diagnosis(self) -> str:
        diagnosis = self.result.input_diagnosis
        if not diagnosis or not diagnosis.get("candidates"):
            return ""
        best = (diagnosis.get("best") or {}).get("description")
        marked = ' class="flag-warning"'
        cand = "".join(
            f"<tr{marked if c['description'] == best else ''}><td class=\"name\">{esc(c['description'])}</td>"
            f"<td class=\"num\">{fmt_num(c['score'])}</td></tr>"
            for c in diagnosis["candidates"]
        )
        return (
            "<h3>Input diagnosis (BN103)</h3>"
            f"<p>Drift score of the first layer(s) as measured: <b>{fmt_num(diagnosis.get('baseline'))}</b>; "
            f"re-measured on {esc(diagnosis.get('samples'))} samples with each candidate correction:"
            + (f" <b>{esc(best)}</b> removes most of it." if best else " none removes most of it.")
            + "</p><table><tr><th>correction</th><th class=\"num\">score</th></tr>" + cand + "</table>"
        )

    def _channels(self, layer: str | None) -> str:
        measured = {row["name"] for row in plot.drift_rows(self.report)}
        ranking = [n for n in self.result.ranking or [] if n in measured]
        chosen = layer
        if chosen is None:
            chosen = ranking[0] if ranking else None
        elif chosen not in measured:
            raise UsageError(f"--layer {chosen!r} is not a measured layer of this report; `bncheck report RUN.json` lists them.")
        if chosen is None:
            return ""
        head = f"<h2 id=\"channels\">Per-channel statistics: {esc(chosen)}</h2>"
        if plot.channel_data(self.report, chosen) is None:
            return head + "\n" + (
                "<p class=\"note\">This report does not carry per-channel figures. Run drift with "
                "<code>--channels</code> (or <code>--format html</code>) to record them.</p>"
            )
        return head + "\n" + (
            "<figure id=\"channel-chart\">"
            + img(plot.channel_figure(self.report, chosen), "png", f"stored against measured mean and variance per channel of {chosen}")
            + "<figcaption>One point per channel: the stored running statistics against what the layer receives on DATA. "
            "Points on the dashed line have not drifted; the circled channel drifts most. "
            + ("This is the layer with the highest drift score; " if layer is None else "")
            + "<code>bncheck report RUN.json --format html --layer NAME</code> shows another layer.</figcaption></figure>"
        )

    def _small_batch(self) -> str:
        sb = self.result.small_batch
        fig = plot.small_batch_figure(self.report) if sb else None
        if fig is None:
            return ""
        return (
            "<h2 id=\"small-batch\">Small-batch risk (BN201)</h2><figure>"
            + img(fig, "svg", "batch statistics scatter per layer at the training batch size")
            + f"<figcaption>With batches of {esc(sb.get('batch_size'))} (--train-batch-size), how far each batch's "
            "channel means (in channel standard deviations) and variances (log-ratio) scatter around the whole data's. "
            "Large scatter means noisy training statistics and a model that behaves differently in train mode."
            "</figcaption></figure>"
        )

    def _train_eval(self) -> str:
        te = self.result.train_eval
        fig = plot.train_eval_figure(self.report) if te else None
        if fig is None:
            return ""
        return (
            "<h2 id=\"train-eval\">Train/eval mismatch (BN301)</h2><figure>"
            + img(fig, "svg", "train-mode against eval-mode divergence per layer")
            + f"<figcaption>The model run with BN in train mode (batch statistics, batches of {esc(te.get('batch_size'))}) "
            "against eval mode (running statistics) on the same samples; per layer, the mean squared Hellinger "
            "distance between batch and running statistics (red: the largest).</figcaption></figure>"
        )

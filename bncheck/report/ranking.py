"""Several models on the same DATA, ranked by how well their stored statistics fit it
(``bncheck drift M1 M2 ... DATA``): label-free model selection.

A :class:`Ranking` holds one drift :class:`~bncheck.report.report.Report` per model (in the
order given) and, built from them alone, one :class:`RankedModel` per model, best fit first.
The score is :func:`bncheck.numerics.ranking.fit_score` (the mean layer drift score, lower fits
better); ties are broken by BN301's output change, then by the order the models were given.
The gate is each model's own: the ranking fails when any report fails its ``--fail-on`` gate,
and the order itself never fails a run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from bncheck._version import __version__
from bncheck.numerics.ranking import distinguishable, fit_noise, fit_score
from bncheck.report import rendering
from bncheck.report.gate import Gate
from bncheck.report.report import Report, finite
from bncheck.report.schema import SCHEMA_VERSION
from bncheck.rules.finding import Severity

#: what ``ranking.score`` is, as the JSON report states it
SCORE_DEFINITION = (
    "mean over the measured BN layers of the layer drift score (mean over channels of the squared Hellinger "
    "distance between the stored and DATA's Gaussian); 0 = the stored statistics are DATA's, lower fits better"
)


@dataclass
class RankedModel:
    """One model's place in a :class:`Ranking`."""

    rank: int
    #: the position of its report in :attr:`Ranking.reports` (the order given)
    index: int
    model: str
    format: str
    score: float
    #: the score sampling noise alone gives on DATA (:func:`bncheck.numerics.ranking.fit_noise`)
    noise: float
    layers: int
    worst_layer: str | None
    worst_layer_score: float | None
    #: top-1 accuracy on DATA (with labels), else None
    accuracy: float | None
    #: BN301's output change, stored vs DATA's own statistics: {"top1_disagreement": x} or
    #: {"relative_error": x}; None where BN301's comparison did not run
    output_change: dict[str, float] | None
    #: the worst severity among the model's findings ("ok" without any) and their rule codes
    verdict: str
    rules: list[str]
    passed: bool
    #: whether the score is told apart from the next model's (None for the last)
    separated_from_next: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "model": self.model, "format": self.format, "score": self.score, "noise": self.noise,
            "layers": self.layers, "worst_layer": self.worst_layer, "worst_layer_score": self.worst_layer_score,
            "accuracy": self.accuracy, "output_change": self.output_change, "verdict": self.verdict, "rules": self.rules,
            "passed": self.passed, "separated_from_next": self.separated_from_next, "report": self.index,
        }  # fmt: skip


@dataclass
class Ranking(Gate):
    """Drift reports of several models on the same DATA and their ranking."""

    reports: list[Report]
    models: list[RankedModel] = field(default_factory=list)

    @classmethod
    def of(cls, reports: list[Report]) -> Ranking:
        """The ranking of ``reports`` (drift reports of the same DATA)."""
        entries = [_entry(index, report) for index, report in enumerate(reports)]
        entries.sort(key=lambda e: (math.isnan(e.score), e.score if not math.isnan(e.score) else 0.0, _change(e), e.index))
        for rank, entry in enumerate(entries, 1):
            entry.rank = rank
        for entry, following in zip(entries, entries[1:], strict=False):
            entry.separated_from_next = distinguishable(entry.score, following.score, entry.noise, following.noise)
        return cls(reports=list(reports), models=entries)

    def failing(self) -> list:
        return [finding for report in self.reports for finding in report.failing()]

    @property
    def data(self) -> dict[str, Any] | None:
        return self.reports[0].data if self.reports else None

    @property
    def fail_on(self) -> str:
        return self.reports[0].fail_on if self.reports else "error"

    def to_dict(self) -> dict[str, Any]:
        """``{schema_version, tool, command: "drift", kind: "ranking", passed, ranking, reports}``;
        ``reports`` holds each model's drift report (the contract's shape) in the order given."""
        return {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "bncheck", "version": __version__},
            "command": "drift",
            "kind": "ranking",
            "passed": self.passed,
            "ranking": {
                "score": SCORE_DEFINITION,
                "data": self.data,
                "fail_on": self.fail_on,
                "models": [entry.to_dict() for entry in self.models],
            },
            "reports": [report.to_dict() for report in self.reports],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(finite(self.to_dict()), indent=indent, allow_nan=False, ensure_ascii=False)

    def render(self, format: str = "table", **options: Any) -> str:
        """The ranking as text in ``format``: table, markdown, json, junit, sarif, github or gitlab."""
        return rendering.view("ranking", format)(self, **options)

    def __repr__(self) -> str:
        order = ", ".join(f"#{m.rank} {m.model} ({m.score:.3g})" for m in self.models)
        return f"<Ranking of {len(self.models)} models on {(self.data or {}).get('path')!r}: {order}>"


def _change(entry: RankedModel) -> float:
    value = next(iter(entry.output_change.values()), None) if entry.output_change else None
    return float(value) if value is not None and math.isfinite(value) else math.inf


def _entry(index: int, report: Report) -> RankedModel:
    result = report.result
    layers: dict[str, dict[str, Any]] = dict(getattr(result, "layers", None) or {})
    scores = {name: figures.get("score") for name, figures in layers.items()}
    finite_scores = {name: float(s) for name, s in scores.items() if s is not None and math.isfinite(float(s))}
    worst = max(finite_scores, key=lambda name: finite_scores[name]) if finite_scores else None
    noise = [(figures.get("noise") or {}).get("mean_shift", float("nan")) for figures in layers.values()]
    noise_r = [(figures.get("noise") or {}).get("var_log_ratio", float("nan")) for figures in layers.values()]
    verdict, rules = _verdict(report)
    return RankedModel(
        rank=0, index=index, model=str(report.model.path), format=str(report.model.format),
        score=fit_score(scores.values()), noise=fit_noise(zip(noise, noise_r, strict=True)), layers=len(finite_scores),
        worst_layer=worst, worst_layer_score=finite_scores.get(worst) if worst else None,
        accuracy=getattr(result, "accuracy", None), output_change=_output_change(getattr(result, "train_eval", None)),
        verdict=verdict, rules=rules, passed=report.passed,
    )  # fmt: skip


def _output_change(train_eval: dict[str, Any] | None) -> dict[str, float] | None:
    """BN301's effect as one figure: the top-1 disagreement where the output has classes, else
    the relative output error."""
    if not train_eval:
        return None
    if train_eval.get("top1_agreement") is not None:
        return {"top1_disagreement": 1.0 - float(train_eval["top1_agreement"])}
    if train_eval.get("relative_error") is not None:
        return {"relative_error": float(train_eval["relative_error"])}
    return None


def _verdict(report: Report) -> tuple[str, list[str]]:
    """The worst severity of the report's findings ("ok" without any) and the rules behind it."""
    if not report.findings:
        return "ok", []
    worst = max((f.severity for f in report.findings), key=lambda s: s.rank)
    codes = sorted({f.rule for f in report.findings if f.severity is worst})
    return Severity(worst).value, codes

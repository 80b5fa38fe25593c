"""Several models on the same DATA, ranked by how well their stored statistics fit it
(``bncheck drift M1 M2 ... DATA``): label-free model selection.

A :class:`Ranking` holds one drift :class:`~bncheck.report.report.Report` per model (in the
order given) and, built from them alone, one :class:`RankedModel` per model, best fit first.
The key is BN301's output change (what the stored statistics do to the outputs on DATA) where
every model has one of the same kind, else :func:`bncheck.numerics.ranking.fit_score` (the mean
layer drift score); the other figure breaks ties, then the order the models were given
(:func:`ranking_key`). Lower fits better for both.
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
from bncheck.rules.stale_statistics import StaleStatistics

#: what ``ranking.output_change`` is, as the JSON report states it
CHANGE_DEFINITION = (
    "BN301's comparison on its subsample: the fraction of top-1 predictions (or the relative output error, for outputs "
    "without classes) that change between the model with its stored statistics and with DATA's own; label-free, lower "
    "fits better; the ranking key where every model has one of the same kind, the score breaking ties"
)
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
    #: BN301's output change, stored vs DATA's own statistics: {"kind": "top1_disagreement" or
    #: "relative_error", "value": x, "noise": its noise floor}; None where BN301's comparison did not run
    output_change: dict[str, Any] | None
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
    #: what orders the models: "output_change" (BN301's, where every scored model has one of
    #: the same kind) or "score" (see :func:`ranking_key`)
    key: str = "score"

    @classmethod
    def of(cls, reports: list[Report]) -> Ranking:
        """The ranking of ``reports`` (drift reports of the same DATA)."""
        entries = [_entry(index, report) for index, report in enumerate(reports)]
        key = ranking_key(entries)
        fit = {e.index: _fit_severity(reports[e.index]) for e in entries}
        if key == "output_change":
            entries.sort(key=lambda e: (math.isnan(e.score), fit[e.index], _figure(e.output_change, "value"), _rounded(e.score), e.index))
        else:
            entries.sort(key=lambda e: (math.isnan(e.score), fit[e.index], _rounded(e.score), _figure(e.output_change, "value"), e.index))
        for rank, entry in enumerate(entries, 1):
            entry.rank = rank
        for entry, following in zip(entries, entries[1:], strict=False):
            entry.separated_from_next = _separated(entry, following)
        return cls(reports=list(reports), models=entries, key=key)

    def failing(self) -> list:
        return [finding for report in self.reports for finding in report.failing()]

    @property
    def data(self) -> dict[str, Any] | None:
        """DATA as the first report that read it describes (a model without BN layers reads none)."""
        return next((report.data for report in self.reports if report.data), None)

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
                "key": self.key,
                "score": SCORE_DEFINITION,
                "output_change": CHANGE_DEFINITION,
                "data": self.data,
                "fail_on": self.fail_on,
                "models": [entry.to_dict() for entry in self.models],
            },
            "reports": [report.to_dict() for report in self.reports],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(finite(self.to_dict()), indent=indent, allow_nan=False, ensure_ascii=False)

    def to_frame(self):
        """One row per model, best fit first (the JSON ``ranking.models`` entries), as pandas."""
        import pandas as pd

        rows = [{k: v for k, v in entry.to_dict().items() if k != "output_change"} for entry in self.models]
        for row, entry in zip(rows, self.models, strict=True):
            row.update({f"output_change.{k}": (entry.output_change or {}).get(k) for k in ("kind", "value", "noise")})
        return pd.DataFrame(rows)

    def render(self, format: str = "table", **options: Any) -> str:
        """The ranking as text in ``format``: table, markdown, json, junit, sarif, github or gitlab."""
        return rendering.view("ranking", format)(self, **options)

    def __repr__(self) -> str:
        order = ", ".join(f"#{m.rank} {m.model} ({m.score:.3g})" for m in self.models)
        return f"<Ranking of {len(self.models)} models on {(self.data or {}).get('path')!r}: {order}>"


def ranking_key(entries: list[RankedModel]) -> str:
    """"output_change" when every model with a score has BN301's output change, all of one kind
    (top-1 flips of classifiers, or relative errors), else "score". The output change is what
    the stored statistics do to the outputs on DATA; across copies whose statistics were
    accumulated on shifted inputs it follows the accuracy more closely than the fit score
    (bench/ranking_agreement.py), which still breaks its ties and ranks where it is missing."""
    scored = [e for e in entries if math.isfinite(e.score)]
    kinds = {e.output_change["kind"] if e.output_change else None for e in scored}
    return "output_change" if scored and len(kinds) == 1 and None not in kinds else "score"


def _finite(value: float) -> float:
    return value if math.isfinite(value) else 0.0


#: significant digits of the fit score that order models: copies of one model in two formats
#: (digits_cnn.onnx and .ts) score alike to 1e-9, in an order that onnxruntime and torch
#: releases' rounding swapped; below this they keep the order they were given in
SCORE_DIGITS = 6


def _rounded(value: float) -> float:
    return float(f"{_finite(value):.{SCORE_DIGITS}g}")


def _figure(change: dict[str, Any] | None, name: str) -> float:
    value = change.get(name) if change else None
    return float(value) if value is not None and math.isfinite(float(value)) else math.inf


def _separated(entry: RankedModel, following: RankedModel) -> bool:
    """Whether two neighbours differ beyond the sampling noise in the fit score or, where both
    have it (of one kind), in BN301's output change."""
    if distinguishable(entry.score, following.score, entry.noise, following.noise):
        return True
    a, b = entry.output_change, following.output_change
    if not a or not b or a["kind"] != b["kind"]:
        return False
    return distinguishable(_figure(a, "value"), _figure(b, "value"), _figure(a, "noise"), _figure(b, "noise"))


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


def _output_change(train_eval: StaleStatistics | None) -> dict[str, float] | None:
    """BN301's effect as one figure: the top-1 disagreement where the output has classes, else
    the relative output error."""
    if train_eval is None:
        return None
    floor = train_eval.noise_floor
    if train_eval.top1_agreement is not None:
        noise = 1.0 - float(floor.top1_agreement) if floor.top1_agreement is not None else None
        return {"kind": "top1_disagreement", "value": 1.0 - float(train_eval.top1_agreement), "noise": noise}
    if train_eval.relative_error is not None:
        noise = float(floor.relative_error) if floor.relative_error is not None else None
        return {"kind": "relative_error", "value": float(train_eval.relative_error), "noise": noise}
    return None


#: the rules that judge how the stored statistics fit DATA (the ranking's own question)
FIT_RULES = frozenset({"BN101", "BN102", "BN103", "BN301"})


def _fit_severity(report: Report) -> int:
    """2 where a fit rule (:data:`FIT_RULES`) reports an error on the model, 1 a warning, else 0:
    the first key of the ranking, so that a model the gate finds unfit on DATA never ranks
    above one it finds fitter, whatever a single figure says (a CTC recogniser whose statistics
    came from darkened lines, BN101/BN102 errors and a fit score 8x worse, changed fewer of its
    near-constant outputs than the original)."""
    ranks = [f.severity.rank for f in report.findings if f.rule in FIT_RULES]
    worst = max(ranks, default=0)
    return 2 if worst >= Severity.ERROR.rank else 1 if worst >= Severity.WARNING.rank else 0


def _verdict(report: Report) -> tuple[str, list[str]]:
    """The worst severity of the report's findings ("ok" without any) and the rules behind it."""
    if not report.findings:
        return "ok", []
    worst = max((f.severity for f in report.findings), key=lambda s: s.rank)
    codes = sorted({f.rule for f in report.findings if f.severity is worst})
    return Severity(worst).value, codes

"""Baselines: judge a report against an earlier one, so the gate fails only on what got worse.

A baseline is a previous JSON report of the same command (``--format json``), or, for
``drift``, the per-channel statistics saved by ``drift --save-stats`` (``.npz`` or
``.parquet``), from which the drift rules BN101, BN102 and BN104 are evaluated again with the
current thresholds.

Findings are matched by (rule, layer). Each current finding is

* **new**: the baseline has no finding of that rule on that layer (or cannot speak for the
  rule: a statistics baseline only covers BN101/BN102/BN104);
* **worse**: its severity is higher, or one of its figures (``FIGURES``) grew by more than
  ``tolerance`` (relative, default 10%) plus two standard errors where the rule states them;
* **existing**: otherwise (the same or better).

New and worse findings fail the gate; existing ones are reported but do not. Baseline findings
that are gone are listed as resolved.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bncheck.errors import DataError, UsageError
from bncheck.numerics.drift import layer_drift
from bncheck.report import parse
from bncheck.report.results import DriftResult
from bncheck.rules import default_thresholds, get_rule
from bncheck.rules.context import DriftEvidence, RuleContext
from bncheck.rules.finding import Finding

if TYPE_CHECKING:  # the report module builds on this one
    from bncheck.report.report import Report

#: Relative growth of a finding's figure that counts as worse.
DEFAULT_TOLERANCE = 0.10

#: Rules a saved-statistics baseline can evaluate.
STATS_RULES = ("BN101", "BN102", "BN104")


def _total_count(details: dict) -> dict[str, float]:
    tensors = details.get("tensors") or {}
    return {"non-finite values": float(sum(t.get("count", 0) for t in tensors.values() if isinstance(t, dict)))}


def _disagreement(details: dict) -> dict[str, float]:
    out = {}
    if isinstance(details.get("top1_agreement"), (int, float)):
        out["prediction disagreement"] = 1.0 - details["top1_agreement"]
    if isinstance(details.get("relative_error"), (int, float)):
        out["relative output error"] = float(details["relative_error"])
    return out


def _keys(**names: str) -> Callable[[dict], dict[str, float]]:
    def figures(details: dict) -> dict[str, float]:
        return {label: float(details[key]) for label, key in names.items() if isinstance(details.get(key), (int, float))}

    return figures


#: Per rule, the figures of a finding that measure how bad it is (larger is worse).
FIGURES: dict[str, Callable[[dict], dict[str, float]]] = {
    "BN001": _total_count,
    "BN006": _keys(initial_weight="initial_weight"),
    "BN007": lambda d: {"dead channels": float(d.get("dead_gamma", 0) + d.get("dead_var", 0))},
    "BN008": _keys(max_scale="max_scale"),
    "BN101": _keys(mean_abs_z="mean"),
    "BN102": _keys(mean_abs_r="mean"),
    "BN201": _keys(mean_scatter="max_mean_scatter", flip_rate="flip_rate"),
    "BN301": _disagreement,
    "BN401": _keys(max_rel_err="max_rel_err", max_abs_err="max_abs_err"),
}


@dataclass
class Baseline:
    """The findings of an earlier run."""

    path: str
    kind: str  # "report" or "stats"
    findings: list[Finding]
    command: str | None = None
    model_sha256: str = ""
    #: rules the baseline can speak for (None: every rule)
    covered_rules: list[str] | None = None


# ---------------------------------------------------------------------------- comparing


def compare(old: Finding | None, new: Finding, tolerance: float = DEFAULT_TOLERANCE) -> tuple[str, str]:
    """(state, reason) of ``new`` against the matching baseline finding ``old``."""
    if old is None:
        return "new", "not in the baseline"
    if new.severity.rank > old.severity.rank:
        return "worse", f"severity {old.severity.value} → {new.severity.value}"
    figures = FIGURES.get(new.rule)
    if figures is not None:
        was, now = figures(old.details), figures(new.details)
        se_old = old.details.get("standard_error") if isinstance(old.details.get("standard_error"), (int, float)) else 0.0
        se_new = new.details.get("standard_error") if isinstance(new.details.get("standard_error"), (int, float)) else 0.0
        noise = 2.0 * math.hypot(se_old, se_new)
        for label, value in now.items():
            before = was.get(label)
            if before is None or not (math.isfinite(value) and math.isfinite(before)):
                continue
            if value > before + abs(before) * tolerance + noise:
                return "worse", f"{label} {before:.3g} → {value:.3g}"
    return "existing", "as in the baseline"


def match(old: list[Finding], new: list[Finding]) -> tuple[list[tuple[Finding | None, Finding]], list[Finding]]:
    """Pair findings by (rule, layer), in order; returns the pairs (``None`` where the new
    finding has no partner) and the baseline findings left without a partner (resolved)."""
    pool: dict[tuple[str, str | None], list[Finding]] = {}
    for f in old:
        pool.setdefault((f.rule, f.layer), []).append(f)
    pairs = []
    for f in new:
        bucket = pool.get((f.rule, f.layer))
        pairs.append((bucket.pop(0) if bucket else None, f))
    resolved = [f for bucket in pool.values() for f in bucket]
    order = {id(f): i for i, f in enumerate(old)}
    return pairs, sorted(resolved, key=lambda f: order[id(f)])


def apply_baseline(report: Report, baseline: str | Path | Report | Baseline, *, tolerance: float | None = None) -> Baseline:
    """Mark every finding of ``report`` new / worse / existing against ``baseline`` and record
    the comparison in ``report.baseline``; the gate then counts new and worse only."""
    tolerance = DEFAULT_TOLERANCE if tolerance is None else float(tolerance)
    if tolerance < 0:
        raise UsageError("the baseline tolerance must be 0 or more.")
    base = baseline if isinstance(baseline, Baseline) else load_baseline(baseline, report)
    covered = set(base.covered_rules) if base.covered_rules is not None else None
    pairs, resolved = match(base.findings, report.findings)
    counts = {"new": 0, "worse": 0, "existing": 0}
    changes = []
    for old, new in pairs:
        if covered is not None and new.rule not in covered:
            state, reason = "new", "the baseline has no figures for this rule"
        else:
            state, reason = compare(old, new, tolerance)
        new.baseline = state
        counts[state] += 1
        if state != "existing":
            changes.append({"rule": new.rule, "layer": new.layer, "state": state, "reason": reason})
    report.baseline = {
        "path": base.path,
        "kind": base.kind,
        "model_sha256": base.model_sha256,
        "same_model": (base.model_sha256 == report.model.sha256) if base.model_sha256 and report.model.sha256 else None,
        **counts,
        "resolved": [
            {"rule": f.rule, "severity": f.severity.value, "layer": f.layer, "message": f.message} for f in resolved
        ],
        "changes": changes,
        "covered_rules": sorted(covered) if covered is not None else None,
        "tolerance": tolerance,
    }
    return base


# ---------------------------------------------------------------------------- loading


def load_baseline(source: str | Path | Report, report: Report) -> Baseline:
    """A baseline for ``report`` from a Report, a JSON report file, or saved statistics."""
    if not isinstance(source, (str, Path)):  # a Report
        _check_command(source.command, report, "the baseline report")
        return Baseline(path="<report>", kind="report", findings=list(source.findings), command=source.command,
                        model_sha256=source.model.sha256)  # fmt: skip
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in (".npz", ".parquet"):
        return _stats_baseline(path, report)
    if suffix != ".json" and not path.exists():
        raise UsageError(f"baseline file {path} does not exist.")
    data = _baseline_report(path)
    _check_command(data["command"], report, f"baseline {path}")
    return Baseline(path=str(path), kind="report", findings=parse.findings_of(data["findings"]), command=data["command"],
                    model_sha256=data["model"]["sha256"])  # fmt: skip


def _baseline_report(path: Path) -> dict[str, Any]:
    """The parsed, checked JSON report at ``path``."""
    return parse.check_report(parse.read_json(path, what="baseline"), f"baseline {path}")


def check_baseline_file(path: str | Path, command: str) -> None:
    """Fail early (before the model runs) when ``path`` cannot be a baseline for ``command``:
    missing, unreadable, not a report, a report of another command, or saved statistics for a
    command other than drift."""
    path = Path(path)
    if path.suffix.lower() in (".npz", ".parquet"):
        if command != "drift":
            raise UsageError(
                f"saved statistics ({path.name}) can only be a baseline for `bncheck drift`; for `{command}` pass a JSON report."
            )
        _read_stats(path)
        return
    found = _baseline_report(path)["command"]
    if found != command:
        raise UsageError(
            f"baseline {path} is a `bncheck {found}` report but this is `bncheck {command}`; "
            f"pass a baseline made by `bncheck {command} --format json`."
        )


def _check_command(command: str, report: Report, what: str) -> None:
    if command != report.command:
        raise UsageError(
            f"{what} is a `bncheck {command}` report but this is `bncheck {report.command}`; "
            f"pass a baseline made by `bncheck {report.command} --format json`."
        )


def _read_stats(path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """{layer: {data_mean, data_var, running_mean, running_var}} and the metadata of a file
    written by ``drift --save-stats`` (the one reader of :mod:`bncheck.report.stats_file`)."""
    from bncheck.report.stats_file import read_stats  # optional: the engines

    if not path.exists():
        raise UsageError(f"baseline file {path} does not exist.")
    try:
        stats = read_stats(path, mergeable=False)
    except DataError as exc:
        raise UsageError(f"baseline {exc}") from exc
    usable = {
        name: {"data_mean": m.mean, "data_var": m.var, "running_mean": stats.running[name][0], "running_var": stats.running[name][1]}
        for name, m in stats.moments.items()
        if name in stats.running
    }
    if not usable:
        raise UsageError(f"baseline {path} holds no per-layer statistics; pass a file written by drift --save-stats.")
    return usable, stats.meta


def _stats_baseline(path: Path, report: Report) -> Baseline:
    """BN101/BN102/BN104 evaluated on saved statistics with the report's thresholds."""
    if report.command != "drift":
        raise UsageError(
            f"saved statistics ({path.name}) can only be a baseline for `bncheck drift`; for `{report.command}` "
            "pass a JSON report."
        )
    stats, meta = _read_stats(path)
    samples = meta.get("samples")
    thresholds = default_thresholds()
    recorded = report.result.thresholds if isinstance(report.result, DriftResult) else None
    for code, values in (recorded or {}).items():
        thresholds.setdefault(code, {}).update(values)
    drift = {}
    layers = [layer for layer in report.layers if layer.name in stats]
    for layer in layers:
        s = stats[layer.name]
        if layer.eps is None or len(s["data_mean"]) != layer.num_features:
            continue
        drift[layer.name] = layer_drift(
            s["data_mean"], s["data_var"], s["running_mean"], s["running_var"], layer.eps,
            samples=int(samples) if isinstance(samples, int) else 0, elements=0,
        )  # fmt: skip
    if not drift:
        raise UsageError(f"baseline {path} has statistics for none of this model's BN layers (by name and width).")
    covered = ["BN101", "BN102"] + (["BN104"] if isinstance(samples, int) else [])
    evidence = DriftEvidence(layers=drift, samples=samples or 0)
    ctx = RuleContext(layers=layers, thresholds=thresholds, drift=evidence)
    findings = [f for code in covered for f in get_rule(code).run(ctx)]
    return Baseline(path=str(path), kind="stats", findings=findings, command="drift",
                    model_sha256=str(meta.get("model_sha256", "")), covered_rules=covered)  # fmt: skip

"""``bncheck drift``: run DATA through the model, measure what every BN layer really receives,
compare it with the stored running statistics; small-batch risk and train/eval mismatch on a
bounded subsample."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.backends.interface import ModelSource
from bncheck.backends.load import as_source
from bncheck.commands.audit import run_rules
from bncheck.config import Settings
from bncheck.engines.measure import Measurement, array_moments
from bncheck.errors import BncheckError, DataError, UsageError
from bncheck.numerics import drift as metrics
from bncheck.numerics.moments import Moments, merge_all
from bncheck.report import stats_file
from bncheck.report.report import Report
from bncheck.rules.registry import RuleContext


@dataclass
class DriftOptions:
    batch_size: int = 32
    limit: int | None = None
    train_batch_size: int = 16
    mismatch_samples: int = 256
    #: samples used to try candidate input corrections when BN103 fires
    diagnosis_samples: int = 64
    save_stats: Path | None = None
    layers: list[str] | None = None
    data_options: Any = None
    progress: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: carry the per-channel arrays in the report (``extras["channels"]``; see report_figures)
    channels: bool = False
    #: where the data pass runs: a ``bncheck.engines`` engine (None: this process)
    engine: Any = None
    #: ``(K, N)``, K 0-based: only the K-th of N deterministic shares of DATA's files (--shard)
    shard: tuple[int, int] | None = None
    #: report on statistics measured elsewhere (``bncheck merge``) instead of reading DATA
    stats: Path | None = None
    #: fsspec options for URL DATA (``s3://...``), e.g. ``{"endpoint_url": ...}``
    storage_options: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- analyses


def compute_drift(source_layers, moments: dict[str, Moments], samples: int) -> dict[str, metrics.LayerDrift]:
    out = {}
    for layer in source_layers:
        m = moments.get(layer.name)
        if m is None or not layer.has_running_stats or layer.eps is None or m.count == 0:
            continue
        out[layer.name] = metrics.layer_drift(
            m.mean,
            m.var,
            layer.running_mean,
            layer.running_var,
            layer.eps,
            samples=samples,
            elements=int(m.count),
        )
    return out


def first_drifting_layer(order: list[str], drift: dict[str, metrics.LayerDrift], thresholds: dict) -> str | None:
    z_warn = thresholds.get("BN101", {}).get("warning", 0.25)
    r_warn = thresholds.get("BN102", {}).get("warning", 0.25)
    for name in order:
        d = drift.get(name)
        if d and (d.mean_shift.mean >= z_warn or d.var_log_ratio.mean >= r_warn):
            return name
    return None


def input_drift_is_strong(first: list[str], drift: dict[str, metrics.LayerDrift], thresholds: dict) -> bool:
    """Whether the BN layers nearest the input drift enough to try candidate corrections: a
    score at BN103's threshold, or mean |z| / mean |r| at BN101/BN102's error thresholds."""
    score = thresholds.get("BN103", {}).get("score", 0.3)
    z_err = thresholds.get("BN101", {}).get("error", 0.5)
    r_err = thresholds.get("BN102", {}).get("error", 0.5)
    return any(
        drift[n].score >= score or drift[n].mean_shift.mean >= z_err or drift[n].var_log_ratio.mean >= r_err
        for n in first
    )


#: candidate corrections for BN103: (description, function of a preprocessed batch)
def _candidates(x: np.ndarray) -> list[tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    imagenet_mean = np.array([0.485, 0.456, 0.406], np.float32)
    imagenet_std = np.array([0.229, 0.224, 0.225], np.float32)
    out: list[tuple[str, Callable[[np.ndarray], np.ndarray]]] = [
        ("dividing the input by 255 (data in 0-255, model expects 0-1)", lambda a: a / 255.0),
        ("multiplying the input by 255 (data in 0-1, model expects 0-255)", lambda a: a * 255.0),
        ("inverting the input (x -> 1 - x)", lambda a: 1.0 - a),
    ]
    if x.ndim == 4 and x.shape[1] == 3:
        shape = (1, 3, 1, 1)
        out += [
            ("swapping the channel order (RGB <-> BGR)", lambda a: np.ascontiguousarray(a[:, ::-1])),
            (
                "applying ImageNet mean/std normalisation",
                lambda a: (a - imagenet_mean.reshape(shape)) / imagenet_std.reshape(shape),
            ),
            (
                "removing a mean/std normalisation (model expects plain 0-1)",
                lambda a: a * imagenet_std.reshape(shape) + imagenet_mean.reshape(shape),
            ),
        ]
    return out


def diagnose_input(runner, layers, sub: np.ndarray, first: list[str], batch_size: int) -> dict:
    """Re-measure the first BN layers under candidate input corrections; the one that removes
    most drift names the likely preprocessing mismatch."""
    by_name = {layer.name: layer for layer in layers}

    def score(x: np.ndarray) -> float:
        merged = array_moments(runner, x, batch_size, first)
        values = []
        for name in first:
            if name not in merged:
                continue
            m = merged[name]
            layer = by_name[name]
            d = metrics.layer_drift(m.mean, m.var, layer.running_mean, layer.running_var, layer.eps, samples=len(x), elements=m.count)
            values.append(d.score)
        return float(np.mean(values)) if values else float("nan")

    baseline = score(sub)
    tried = []
    for description, transform in _candidates(sub):
        try:
            value = score(transform(sub).astype(np.float32))
        except BncheckError:
            continue
        tried.append({"description": description, "score": value})
    tried.sort(key=lambda t: t["score"] if math.isfinite(t["score"]) else math.inf)
    out: dict[str, Any] = {"baseline": baseline, "candidates": tried, "samples": int(len(sub))}
    if tried and math.isfinite(tried[0]["score"]) and tried[0]["score"] < 0.5 * baseline:
        out["best"] = tried[0]
    return out


def _layer_divergence(moment_batches: dict[str, list[Moments]], layers) -> dict[str, float]:
    """Mean squared-Hellinger score between each batch's statistics and the running statistics."""
    by_name = {layer.name: layer for layer in layers}
    out = {}
    for name, ms in moment_batches.items():
        layer = by_name.get(name)
        if layer is None or not layer.has_running_stats:
            continue
        scores = []
        for m in ms:
            z = metrics.mean_shift(m.mean, layer.running_mean, layer.running_var, layer.eps)
            r = metrics.var_log_ratio(m.var, layer.running_var, layer.eps)
            scores.append(float(np.mean(metrics.hellinger_sq(z, r))))
        out[name] = float(np.mean(scores)) if scores else float("nan")
    return out


@dataclass
class TrainBatches:
    """One train-mode pass over a subsample: the outputs and per-layer moments of each batch."""

    batch_size: int
    sizes: list[int]
    outputs: list[np.ndarray]
    moments: list[dict[str, Moments]]


def train_batches(runner, sub: np.ndarray, batch_size: int, *, full_only: bool = False) -> TrainBatches:
    """Run ``sub`` through the model with BN in train mode, in batches of ``batch_size`` (a
    trailing batch of one sample, which has no batch statistics, is left out, and with
    ``full_only`` any trailing batch smaller than ``batch_size``). BN201 and BN301 share one
    such pass when their batch sizes are equal."""
    result = TrainBatches(int(batch_size), [], [], [])
    if batch_size < 1:
        return result
    for start in range(0, len(sub), batch_size):
        chunk = sub[start : start + batch_size]
        if len(chunk) < 2 or (full_only and len(chunk) < batch_size):
            break
        out, moments = runner.train_moments(chunk)
        result.sizes.append(len(chunk))
        result.outputs.append(out)
        result.moments.append(moments)
    return result


def small_batch_risk(layers, batches: TrainBatches, eval_out: np.ndarray) -> dict:
    """BN201: scatter of size-B batch statistics and prediction flips, from the full batches
    of a train-mode pass at B."""
    full = [k for k, size in enumerate(batches.sizes) if size == batches.batch_size]
    if not full:
        return {}
    usable = len(full) * batches.batch_size
    per_layer: dict[str, list[Moments]] = {}
    for k in full:
        for name, m in batches.moments[k].items():
            per_layer.setdefault(name, []).append(m)
    result: dict[str, Any] = {"batch_size": batches.batch_size, "samples": int(usable), "layers": {}}
    worst, worst_value = None, -1.0
    for name, ms in per_layer.items():
        pooled = merge_all(ms)
        eps = next((layer.eps for layer in layers if layer.name == name), 1e-5) or 1e-5
        sc = metrics.batch_scatter(
            np.stack([m.mean for m in ms]), np.stack([m.var for m in ms]), pooled.mean, pooled.var, eps
        )
        result["layers"][name] = sc
        if sc["mean_scatter"] > worst_value:
            worst, worst_value = name, sc["mean_scatter"]
    result["worst_layer"] = worst
    result["max_mean_scatter"] = worst_value
    train_out = np.concatenate([batches.outputs[k] for k in full])
    agreement = metrics.output_agreement(eval_out[:usable], train_out)
    if "top1_agreement" in agreement:
        result["flip_rate"] = 1.0 - agreement["top1_agreement"]
    result["relative_error"] = agreement["relative_error"]
    return result


def train_eval_mismatch(layers, batches: TrainBatches, eval_out: np.ndarray) -> dict:
    """BN301: outputs with batch statistics (train-mode BN, every batch of the pass) vs running
    statistics."""
    if not batches.outputs:
        return {}
    train_out = np.concatenate(batches.outputs)
    result = metrics.output_agreement(eval_out[: len(train_out)], train_out)
    per_layer: dict[str, list[Moments]] = {}
    for moments in batches.moments:
        for name, m in moments.items():
            per_layer.setdefault(name, []).append(m)
    divergence = _layer_divergence(per_layer, layers)
    ranked = sorted(divergence, key=lambda n: -divergence[n] if math.isfinite(divergence[n]) else math.inf)
    result.update({"batch_size": batches.batch_size, "top_layers": ranked[:5], "per_layer": divergence})
    return result


# ---------------------------------------------------------------------------- report figures
# (issue 6, reports: what the HTML report, --plot and the terminal bars need)


def report_figures(
    report: Report, layers, moments: dict[str, Moments], drift_by_layer: dict[str, metrics.LayerDrift], thresholds: dict, *, channels: bool
) -> None:
    """Record in ``report`` what its charts need beyond the contract's summaries.

    Always: the thresholds in force for the drift-phase rules, ``extras["drift"]["thresholds"]``
    ({code: {name: value}}, a few numbers), so a saved report draws the lines it was judged by.
    With ``channels`` (``--channels``, or ``--format html``): ``extras["channels"]`` =
    {layer: {running_mean, running_var, mean, var, z, r}}, one list entry per channel (6
    significant digits; NaN/Inf become null in JSON) for the per-channel scatter plots."""
    from bncheck.rules.registry import REGISTRY

    codes = sorted(code for code, r in REGISTRY.items() if r.phase == "drift" and code in thresholds)
    report.extras["drift"]["thresholds"] = {code: {k: float(v) for k, v in thresholds[code].items()} for code in codes}
    if not channels:
        return

    def rounded(values) -> list:
        return [float(f"{v:.6g}") for v in np.asarray(values, np.float64).tolist()]

    by_name = {layer.name: layer for layer in layers}
    report.extras["channels"] = {
        name: {
            "running_mean": rounded(by_name[name].running_mean),
            "running_var": rounded(by_name[name].running_var),
            "mean": rounded(moments[name].mean),
            "var": rounded(moments[name].var),
            "z": rounded(d.z),
            "r": rounded(d.r),
        }
        for name, d in drift_by_layer.items()
    }


# ---------------------------------------------------------------------------- API


def _progress(enabled: bool, total: int | None):
    from contextlib import nullcontext

    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    class _Rate(TextColumn):
        def __init__(self):
            super().__init__("")

        def render(self, task):
            from rich.text import Text

            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} samples/s" if speed else "", style="dim")

    return Progress(
        TextColumn("[bold]drift[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def drift(
    model: Any,
    data: str | Path | None,
    *,
    settings: Settings | None = None,
    options: DriftOptions | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
) -> Report:
    """Measure the BN input statistics of ``model`` on ``data`` and compare them with the stored
    running statistics (rules BN101-BN104, BN201, BN301)."""
    import bncheck.rules  # noqa: F401
    from bncheck.data import DataOptions

    settings = settings or Settings()
    options = options or DriftOptions()
    if options.batch_size < 1:
        raise BncheckError("--batch-size must be at least 1.")
    if (data is None) == (options.stats is None):
        raise UsageError("give DATA, or --stats FILE with statistics measured before, not both." if data is not None else "drift needs DATA (or --stats FILE).")
    if options.stats is not None and options.save_stats is not None:
        raise UsageError("--save-stats with --stats would copy the statistics file; use bncheck merge to combine files.")
    source: ModelSource = as_source(model, arch=arch, trust_pickle=trust_pickle)
    layers = source.bn_layers()
    if options.layers:
        unknown = sorted(set(options.layers) - {layer.name for layer in layers})
        if unknown:
            raise BncheckError(f"--layers names unknown BN layer(s): {', '.join(unknown[:5])}; `bncheck audit` lists them.")
        layers = [layer for layer in layers if layer.name in set(options.layers)]
    report = Report(command="drift", model=source.info(), layers=layers, findings=[], fail_on=settings.fail_on)
    if not layers:
        report.notes.append(f"no batch-norm layers found (the model has {source.op_count()} ops/modules): nothing to measure")
        return report
    data_options = options.data_options or DataOptions()
    if options.limit is not None:
        data_options.limit = options.limit
    names = [layer.name for layer in layers]
    provenance: dict[str, Any] = {}
    runner = None
    with ExitStack() as stack:
        if options.stats is not None:  # measured elsewhere (shards + bncheck merge): no data pass
            result, data_info, notes = stats_file.load_measurement(options.stats, source, layers)
            report.notes.extend(notes)
        else:
            from bncheck.engines import DataSpec, ModelSpec, PassRequest, make_engine

            where = DataSpec(str(data), options.shard, dict(options.storage_options), options.batch_size)
            model_spec = ModelSpec(Path(source.path), arch, trust_pickle) if source.path is not None else None
            session = stack.enter_context((options.engine or make_engine("local")).session(source, where, data_options, layers=names, model=model_spec))
            runner = stack.enter_context(source.runner(layers=names))
            if runner.unhookable:
                bad = ", ".join(f"{k} ({v})" for k, v in list(runner.unhookable.items())[:5])
                report.notes.append(f"{len(runner.unhookable)} BN layer(s) cannot be observed: {bad}")
            keep = max(options.mismatch_samples, options.diagnosis_samples)
            total = session.num_samples
            with _progress(options.progress, total) as bar:
                task = bar.add_task("drift", total=total) if bar is not None else None
                advance = (lambda n: bar.advance(task, n)) if bar is not None else None
                try:
                    request = PassRequest(names, options.batch_size, keep=keep, keep_predictions=True)
                    result = session.measure(request, on_batch=advance, runner=runner)
                except MemoryError as exc:
                    raise DataError("ran out of memory; lower --batch-size.") from exc
            data_info = session.describe()
            provenance = session.provenance() if options.save_stats is not None else {}
        if result.samples == 0:
            raise DataError(f"{data}: no usable samples (all skipped or excluded); see the warnings above.")
        order = [layer.name for layer in layers]
        drift_by_layer = compute_drift(layers, result.moments, result.samples)
        thresholds = settings.threshold_table()
        extras: dict[str, Any] = {"drift": drift_by_layer, "samples": result.samples}
        first_names = [n for n in order if n in drift_by_layer][: int(thresholds.get("BN103", {}).get("first_layers", 1))]
        if first_names and result.subsample is not None and input_drift_is_strong(first_names, drift_by_layer, thresholds):
            sub = result.subsample[: options.diagnosis_samples]
            extras["input_diagnosis"] = diagnose_input(runner, layers, sub, first_names, options.batch_size)
        if options.mismatch_samples > 0 and result.subsample is not None:
            sub = result.subsample[: options.mismatch_samples]
            ref = result.sub_outputs[: options.mismatch_samples]
            same = options.batch_size == options.train_batch_size  # one pass serves both
            small = train_batches(runner, sub, options.train_batch_size, full_only=not same)
            full = small if same else train_batches(runner, sub, options.batch_size)
            extras["small_batch"] = small_batch_risk(layers, small, ref) or None
            extras["mismatch"] = train_eval_mismatch(layers, full, ref) or None
    ctx = RuleContext(
        layers=layers,
        thresholds=thresholds,
        model_format=source.format,
        train_batch_size=options.train_batch_size,
        extras=extras,
    )
    report.findings = run_rules("drift", ctx, settings)
    for name, d in drift_by_layer.items():
        report.layer_extras[name] = {"drift": d.to_dict()}
    ranking = sorted(drift_by_layer, key=lambda n: -drift_by_layer[n].score)
    report.extras["data"] = {
        "path": str(data) if data is not None else data_info.get("path"),
        "samples": int(result.samples),
        "batch_size": int(options.batch_size),
        **{k: v for k, v in data_info.items() if k not in ("path", "samples")},
    }
    accuracy = _accuracy(result)
    report.extras["drift"] = {
        "first_drifting_layer": first_drifting_layer(order, drift_by_layer, thresholds),
        "ranking": ranking,
        "input_diagnosis": extras.get("input_diagnosis"),
        "small_batch": extras.get("small_batch"),
        "train_eval": {k: v for k, v in (extras.get("mismatch") or {}).items()} or None,
        "accuracy": accuracy,
        "unobserved_layers": dict(runner.unhookable) if runner is not None else {},
    }
    if options.save_stats is not None:
        meta = stats_file.part_metadata(
            source=source, layers=layers, data=str(data), samples=result.samples, batch_size=options.batch_size,
            describe=data_info, provenance=provenance,
        )  # fmt: skip
        stats_file.write_stats(options.save_stats, stats_file.measured(layers, result.moments, meta), force=True)
        report.extras["drift"]["saved_stats"] = str(options.save_stats)
    report_figures(report, layers, result.moments, drift_by_layer, thresholds, channels=options.channels)
    return report


def _accuracy(result: Measurement) -> float | None:
    if result.correct is not None:
        return float(result.correct / result.labelled) if result.labelled else None
    if result.labels is None or not result.outputs_for_accuracy:
        return None
    preds = np.concatenate(result.outputs_for_accuracy)
    if len(preds) != len(result.labels):
        return None
    return float(np.mean(preds == result.labels))

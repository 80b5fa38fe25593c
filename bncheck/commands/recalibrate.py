"""``bncheck recalibrate``: re-estimate the running statistics of BN layers on DATA and write a
copy of the model that carries them.

Methods (``--method``, in :mod:`bncheck.commands.recalibrate_estimate`):

* ``exact`` (default) — what each layer will really see at inference: the eval-mode fixed point
  in which every layer's statistics are those of its input with every layer before it
  recalibrated. One train-mode pass gives a first estimate, then eval-mode passes run the model
  with the current estimate until what its layers see is within ``tolerance`` (1e-4) of it on
  every channel (mean in channel standard deviations, variance relative); the estimate the last
  pass ran with is written, so the guarantee is measured, not assumed. The passes are reported.
* ``cumulative`` — the same as :func:`torch.optim.swa_utils.update_bn`: one train-mode pass
  with momentum None (equal-weight averages of batch means and *unbiased* batch variances;
  dropout stays in eval mode, so the result does not depend on its random masks).
* ``ema`` — momentum updates as training does, starting from the stored statistics, with each
  layer's own momentum (PyTorch convention) or ``--momentum``.

``--prior N`` blends the result with the stored statistics, ``(N * stored + n * measured) /
(N + n)`` with n the samples read, for the mean and the variance (Schneider et al., NeurIPS
2020; for ``exact`` the fixed point of the blend). ``--precision TOL`` reads DATA only until
every channel's mean and variance are known to TOL at 95% confidence (see
:class:`~bncheck.numerics.recalibration.PrecisionTracker`). ``--holdout F`` keeps a split of
DATA (F of it, at most ``holdout_samples``) out of the estimate, and the guard
(:mod:`bncheck.commands.recalibrate_guard`) refuses to write a model that does worse on it
(BN501, exit 1; ``--force-write`` writes anyway). OUT is written atomically or not at all.

The report's figures reuse the estimate's passes: "before" compares the stored statistics with
those of the estimate's first pass over DATA, and the report says which pass that was
(``Estimate.first_basis``): for the default level-by-level ``exact``, each layer's input with
the layers before it recalibrated, so deeper layers differ from ``bncheck drift``, which keeps
the stored statistics upstream; "after" is the last pass of ``exact`` (the written model on
DATA), or for the in-order methods the written model on the held-out split (a full pass of its
own when there is none). ``--verify`` runs full drift reports of MODEL and OUT on DATA instead.

Variance convention: ``exact`` writes the *population* variance of what the layer sees (the
quantity inference divides by), ``--variance unbiased`` writes ``n/(n-1)`` times it, PyTorch's
train-mode convention (1/n apart: visible only for BatchNorm1d on (N, C) inputs with few samples).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.backends import output
from bncheck.backends.interface import ModelSource
from bncheck.backends.load import as_source, backend_for, load_model
from bncheck.commands import recalibrate_guard as guard
from bncheck.commands.drift import DriftOptions, with_transform
from bncheck.commands.drift import drift as run_drift
from bncheck.commands.drift_analyses import compute_drift
from bncheck.commands.progress import step, steps
from bncheck.commands.recalibrate_estimate import Estimate, estimate_exact, estimate_in_order
from bncheck.config import Settings
from bncheck.data import DataOptions
from bncheck.data.holdout import HoldoutSplit
from bncheck.data.memory import as_data
from bncheck.engines import DataSpec, ModelSpec, PassRequest, make_engine
from bncheck.errors import BncheckError, UsageError
from bncheck.numerics.outputs import CLASS_AXIS_AUTO
from bncheck.numerics.recalibration import fewest_flagged
from bncheck.report.report import Report
from bncheck.report.results import DriftResult, LayerRecalibration, RecalibrationResult
from bncheck.report.stats_checks import NonFiniteMeasurement, check_measured, kept_nonfinite
from bncheck.rules import DriftEvidence, RecalibrationEvidence, RuleContext, run_rules

METHODS = ("exact", "cumulative", "ema")
#: the fraction of DATA held out for the guard by default (local engine)
DEFAULT_HOLDOUT = 0.1
#: the held-out check is called weak when it fails only if more than this fraction of its
#: samples get worse (fewer than 40 samples: 4 or more of them must)
WEAK_CHECK = 0.10
VARIANCES = ("population", "unbiased")


@dataclass
class RecalibrateOptions:
    method: str = "exact"
    variance: str = "population"
    momentum: float | None = None
    batch_size: int = 32
    limit: int | None = None
    layers: list[str] | None = None
    data_options: Any = None
    #: exact: stop when no channel of any layer moves by more than this (mean in channel
    #: standard deviations, variance relative) between what the model runs with and what it sees
    tolerance: float = 1e-4
    max_passes: int = 50
    #: pseudo sample size of the stored statistics (Schneider et al. 2020); 0: replace them
    prior: float = 0.0
    #: read DATA until every channel's mean and variance are known to this (95%), or it ends
    precision: float | None = None
    #: fraction of DATA held out for the guard (0: no split, no guard; None: 0.1 with the local
    #: engine, 0 on Ray, whose passes do not read DATA in order)
    holdout: float | None = None
    #: at most this many held-out samples (kept in memory, run three times)
    holdout_samples: int = 512
    #: write OUT even when the guard finds the recalibrated model worse
    force_write: bool = False
    #: run full drift reports of MODEL and OUT on DATA (the figures of the whole of DATA)
    verify: bool = False
    #: progress on stderr (``"always"``: drawn even when stderr is no terminal)
    progress: bool | str = False
    #: where the passes run: a ``bncheck.engines`` engine (None: this process). Ray runs the
    #: exact method's passes without a held-out split; cumulative and ema run in order here
    engine: Any = None
    #: fsspec options for URL DATA (``s3://...``)
    storage_options: dict[str, Any] = field(default_factory=dict)
    #: where the model runs: cpu, cuda, cuda:N or auto (see Backend.place)
    device: str = "cpu"
    #: exact: MiB of activations kept between the levels of the layer-by-layer estimate
    #: (batches beyond it are read from DATA again; 0 keeps none)
    cache_mb: float = 1024.0
    #: the class axis of the model's output for the held-out check, as drift's ``--class-axis``
    #: (auto, none or an axis of the output, the batch axis included)
    class_axis: int | str = CLASS_AXIS_AUTO

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"--method {self.method!r} must be one of: {', '.join(METHODS)}.")
        if self.variance not in VARIANCES:
            raise UsageError(f"--variance {self.variance!r} must be one of: {', '.join(VARIANCES)}.")
        if self.momentum is not None and not 0 < self.momentum <= 1:
            raise UsageError("--momentum must be in (0, 1] (PyTorch convention).")
        if self.momentum is not None and self.method != "ema":
            raise UsageError(
                f"--momentum only applies to --method ema; --method {self.method} does not use one: "
                "add --method ema or drop --momentum."
            )
        if self.batch_size < 2 and self.method != "exact":
            raise UsageError("train-mode methods need --batch-size 2 or more (batch statistics of one sample are undefined).")
        if self.prior < 0:
            raise UsageError("--prior must be 0 or more (the pseudo sample size of the stored statistics).")
        if self.prior and self.method == "ema":
            raise UsageError("--prior blends with the stored statistics, which --method ema already starts from: use exact or cumulative.")
        if self.precision is not None and not 0 < self.precision < 1:
            raise UsageError("--precision must be in (0, 1) (channel standard deviations, e.g. 0.01).")
        if self.holdout is not None and not 0 <= self.holdout < 1:
            raise UsageError("--holdout must be in [0, 1) (the fraction of DATA held out for the guard; 0 turns it off).")
        if self.tolerance <= 0:
            raise UsageError("--tolerance must be positive.")
        if self.cache_mb < 0:
            raise UsageError("--cache-mb must be 0 or more (MiB of activations kept between levels).")


def recalibrate(
    model: Any,
    data: Any,
    out: str | Path,
    *,
    settings: Settings | None = None,
    options: RecalibrateOptions | None = None,
    to: str | None = None,
    force: bool = False,
    arch: str | None = None,
    trust_pickle: bool = False,
    transform: Callable[[Any], Any] | None = None,
) -> Report:
    """Re-estimate the running statistics of ``model`` on ``data`` and write the result to
    ``out`` (unless the guard refuses it); the report holds per-layer before/after figures and
    the guard's. ``data`` and ``transform`` as for :func:`bncheck.drift` (in-memory DATA is read
    several times: pass a list, array, DataLoader or Dataset, not a one-shot iterator)."""
    options = with_transform(options or RecalibrateOptions(), transform)
    with steps(options.progress, "recalibrate"):
        return _recalibrate(model, data, output.file_path(out), settings or Settings(), options, to=to, force=force, arch=arch, trust_pickle=trust_pickle)


def _recalibrate(
    model: Any, data: Any, out: Path, settings: Settings, options: RecalibrateOptions, *, to: str | None, force: bool, arch: str | None, trust_pickle: bool
) -> Report:
    data = as_data(data)
    source = as_source(model, arch=arch, trust_pickle=trust_pickle)
    backend = backend_for(source)
    kind = backend.output_kind(source, out, to)
    output.check_output_path(out, protected=backend.protected_paths(source), force=force)
    layers = list(source.bn_layers())
    names = _chosen_names(source, layers, options.layers)
    source = backend.place(source, options.device)
    data_options = options.data_options or DataOptions()
    if options.limit is not None:
        data_options.limit = options.limit
    engine = options.engine or make_engine("local")
    if options.method != "exact" and engine.name != "local":
        raise UsageError(f"--method {options.method} updates the statistics batch after batch, in order: run it with --engine local (--method exact runs on {engine.name}).")
    where = DataSpec(data, None, dict(options.storage_options), options.batch_size)
    model_spec = ModelSpec(Path(source.path), arch, trust_pickle, source.device) if source.path is not None else None
    drift_options = DriftOptions(
        batch_size=options.batch_size, mismatch_samples=0, data_options=data_options, engine=engine,
        storage_options=dict(options.storage_options), device=source.device, class_axis=options.class_axis,
    )  # fmt: skip
    if options.verify:
        step("drift of MODEL on DATA (--verify)")
    before = run_drift(source, data, settings=settings, options=drift_options, arch=arch, trust_pickle=trust_pickle) if options.verify else None
    step(f"opening DATA ({engine.name})")
    with engine.session(source, where, data_options, layers=names, model=model_spec) as session:
        split = _split(options, session.num_samples, engine.name)
        try:
            est = _estimate(source, session, names, options, split)
        except NonFiniteMeasurement as exc:  # NaN samples kept on purpose are the cause, not an overflow
            raise (kept_nonfinite(session.describe()) or exc) from None
        updated = backend.with_statistics(source, est.stats, num_batches=est.batches if options.method != "ema" else None)
        x_held, y_held = split.samples() if split is not None else (None, None)
        checked, held_moments = (None, None)
        if x_held is not None:
            step("checking the result on the held-out split")
            checked, held_moments = guard.check(
                source, updated, x_held, y_held, options.batch_size, names, labels=session.label_check(), class_axis=options.class_axis
            )
        after_moments, after_samples, after_on = _after(est, held_moments, x_held, session, names, options)
        converts = kind in CONVERTED_NOTE and backend.family == "torch"  # a torch model written as ONNX / torch.export
        example = _example(session, x_held, options.batch_size) if converts else None
        data_info = session.describe()
    refused = bool(checked and checked["worse"] and not options.force_write)
    step("writing OUT")
    written = [] if refused else backend.write_model(updated, kind, out, example)
    after = None
    if options.verify and written:
        trusted = trust_pickle or kind == "pickle"
        step("drift of OUT on DATA (--verify)")
        reloaded = load_model(out, arch=arch, trust_pickle=trusted)
        after = run_drift(reloaded, data, settings=settings, options=drift_options, arch=arch, trust_pickle=trusted)
    step("the before/after figures")
    report = Report(command="recalibrate", model=source.info(), layers=layers, findings=[], fail_on=settings.fail_on)
    report.notes.extend(_report_notes(split, options, engine.name, checked, est, converted=bool(written) and converts, kind=kind))
    report.notes.extend(_training_note(layers))
    before_figures = compute_drift(layers, est.first, est.samples)
    new_layers = updated.bn_layers()  # the written statistics, which "after" is judged against
    after_figures = compute_drift(new_layers, after_moments, after_samples)
    report.findings = _findings(new_layers, settings, after, after_figures, after_samples, checked, bool(written))
    summary = _summary(options, est, out, kind, written, before, after, checked, split)
    summary["figures"] = {"before": est.first_basis if before is None else "bncheck drift of MODEL on DATA (--verify)", "after": after_on}
    record = {"path": str(data), "samples": int(est.samples), "batch_size": int(options.batch_size), **{k: v for k, v in data_info.items() if k not in ("path", "samples")}}
    entries = _layer_entries(layers, est, before_figures, after_figures, before, after)
    report.result = RecalibrationResult(data=before.data if before is not None else record, summary=summary, layers=entries)
    return report


def _split(options: RecalibrateOptions, num_samples: int | None, engine: str) -> HoldoutSplit | None:
    fraction = options.holdout if options.holdout is not None else (DEFAULT_HOLDOUT if engine == "local" else 0.0)
    if fraction <= 0:
        return None
    if num_samples:  # hold out at most holdout_samples: no sample is left out for nothing
        fraction = min(fraction, options.holdout_samples / num_samples)
    return HoldoutSplit(fraction, keep=options.holdout_samples)


def _training_note(layers) -> list[str]:
    """The note where the model's BN modules were saved in training mode (BN005): OUT keeps the
    mode it was given, so whoever runs it as-is normalises with each batch's statistics and the
    new running statistics go unused (a pickled, scripted or traced module was written so
    without a word)."""
    training = [la.name for la in layers if la.training and la.has_running_stats and la.momentum_convention == "pytorch"]
    if not training:
        return []
    return [
        f"{len(training)} BN layer(s) were saved in training mode (BN005; e.g. {training[0]}) and OUT keeps that mode: "
        "run it after model.eval(), or save the model in eval mode and recalibrate again, or the new statistics go unused"
    ]


def _guard_notes(split: HoldoutSplit | None, checked: dict[str, Any] | None, estimated: int) -> list[str]:
    """What the report says when the held-out check is missing or weak because DATA is small:
    no sample held out, or so few that only a large harm could fail it (the fewest that must
    get worse for the paired test, :func:`~bncheck.numerics.recalibration.fewest_flagged`,
    more than ``WEAK_CHECK`` of them)."""
    if split is None:
        return []
    evaluated = checked["samples"] if checked else 0
    if evaluated == 0:
        if split.held:  # without labels the check compares with batch statistics, which one sample has none of
            return [
                f"no held-out check of the result: its {split.held} held-out sample(s) run in batches of one (--batch-size 1, or a model "
                "exported with a fixed batch of 1), which have no batch statistics to compare with, and DATA has no labels; OUT was "
                "written unchecked: give labels (--labels) for the check"
            ]
        return [f"no held-out check of the result: DATA's {estimated} sample(s) are too few for one (none was held out, --holdout {split.fraction:g}); OUT was written unchecked: give more DATA or a larger --holdout"]
    fewest = fewest_flagged(evaluated)
    if fewest is not None and fewest / evaluated <= WEAK_CHECK:
        return []
    if fewest is None:
        can = "one sample has no standard error, so it cannot fail"
    elif checked and checked["basis"].startswith("distance"):
        can = "it can fail only on a large harm"
    elif fewest == evaluated:
        can = f"it fails only when all {evaluated} get worse"
    else:
        can = f"it fails only when {fewest} or more of them ({fewest / evaluated:.0%}) get worse"
    return [f"the held-out check of the result is weak: it ran on only {evaluated} sample(s) of DATA, and {can}; give more DATA or a larger --holdout for a stronger check"]


def _estimate(source: ModelSource, session, names: list[str], options: RecalibrateOptions, split) -> Estimate:
    if options.method == "exact":
        return estimate_exact(source, session, names, options, split)
    return estimate_in_order(source, session, names, options, split)


def _after(est: Estimate, held_moments, x_held, session, names: list[str], options: RecalibrateOptions):
    """The written model's BN-input moments for the "after" figures, their sample count and
    what they were measured on, from the cheapest source that has them."""
    if est.last is not None:
        return est.last.moments, est.last.samples, "the last estimation pass (the written model on DATA)"
    if held_moments is not None:
        return held_moments, int(len(x_held)), f"the written model on the held-out split ({len(x_held)} samples)"
    advance = step("what the written model sees on DATA", total=session.num_samples)
    result = session.measure(PassRequest(names, options.batch_size, statistics=est.stats), on_batch=advance)
    check_measured(result.moments)
    return result.moments, result.samples, "the written model on DATA (a pass of its own)"


def _findings(layers, settings: Settings, after: Report | None, after_figures, samples: int, checked, written: bool):
    thresholds = settings.threshold_table()
    if after is not None:
        findings = list(after.findings)
    else:
        ctx = RuleContext(layers=layers, thresholds=thresholds, drift=DriftEvidence(layers=after_figures, samples=samples))
        findings = run_rules("drift", ctx, select=settings.select, ignore=settings.ignore)
    if checked is not None:
        ctx = RuleContext(layers=layers, thresholds=thresholds, recalibration=RecalibrationEvidence(guard=checked, written=written))
        findings += run_rules("recalibrate", ctx, select=settings.select, ignore=settings.ignore)
    return findings


def _chosen_names(source: ModelSource, layers, chosen: list[str] | None) -> list[str]:
    """The layers to recalibrate: those with running statistics, of ``chosen`` (--layers)."""
    if not layers:
        raise BncheckError(f"no batch-norm layers found (the model has {source.op_count()} ops/modules): nothing to recalibrate.")
    names = [layer.name for layer in layers if layer.has_running_stats]
    if chosen:
        unknown = sorted(set(chosen) - {layer.name for layer in layers})
        if unknown:
            raise UsageError(f"--layers names unknown BN layer(s): {', '.join(unknown[:5])}; `bncheck audit` lists them.")
        names = [n for n in names if n in set(chosen)]
    _refuse_unused_statistics(layers, names)
    if not names:
        raise BncheckError("no BN layer with running statistics to recalibrate (see `bncheck audit`, rule BN004).")
    return names


def _refuse_unused_statistics(layers, names: list[str]) -> None:
    """A usage error when a layer to recalibrate normalises with batch statistics at inference
    (an ONNX node with training_mode=1, a torch BN with track_running_stats=False: BN004): the
    statistics written to it would never be used, and OUT would compute what MODEL does."""
    unused = [layer for layer in layers if layer.name in set(names) and not layer.uses_running_stats]
    if not unused:
        return
    shown = ", ".join(layer.name for layer in unused[:3]) + (f" and {len(unused) - 3} more" if len(unused) > 3 else "")
    onnx = any(layer.kind == "BatchNormalization" for layer in unused)
    how = (
        "export the model in eval mode (torch.onnx.export(..., training=torch.onnx.TrainingMode.EVAL))"
        if onnx
        else "build the layers with track_running_stats=True"
    )
    raise UsageError(
        f"BN layer(s) {shown} normalise with batch statistics at inference ({'training_mode=1' if onnx else 'track_running_stats=False'}; "
        f"BN004), so recalibrated statistics would never be used: {how} and recalibrate that, or leave them out with --layers."
    )


def _summary(options: RecalibrateOptions, est: Estimate, out: Path, kind: str, written, before, after, checked, split) -> dict[str, Any]:
    extra_passes = (1 if est.last is None and split is None else 0) + (2 if options.verify else 0)
    accuracy = {"before": _accuracy(before), "after": _accuracy(after)} if options.verify else {
        "before": checked.get("accuracy_before") if checked else None,
        "after": checked.get("accuracy_after") if checked else None,
    }  # fmt: skip
    summary: dict[str, Any] = {
        "method": options.method,
        "variance": options.variance if options.method == "exact" else "unbiased (per batch)",
        "layers": len(est.stats),
        "estimation_passes": len(est.passes),
        "passes": est.passes,
        "total_passes": len(est.passes) + extra_passes,
        "tolerance": options.tolerance if options.method == "exact" else None,
        "converged": est.converged,
        "samples": int(est.samples),
        "prior": options.prior,
        "output": {"path": str(out), "kind": kind, "files": [str(p) for p in written], "written": bool(written)},
        "accuracy": accuracy,
        "accuracy_on": "DATA" if options.verify else ("the held-out split" if checked else None),
    }
    if options.precision is not None:
        reached = est.precision or {}
        summary["precision"] = {"tolerance": options.precision, "confidence": 0.95, "samples": int(est.samples), **reached}
    if split is not None:
        summary["holdout"] = {"fraction": split.fraction, "samples": int(split.held), "evaluated": checked["samples"] if checked else 0}
    if checked is not None:
        summary["guard"] = checked
    return summary


def _accuracy(report: Report | None) -> float | None:
    return report.result.accuracy if report is not None and isinstance(report.result, DriftResult) else None


def _layer_entries(layers, est: Estimate, before_figures, after_figures, before: Report | None, after: Report | None) -> dict[str, LayerRecalibration]:
    entries = {}
    for index, layer in enumerate(layers):
        if before is not None:
            first = before.layer_drift(layer.name) or None
        else:
            first = before_figures[layer.name].to_dict() if layer.name in before_figures else None
        entry = LayerRecalibration(recalibrated=layer.name in est.stats, before=first)
        if after is not None:
            entry.after = _matching(after, layer.name, index) or None
        elif layer.name in after_figures:
            entry.after = after_figures[layer.name].to_dict()
        entries[layer.name] = entry
    return entries


def _matching(after: Report, name: str, index: int) -> dict | None:
    """The after-drift figures of layer ``name`` (same name; models written back keep their
    names), else of the layer at the same position."""
    figures = after.layer_drift(name)
    if figures is None and index < len(after.layers):
        figures = after.layer_drift(after.layers[index].name)
    return figures


def _report_notes(split, options: RecalibrateOptions, engine: str, checked, est, *, converted: bool, kind: str) -> list[str]:
    """The report's notes: a missing or weak held-out check, the estimate's, a conversion's."""
    notes = []
    if split is None and options.holdout is None:
        notes.append(f"no held-out check of the result: --engine {engine} reads no split (--engine local holds one out)")
    notes += _guard_notes(split, checked, est.samples)
    if checked and checked.get("labels_left_out"):
        notes.append(checked["labels_left_out"])
    notes += est.notes
    if converted:
        notes.append(CONVERTED_NOTE[kind])
    return notes


#: what a torch model recalibrated to ONNX or torch.export holds (converted as fold converts)
CONVERTED_NOTE = {
    "onnx": "OUT was converted to ONNX as fold converts (checked on two samples of DATA); the exporter folds BN into the "
    "convolutions, so OUT holds the recalibrated statistics in its weights and drift or audit of OUT see no BN layers",
    "export": "OUT was converted to torch.export as fold converts (checked on two samples of DATA), with the recalibrated statistics",
}


def _example(session, x_held, batch_size: int) -> tuple | None:
    """Two samples of DATA (the held-out ones where kept) for a conversion that runs the model
    on an input (a torch model written as ONNX or torch.export, as fold converts)."""
    if x_held is not None and len(x_held) >= 1:
        return (np.ascontiguousarray(x_held[:2]),)
    batches = getattr(session, "batches", None)  # an engine that streams no batches here (ray) keeps none
    for batch in batches(min(2, batch_size)) if batches is not None else ():
        return (np.ascontiguousarray(batch.x[:2]),)
    return None

"""``bncheck drift``: run DATA through the model, measure what every BN layer really receives,
compare it with the stored running statistics; small-batch risk and train/eval mismatch on a
bounded subsample (the analyses are in :mod:`bncheck.commands.drift_analyses`).

Flow: the model's BN layers -> one data pass on the engine (``options.engine``, this process
by default) with the backend's runner, or statistics measured before (``--stats``) -> the
per-layer figures (:mod:`bncheck.numerics.drift`) and the analyses -> the drift rules on a
typed :class:`~bncheck.rules.context.DriftEvidence` -> a :class:`~bncheck.report.results.DriftResult`
in the :class:`~bncheck.report.report.Report`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from bncheck.backends.interface import ModelSource
from bncheck.backends.load import as_source, backend_for
from bncheck.commands import drift_analyses as analyses
from bncheck.commands import drift_diagnosis as diagnostics
from bncheck.commands import drift_outputs as outputs
from bncheck.commands import drift_refine as refinement
from bncheck.commands import drift_small_batch as small_batch
from bncheck.commands.drift_pixels import PixelSpace
from bncheck.commands.drift_setting import output_setting
from bncheck.commands.progress import step, steps
from bncheck.config import Settings
from bncheck.data import DataOptions
from bncheck.data.memory import as_data
from bncheck.engines import DataSpec, ModelSpec, PassRequest, make_engine
from bncheck.engines.measure import Measurement
from bncheck.errors import BncheckError, DataError, UsageError, first_line
from bncheck.numerics import drift as metrics
from bncheck.report import stats_file
from bncheck.report.report import Report
from bncheck.report.results import DriftResult
from bncheck.report.stats_checks import NonFiniteMeasurement, check_measured, kept_nonfinite
from bncheck.rules import REGISTRY, DriftEvidence, RuleContext, run_rules, select_rules
from bncheck.rules.drift import train_eval_held_back
from bncheck.rules.input_diagnosis import InputDiagnosis


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
    #: progress on stderr (``"always"``: drawn even when stderr is no terminal)
    progress: bool | str = False
    extra: dict[str, Any] = field(default_factory=dict)
    #: carry the per-channel arrays in the report (``DriftResult.channels``)
    channels: bool = False
    #: where the data pass runs: a ``bncheck.engines`` engine (None: this process)
    engine: Any = None
    #: ``(K, N)``, K 0-based: only the K-th of N deterministic shares of DATA's files (--shard)
    shard: tuple[int, int] | None = None
    #: report on statistics measured elsewhere (``bncheck merge``) instead of reading DATA
    stats: Path | None = None
    #: fsspec options for URL DATA (``s3://...``), e.g. ``{"endpoint_url": ...}``
    storage_options: dict[str, Any] = field(default_factory=dict)
    #: ``--class-axis``: "auto", "none" or an axis of the model's output (batch axis included)
    class_axis: int | str = "auto"
    #: where the model runs: cpu, cuda, cuda:N or auto (see Backend.place)
    device: str = "cpu"
    #: passes over the subsample BN301 may make to reach DATA's population statistics
    #: (:func:`bncheck.commands.drift_refine.refine`; 1: the one-pass statistics, checked)
    refinement_passes: int = refinement.REFINE_PASSES
    #: BN201's train-mode pass: "auto" skips it where the batch scatter estimated from the main
    #: pass is too small for BN201 to fire, "always" runs it (the output figures are then there)
    train_pass: str = "auto"


@dataclass
class DataPass:
    """What one pass over DATA (or a statistics file) gave."""

    result: Measurement
    data_info: dict[str, Any]
    #: where the statistics came from (for --save-stats)
    provenance: dict[str, Any] = field(default_factory=dict)
    #: the runner of the pass (None with --stats: no model run)
    runner: Any = None


class DriftArguments(TypedDict, total=False):
    """The keyword arguments of :func:`drift`, for a function that takes them on its behalf
    (``**kwargs: Unpack[DriftArguments]``: :func:`bncheck.commands.drift_ranking.rank_models`
    hands them to the run of every model)."""

    settings: Settings | None
    options: DriftOptions | None
    arch: str | None
    trust_pickle: bool
    transform: Callable[[Any], Any] | None


def drift(
    model: Any,
    data: Any,
    *,
    settings: Settings | None = None,
    options: DriftOptions | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
    transform: Callable[[Any], Any] | None = None,
) -> Report:
    """Measure the BN input statistics of ``model`` on ``data`` and compare them with the stored
    running statistics (rules BN101-BN104, BN201, BN301).

    ``data``: a file, folder or URL; or, from Python, a numpy array or tensor, an ``(x, y)``
    pair, a torch ``DataLoader`` or ``Dataset``, or any iterable of arrays, tensors or
    ``(x, y)`` pairs (:mod:`bncheck.data.memory`). ``transform``: called on every PIL image of
    an image folder (and every in-memory item), e.g. the torchvision transform of training.
    ``options.progress`` draws the steps on stderr."""
    options = with_transform(options or DriftOptions(), transform)
    with steps(options.progress, "drift"):
        return _drift(model, data, settings or Settings(), options, arch, trust_pickle)


def _drift(model: Any, data: Any, settings: Settings, options: DriftOptions, arch: str | None, trust_pickle: bool) -> Report:
    data = as_data(data)
    _check_options(data, options)
    source: ModelSource = as_source(model, arch=arch, trust_pickle=trust_pickle)
    layers = _chosen_layers(source, options.layers)
    if options.stats is None:
        source = backend_for(source).place(source, options.device)
    report = Report(command="drift", model=source.info(), layers=layers, findings=[], fail_on=settings.fail_on)
    if not layers:
        if data is not None:
            _open_only(source, data, options)
        report.notes.append(f"no batch-norm layers found (the model has {source.op_count()} ops/modules): nothing to measure")
        ctx = RuleContext(layers=[], thresholds=settings.threshold_table(), model_format=source.format, op_count=source.op_count())
        report.findings = run_rules("model", ctx, select=settings.select, ignore=settings.ignore)
        return report
    thresholds = settings.threshold_table()
    selected = frozenset(r.code for r in select_rules("drift", settings.select, settings.ignore))
    with ExitStack() as stack:
        spec = ModelSpec(Path(source.path), arch, trust_pickle, source.device) if source.path is not None else None
        run = _data_pass(stack, source, data, layers, options, spec, report.notes, outputs=_compares_outputs(options, selected))
        if run.result.samples == 0:
            raise DataError(f"{data}: no usable samples (all skipped or excluded); see the warnings above.")
        evidence = _evidence(run, layers, options, thresholds, Diagnosis(source, selected), report.notes)
    ctx = RuleContext(layers=layers, thresholds=thresholds, model_format=source.format, train_batch_size=options.train_batch_size, drift=evidence)
    report.findings = run_rules(("audit", "drift"), ctx, select=_with_inference_rules(settings.select), ignore=settings.ignore)
    report.result = _result(data, run, layers, evidence, thresholds, options)
    if options.save_stats is not None:
        step("writing the statistics (--save-stats)")
        meta = stats_file.part_metadata(
            source=source, layers=layers, data=str(data), samples=run.result.samples, batch_size=options.batch_size,
            describe=run.data_info, provenance=run.provenance,
        )  # fmt: skip
        stats_file.write_stats(options.save_stats, stats_file.measured(layers, run.result.moments, meta, run.result.halves), force=True)
    return report


#: the static rules drift runs beside its own: a layer that normalises with its batch's statistics
#: at inference (no running statistics, a module saved in training mode) makes what drift measures
#: beside the point, and the gate passed such models silently (exit 0, even with --fail-on info)
INFERENCE_RULES = ("BN004", "BN005")


def _with_inference_rules(select: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The drift rules ``select`` chooses (all of them when empty) and :data:`INFERENCE_RULES`
    where ``select`` does not leave them out (it is empty, or names them)."""
    from_drift = tuple(r.code for r in select_rules("drift", select))
    chosen = [code for code in INFERENCE_RULES if not select or any(code.startswith(p) for p in select)]
    return (*from_drift, *chosen)


def with_transform(options, transform: Callable[[Any], Any] | None):
    """``options`` (Drift or Recalibrate) whose data options carry ``transform``."""
    if transform is None:
        return options
    return replace(options, data_options=replace(options.data_options or DataOptions(), transform=transform))


def _check_options(data, options: DriftOptions) -> None:
    if options.batch_size < 1:
        raise BncheckError("--batch-size must be at least 1.")
    if options.train_pass not in ("auto", "always"):
        raise UsageError(f"--train-pass must be auto or always, not {options.train_pass!r}.")
    if options.refinement_passes < 1:
        raise BncheckError("refinement_passes must be at least 1.")
    if (data is None) == (options.stats is None):
        raise UsageError("give DATA, or --stats FILE with statistics measured before, not both." if data is not None else "drift needs DATA (or --stats FILE).")
    if options.stats is not None and options.save_stats is not None:
        raise UsageError("--save-stats with --stats would copy the statistics file; use bncheck merge to combine files.")


def _chosen_layers(source: ModelSource, names: list[str] | None):
    layers = source.bn_layers()
    if not names:
        return layers
    unknown = sorted(set(names) - {layer.name for layer in layers})
    if unknown:
        raise BncheckError(f"--layers names unknown BN layer(s): {', '.join(unknown[:5])}; `bncheck audit` lists them.")
    return [layer for layer in layers if layer.name in set(names)]


def _compares_outputs(options: DriftOptions, selected: frozenset[str]) -> bool:
    """Whether an analysis compares the subsample's outputs (BN301, BN201): the main pass keeps
    them only then."""
    return options.mismatch_samples > 0 and ("BN301" in selected or ("BN201" in selected and options.train_batch_size >= 2))


def _open_only(source: ModelSource, data, options: DriftOptions) -> None:
    """Open DATA and read its first batch, for a model with nothing to measure: DATA that does
    not exist, is empty or does not fit the model still fails the run (exit 2), as it does for
    a model with BN layers."""
    engine = options.engine or make_engine("local")
    where = DataSpec(data, options.shard, dict(options.storage_options), options.batch_size)
    with engine.session(source, where, options.data_options or DataOptions(), layers=[]) as session:
        if session.num_samples == 0:
            raise DataError(f"{data}: no usable samples; give DATA with samples the model reads.")
        next(iter(session.batches(options.batch_size)), None)


def _data_pass(
    stack: ExitStack, source: ModelSource, data, layers, options: DriftOptions, model_spec, notes: list[str], *, outputs: bool = True
) -> DataPass:
    """The moments of every layer: one pass over DATA on the engine, or the ``--stats`` file.
    ``outputs``: keep the subsample's outputs (see :func:`_compares_outputs`)."""
    if options.stats is not None:  # measured elsewhere (shards + bncheck merge): no data pass
        result, data_info, stats_notes = stats_file.load_measurement(options.stats, source, layers)
        notes.extend(stats_notes)
        return DataPass(result, data_info)
    data_options = options.data_options or DataOptions()
    if options.limit is not None:
        data_options.limit = options.limit
    names = [layer.name for layer in layers]
    where = DataSpec(data, options.shard, dict(options.storage_options), options.batch_size)
    engine = options.engine or make_engine("local")
    step(f"opening DATA ({engine.name})")
    session = stack.enter_context(engine.session(source, where, data_options, layers=names, model=model_spec))
    runner = stack.enter_context(source.runner(layers=names))
    if runner.unhookable:
        bad = ", ".join(f"{k} ({v})" for k, v in list(runner.unhookable.items())[:5])
        notes.append(f"{len(runner.unhookable)} BN layer(s) cannot be observed: {bad}")
    request = PassRequest(
        names, options.batch_size, keep=max(options.mismatch_samples, options.diagnosis_samples), keep_outputs=outputs, keep_predictions=True, class_axis=options.class_axis
    )
    advance = step("reading DATA", total=session.num_samples)
    try:
        result = session.measure(request, on_batch=advance, runner=runner)
    except MemoryError as exc:
        raise DataError("ran out of memory; lower --batch-size.") from exc
    if result.label_note:
        notes.append(result.label_note)
    if result.samples == 1:  # no spread to compare, nor to tell noise by (a BatchNorm1d sees one value)
        raise DataError("DATA gave 1 sample: drift compares the spread of what each BN layer sees with its stored "
                        "statistics and needs at least 2 samples (a few hundred for reliable figures); give more DATA.")
    provenance = session.provenance() if options.save_stats is not None else {}
    return DataPass(result, session.describe(), provenance, runner)


@dataclass
class Diagnosis:
    """What the analyses need: the model, and the drift rules selected (an analysis whose rules
    are all selected off does not run: BN103's diagnosis, BN301's comparison, BN201's pass)."""

    source: ModelSource
    selected: frozenset[str]

    @property
    def wanted(self) -> bool:
        return "BN103" in self.selected


def _evidence(run: DataPass, layers, options: DriftOptions, thresholds: dict, diagnosis: Diagnosis, notes: list[str]) -> DriftEvidence:
    """The per-layer drift and, on the kept subsample, the analyses the drift rules judge. An
    analysis that fails after the measurement leaves a note; the measurement is kept."""
    result, runner = run.result, run.runner
    try:
        check_measured(result.moments, layers)
    except NonFiniteMeasurement as exc:  # NaN samples kept on purpose are the cause, not an overflow
        raise (kept_nonfinite(run.data_info) or exc) from None
    if runner is not None:  # the main pass's runtime memory is not held through the analyses
        runner.release()
    halves = _guarded("the split-half noise floor", notes, lambda: outputs.data_halves(runner, layers, result, options.batch_size)) if runner is not None or result.halves is not None else None
    drift_by_layer = analyses.compute_drift(layers, result.moments, result.samples, halves)
    evidence = DriftEvidence(layers=drift_by_layer, samples=result.samples)
    order = [layer.name for layer in layers if layer.name in drift_by_layer]
    first_names = order[: int(thresholds.get("BN103", {}).get("first_layers", 1))]
    if (
        diagnosis.wanted and first_names and result.subsample is not None and options.diagnosis_samples > 0
        and analyses.input_drift_is_strong(first_names, drift_by_layer, thresholds)
    ):  # fmt: skip
        sub = np.asarray(result.subsample[: options.diagnosis_samples])  # read once (a file-kept subsample)
        evidence.input_diagnosis = _guarded(
            "BN103's input diagnosis", notes, lambda: _diagnose(diagnosis.source, layers, order, sub, run.data_info, options.batch_size)
        )  # fmt: skip
    stale, small = "BN301" in diagnosis.selected, "BN201" in diagnosis.selected and options.train_batch_size >= 2
    if "BN201" in diagnosis.selected and options.train_batch_size < 2 and options.mismatch_samples > 0:
        notes.append("BN201 was skipped: batch statistics need a --train-batch-size of 2 or more")
    if not _compares_outputs(options, diagnosis.selected) or result.subsample is None:
        return evidence
    setting = _guarded("the output comparisons (BN201, BN301)", notes, lambda: output_setting(result, options.mismatch_samples, options.class_axis, options.batch_size))
    if setting is None:
        return evidence
    ranking = sorted(drift_by_layer, key=lambda n: -drift_by_layer[n].score)
    bn301 = thresholds.get("BN301", {})
    multiple = float(bn301.get("noise_multiple", 2.0))
    # below BN301's warning thresholds the rule cannot fire whatever the noise floor: its pass is skipped
    reach = (float(bn301.get("warning_disagreement", 0.02)), float(bn301.get("warning_rel_err", 0.1)))
    if stale:
        evidence.train_eval = _guarded(
            "BN301's comparison with DATA's own statistics", notes,
            lambda: outputs.stale_statistics(
                diagnosis.source, runner, layers, result, setting, halves, multiple=multiple, ranking=ranking, reach=reach,
                max_passes=options.refinement_passes, significance=float(bn301.get("significance", REGISTRY["BN301"].thresholds["significance"])),
            ),
        )  # fmt: skip
    if runner is not None:
        runner.release()
    unsettled = refinement.refinement_note(evidence.train_eval)
    if unsettled:
        notes.append(unsettled)
    held_back = train_eval_held_back(evidence.train_eval, {**REGISTRY["BN301"].thresholds, **bn301})
    if held_back:
        notes.append(held_back)
    no_classes = outputs.class_axis_note(evidence.train_eval)
    if no_classes:
        notes.append(no_classes)
    if small:
        # where the batch scatter the main pass lets estimate is far below BN201's threshold the
        # rule cannot fire: its train-mode pass is skipped (DriftOptions.train_pass "always" runs it)
        limit = float(thresholds.get("BN201", {}).get("mean_scatter", 0.25))
        skip = None if options.train_pass == "always" else limit * small_batch.SKIP_SCATTER_FRACTION
        evidence.small_batch = _guarded(
            "BN201's train-mode pass", notes, lambda: small_batch.small_batch_risk(layers, runner, setting, options.train_batch_size, skip_below=skip)
        ) or None  # fmt: skip
        if evidence.small_batch and evidence.small_batch.note:
            notes.append(f"BN201: {evidence.small_batch.note}.")
    return evidence


def _guarded(what: str, notes: list[str], analysis):
    """``analysis()`` (named on the progress line), or None and a note saying why it could not be done."""
    step(what)
    try:
        return analysis()
    except MemoryError:
        notes.append(f"{what} ran out of memory and was skipped; lower --mismatch-samples or --batch-size.")
    except Exception as exc:  # an analysis after the measurement must never lose the measurement
        notes.append(f"{what} could not be done and was skipped ({first_line(exc)}); the per-layer figures are unaffected.")
    return None


def _diagnose(source: ModelSource, layers, order: list[str], sub, data_info: dict, batch_size: int) -> InputDiagnosis:
    """BN103's diagnosis on runners of the network up to the first BN layers only."""
    backend = backend_for(source)
    verify = _verify_layers(backend, source, order, np.ascontiguousarray(sub[:1], dtype=np.float32))
    with backend.first_layers_runner(source, verify[:1]) as probe, backend.first_layers_runner(source, verify) as check:
        runners = diagnostics.Runners(probe, check, verify[0], [n for n in verify if n in check.layers], batch_size)
        return diagnostics.diagnose_input(runners, layers, sub, PixelSpace.of(data_info, tuple(sub.shape[1:])))


def _verify_layers(backend, source: ModelSource, order: list[str], sample: np.ndarray) -> list[str]:
    """The nearest :data:`~.drift_diagnosis.VERIFY_LAYERS` BN layers, less those after the
    first whose cut holds more than :data:`~.drift_diagnosis.MAX_VERIFY_SHARE` of the network's
    multiply-adds and more than :data:`~.drift_diagnosis.CHEAP_VERIFY_MACS` a sample (PP-OCR's
    second BN node ends its backbone: every candidate re-measured there cost a forward pass)."""
    verify = order[: max(1, diagnostics.VERIFY_LAYERS)]
    while len(verify) > 1:
        cost = backend.cut_cost(source, verify, sample)
        if cost is None or cost[0] <= diagnostics.CHEAP_VERIFY_MACS or cost[0] <= diagnostics.MAX_VERIFY_SHARE * cost[1]:
            break
        verify = verify[:-1]
    return verify


def _result(data, run: DataPass, layers, evidence: DriftEvidence, thresholds: dict, options: DriftOptions) -> DriftResult:
    drift_by_layer: dict[str, metrics.LayerDrift] = evidence.layers
    info = run.data_info
    record = {
        "path": str(data) if data is not None else info.get("path"),
        "samples": int(run.result.samples),
        **{k: v for k, v in info.items() if k not in ("path", "samples", "batch_size")},
        "batch_size": int(options.batch_size),  # the pass's, not DataOptions' default
    }
    return DriftResult(
        data=record,
        layers={name: d.to_dict() for name, d in drift_by_layer.items()},
        first_drifting_layer=analyses.first_drifting_layer([layer.name for layer in layers], drift_by_layer, thresholds),
        ranking=sorted(drift_by_layer, key=lambda n: -drift_by_layer[n].score),
        input_diagnosis=evidence.input_diagnosis,
        small_batch=evidence.small_batch,
        train_eval=evidence.train_eval,
        accuracy=outputs.run_accuracy(run.result),
        unobserved_layers=dict(run.runner.unhookable) if run.runner is not None else {},
        saved_stats=str(options.save_stats) if options.save_stats is not None else None,
        thresholds=drift_thresholds(thresholds),
        channels=analyses.channel_arrays(layers, run.result.moments, drift_by_layer) if options.channels else None,
    )


def drift_thresholds(thresholds: dict) -> dict[str, dict[str, float]]:
    """The thresholds in force for the drift-phase rules ({code: {name: value}}, a few numbers),
    so a saved report draws the lines it was judged by."""
    codes = sorted(code for code, r in REGISTRY.items() if r.phase == "drift" and code in thresholds)
    return {code: {k: float(v) for k, v in thresholds[code].items()} for code in codes}

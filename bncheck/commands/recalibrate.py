"""``bncheck recalibrate``: re-estimate the running statistics of BN layers on DATA and write a
copy of the model that carries them.

Methods (``--method``):

* ``exact`` (default) — what each layer will really see at inference. Every layer's statistics
  are measured in eval mode with the layers before it already recalibrated. A pass per layer
  would be exact but slow; instead one train-mode pass gives every layer a first estimate (the
  population statistics of its input when the layers before it normalise with batch
  statistics), then eval-mode passes over the data re-measure all layers at once with the
  latest estimates until no layer moves by more than ``tolerance`` (the largest mean |z| or
  mean |r| between two estimates, the contract's drift metrics). A pass settles at least the
  next layer of every dependency chain and parallel branches settle together, so it needs at
  most as many passes as the deepest BN chain, usually fewer. The number of passes is reported.
* ``cumulative`` — the same as :func:`torch.optim.swa_utils.update_bn`: one train-mode pass
  with momentum None, so the running mean is the average of the batch means and the running
  variance the average of the *unbiased* batch variances, every batch weighted equally.
  (Unlike ``update_bn``, dropout stays in eval mode, so the result does not depend on its
  random masks.)
* ``ema`` — momentum updates as training does, starting from the stored statistics:
  ``running = (1 - m) * running + m * batch`` per batch, with each layer's own momentum
  (PyTorch convention; ONNX momentum ``m`` is ``1 - m`` here) or ``--momentum``.

Variance convention: ``exact`` writes the *population* variance of what the layer sees (the
quantity inference divides by), ``--variance unbiased`` writes ``n/(n-1)`` times it, PyTorch's
train-mode convention. With n the number of elements per channel the two differ by 1/n: nothing
for a conv layer (n = samples x height x width), visible only for BatchNorm1d on (N, C) inputs
with few samples. ``cumulative`` and ``ema`` use unbiased per-batch variances, as PyTorch does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.backends import output
from bncheck.backends.interface import ModelSource, Statistics
from bncheck.backends.load import as_source, backend_for, load_model
from bncheck.commands.drift import DriftOptions, with_transform
from bncheck.commands.drift import drift as run_drift
from bncheck.config import Settings
from bncheck.data import DataOptions
from bncheck.data.memory import as_data
from bncheck.engines import DataSpec, ModelSpec, PassRequest, make_engine
from bncheck.errors import BncheckError, UsageError
from bncheck.numerics import drift as metrics
from bncheck.numerics.moments import Moments
from bncheck.report.report import Report
from bncheck.report.results import DriftResult, LayerRecalibration, RecalibrationResult
from bncheck.report.stats_checks import check_measured

METHODS = ("exact", "cumulative", "ema")
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
    #: exact: stop when no layer's statistics move by more than this (max |z| and |r|)
    tolerance: float = 1e-3
    max_passes: int = 50
    #: run drift of OUT on DATA after writing (before/after figures)
    verify: bool = True
    progress: bool = False
    #: where the passes run: a ``bncheck.engines`` engine (None: this process). Ray runs the
    #: exact method's passes and the drift before/after; cumulative and ema run in order here
    engine: Any = None
    #: fsspec options for URL DATA (``s3://...``)
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"--method {self.method!r} must be one of: {', '.join(METHODS)}.")
        if self.variance not in VARIANCES:
            raise UsageError(f"--variance {self.variance!r} must be one of: {', '.join(VARIANCES)}.")
        if self.momentum is not None and not 0 < self.momentum <= 1:
            raise UsageError("--momentum must be in (0, 1] (PyTorch convention).")
        if self.batch_size < 2 and self.method != "exact":
            raise UsageError("train-mode methods need --batch-size 2 or more (batch statistics of one sample are undefined).")


def _population(m: Moments, variance: str) -> tuple[np.ndarray, np.ndarray]:
    return m.mean.copy(), (m.unbiased_var if variance == "unbiased" else m.var).copy()


def _train_batches(runner, dataset, batch_size: int):
    """Per-batch train-mode moments, every BN layer normalising with its batch's statistics;
    a trailing batch of one sample is skipped (it has no batch statistics)."""
    for batch in dataset.batches(batch_size):
        if len(batch.x) < 2:
            continue
        _, moments = runner.train_moments(batch.x)
        yield moments


def _usable_train_moments(source: ModelSource, dataset, names: list[str], batch_size: int):
    """Per train-mode batch, the moments of each layer of ``names`` that saw at least 2 elements
    per channel (the ones a batch variance exists for). Raises when no batch had 2 samples."""
    batches = 0
    with source.runner(layers=names) as runner:
        for moments in _train_batches(runner, dataset, batch_size):
            batches += 1
            yield {n: moments[n] for n in names if moments[n].count >= 2}
    if batches == 0:
        raise BncheckError("no batch of at least 2 samples: use more data or a larger --batch-size.")


def estimate_cumulative(source: ModelSource, dataset, names: list[str], batch_size: int) -> tuple[Statistics, int]:
    """``update_bn``: equal-weight averages of batch means and unbiased batch variances."""
    sums: dict[str, list] = {}
    batches = 0
    for usable in _usable_train_moments(source, dataset, names, batch_size):
        batches += 1
        for n, m in usable.items():
            total = sums.setdefault(n, [np.zeros_like(m.mean), np.zeros_like(m.mean), 0])
            total[0] += m.mean
            total[1] += m.unbiased_var
            total[2] += 1
    return {n: (s[0] / s[2], s[1] / s[2]) for n, s in sums.items()}, batches


def estimate_ema(
    source: ModelSource, dataset, names: list[str], batch_size: int, momentum: float | None
) -> tuple[Statistics, int]:
    """Momentum updates from the stored statistics, batch by batch (unbiased batch variance)."""
    layers = {layer.name: layer for layer in source.bn_layers()}
    state = {n: (layers[n].running_mean.copy(), layers[n].running_var.copy()) for n in names}
    rates = {n: _pytorch_momentum(layers[n], momentum) for n in names}
    batches = 0
    for usable in _usable_train_moments(source, dataset, names, batch_size):
        batches += 1
        for n, m in usable.items():
            mean, var = state[n]
            state[n] = ((1 - rates[n]) * mean + rates[n] * m.mean, (1 - rates[n]) * var + rates[n] * m.unbiased_var)
    return state, batches


def _pytorch_momentum(layer, override: float | None) -> float:
    if override is not None:
        return float(override)
    m = layer.momentum
    if m is None:
        return 0.1
    if layer.momentum_convention == "onnx":
        m = 1.0 - m
    return float(m) if 0 < m <= 1 else 0.1


def _movement(old: Statistics, new: Statistics, layers) -> float:
    """How far the newest estimate moved, in the drift metrics of the contract: the largest
    over layers of mean |z| and mean |r| between two estimates (the drift the model with the
    old estimate shows on the data)."""
    worst = 0.0
    for n, (mean, var) in new.items():
        if n not in old:
            return float("inf")
        eps = layers[n].eps or 1e-5
        z = metrics.mean_shift(mean, old[n][0], old[n][1], eps)
        r = metrics.var_log_ratio(var, old[n][1], eps)
        worst = max(worst, float(np.mean(np.abs(z))), float(np.mean(np.abs(r))))
    return worst


def estimate_exact(
    source: ModelSource, session, names: list[str], options: RecalibrateOptions
) -> tuple[Statistics, list[dict[str, Any]]]:
    """The eval-mode fixed point: every layer's statistics are those of its input in eval mode
    with all the layers before it recalibrated.

    One train-mode pass gives every layer a starting estimate (its input's population
    statistics when the layers before it normalise with batch statistics, which differ from
    the final ones only by batch noise). Then each eval-mode pass re-measures *all* layers at
    once with the latest estimates, until no layer moves by more than ``tolerance``. A pass
    settles at least the next layer of every dependency chain, and parallel branches settle
    together, so it needs at most as many passes as the deepest BN chain and usually fewer —
    against one full pass per layer for the naive method. With ``--layers`` the iteration
    starts from the stored statistics of the chosen layers.

    Returns the statistics and one record per pass (mode, movement).
    """
    layers = {layer.name: layer for layer in source.bn_layers()}
    history: list[dict[str, Any]] = []
    all_layers = [layer.name for layer in source.bn_layers() if layer.has_running_stats]
    if set(names) >= set(all_layers) and options.batch_size >= 2:
        merged = session.measure(PassRequest(names, options.batch_size, mode="train")).moments  # one pass, any engine
        check_measured(merged)
        stats = {n: _population(m, options.variance) for n, m in merged.items() if n in names and m.count}
        history.append({"pass": 1, "mode": "train", "movement": None})
    else:
        stats = {n: (layers[n].running_mean.copy(), layers[n].running_var.copy()) for n in names}
    while len(history) < options.max_passes:
        result = session.measure(PassRequest(names, options.batch_size, statistics=stats))  # the model with `stats`
        check_measured(result.moments)
        new = {n: _population(result.moments[n], options.variance) for n in names if result.moments[n].count}
        moved = _movement(stats, new, layers)
        history.append({"pass": len(history) + 1, "mode": "eval", "movement": moved})
        stats = new
        if moved <= options.tolerance:
            break
    return stats, history


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
    ``out``; the report holds per-layer before/after drift figures and accuracies. ``data`` and
    ``transform`` as for :func:`bncheck.drift` (in-memory DATA is read several times: pass a
    list, array, DataLoader or Dataset, not a one-shot iterator)."""
    settings = settings or Settings()
    options = with_transform(options or RecalibrateOptions(), transform)
    data = as_data(data)
    source = as_source(model, arch=arch, trust_pickle=trust_pickle)
    backend = backend_for(source)
    out = Path(out)
    kind = backend.output_kind(source, out, to)
    output.check_output_path(out, protected=backend.protected_paths(source), force=force)
    layers = list(source.bn_layers())
    names = _chosen_names(source, layers, options.layers)
    data_options = options.data_options or DataOptions()
    if options.limit is not None:
        data_options.limit = options.limit
    engine = options.engine or make_engine("local")
    if options.method != "exact" and engine.name != "local":
        raise UsageError(f"--method {options.method} updates the statistics batch after batch, in order: run it with --engine local (--method exact runs on {engine.name}).")
    where = DataSpec(data, None, dict(options.storage_options), options.batch_size)
    model_spec = ModelSpec(Path(source.path), arch, trust_pickle) if source.path is not None else None
    drift_options = DriftOptions(
        batch_size=options.batch_size, mismatch_samples=0, data_options=data_options, engine=engine, storage_options=dict(options.storage_options)
    )
    before = run_drift(source, data, settings=settings, options=drift_options, arch=arch, trust_pickle=trust_pickle)
    # a session's batches() is a pass over DATA like Dataset.batches(), for the in-order methods
    with engine.session(source, where, data_options, layers=names, model=model_spec) as session:
        stats, batches, passes = estimate(source, session, names, options)
    if batches is None:
        batches = -(-before.data["samples"] // options.batch_size)
    updated = backend.with_statistics(source, stats, num_batches=batches if options.method != "ema" else None)
    written = backend.write_model(updated, kind, out)

    report = Report(command="recalibrate", model=source.info(), layers=layers, findings=[], fail_on=settings.fail_on)
    after = None
    if options.verify:
        trusted = trust_pickle or kind == "pickle"
        reloaded = load_model(out, arch=arch, trust_pickle=trusted)
        after = run_drift(reloaded, data, settings=settings, options=drift_options, arch=arch, trust_pickle=trusted)
        report.findings = after.findings
    summary = _summary(options, stats, passes, out, kind, written, before, after)
    report.result = RecalibrationResult(data=before.data, summary=summary, layers=_layer_entries(layers, stats, before, after))
    return report


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
    if not names:
        raise BncheckError("no BN layer with running statistics to recalibrate (see `bncheck audit`, rule BN004).")
    return names


def estimate(source: ModelSource, session, names: list[str], options: RecalibrateOptions) -> tuple[Statistics, int | None, list[dict[str, Any]]]:
    """The new statistics by ``options.method``, the number of batches they rest on (None:
    unknown, the exact method) and one record per pass."""
    if options.method == "exact":
        stats, passes = estimate_exact(source, session, names, options)
        return stats, None, passes
    if options.method == "cumulative":
        stats, batches = estimate_cumulative(source, session, names, options.batch_size)
    else:
        stats, batches = estimate_ema(source, session, names, options.batch_size, options.momentum)
    return stats, batches, [{"pass": 1, "mode": "train", "movement": None}]


def _summary(options: RecalibrateOptions, stats: Statistics, passes, out: Path, kind: str, written, before: Report, after: Report | None) -> dict[str, Any]:
    return {
        "method": options.method,
        "variance": options.variance if options.method == "exact" else "unbiased (per batch)",
        "layers": len(stats),
        "estimation_passes": len(passes),
        "passes": passes,
        "total_passes": len(passes) + 1 + (1 if after is not None else 0),
        "tolerance": options.tolerance if options.method == "exact" else None,
        "output": {"path": str(out), "kind": kind, "files": [str(p) for p in written]},
        "accuracy": {
            "before": _accuracy(before),
            "after": _accuracy(after) if after is not None else None,
        },
    }


def _accuracy(report: Report) -> float | None:
    return report.result.accuracy if isinstance(report.result, DriftResult) else None


def _layer_entries(layers, stats: Statistics, before: Report, after: Report | None) -> dict[str, LayerRecalibration]:
    entries = {}
    for index, layer in enumerate(layers):
        entry = LayerRecalibration(recalibrated=layer.name in stats, before=before.layer_drift(layer.name) or None)
        if after is not None:
            entry.after = _matching(after, layer.name, index) or None
        entries[layer.name] = entry
    return entries


def _matching(after: Report, name: str, index: int) -> dict | None:
    """The after-drift figures of layer ``name`` (same name; models written back keep their
    names), else of the layer at the same position."""
    figures = after.layer_drift(name)
    if figures is None and index < len(after.layers):
        figures = after.layer_drift(after.layers[index].name)
    return figures

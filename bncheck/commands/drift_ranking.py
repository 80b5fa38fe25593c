"""``bncheck drift M1 M2 ... DATA``: several models on the same DATA, ranked by how well their
stored statistics fit it (label-free model selection).

Flow: every model is loaded first (a model that fails names itself before any data is read),
their inputs are compared (models that cannot take the same DATA are refused), then each model
gets its own :func:`bncheck.commands.drift.drift` run on DATA, as ``bncheck drift MODEL DATA``
would make it, and :meth:`bncheck.report.ranking.Ranking.of` ranks the reports (by BN301's
output change where every model has one, else by the fit score of
:mod:`bncheck.numerics.ranking`; see :func:`bncheck.report.ranking.ranking_key`). DATA is read
once per model.
"""

from __future__ import annotations

import inspect
import itertools
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bncheck.backends.interface import InputSpec, ModelSource
from bncheck.backends.load import as_source, takes_arch
from bncheck.commands.drift import DriftArguments, DriftOptions, drift, with_transform
from bncheck.commands.progress import step, steps
from bncheck.data.memory import InMemoryData, as_data
from bncheck.errors import BncheckError, UsageError
from bncheck.report.ranking import Ranking

if TYPE_CHECKING:
    from typing_extensions import Unpack


def rank_models(models: Sequence[Any], data: Any, **drift_args: Unpack[DriftArguments]) -> Ranking:
    """Drift reports of every model in ``models`` on ``data`` and their ranking, best fit first
    (:class:`~bncheck.report.ranking.Ranking`). ``models``: two or more paths or loaded models;
    ``data`` and the keyword arguments (settings, options, arch, trust_pickle, transform) as for
    :func:`bncheck.commands.drift.drift`, which runs every model with them."""
    inspect.signature(drift).bind(None, None, **drift_args)  # a keyword drift() does not take: TypeError before any work
    options = with_transform(drift_args.pop("options", None) or DriftOptions(), drift_args.pop("transform", None))
    arch, trust_pickle = drift_args.pop("arch", None), drift_args.get("trust_pickle", False)
    if isinstance(models, (str, os.PathLike)):
        raise UsageError(f"rank_models takes a list of models, not one path ({os.fspath(models)}); give [model_a, model_b, ...].")
    models = list(models)
    data = _check(models, as_data(data), options)
    with steps(options.progress, "drift", first="loading the models"):
        archs = _archs(models, arch)
        sources = [_load(model, model_arch, trust_pickle) for model, model_arch in zip(models, archs, strict=True)]
        _same_inputs(models, sources)
        reports = []
        for number, (model, source, model_arch) in enumerate(zip(models, sources, archs, strict=True), 1):
            step(f"model {number}/{len(models)}: {_name(model)}")
            run = lambda source=source, a=model_arch: drift(source, data, options=options, arch=a, **drift_args)  # noqa: E731
            reports.append(_named(model, run))
    return Ranking.of(reports)


def _archs(models: list[Any], arch: str | None) -> list[str | None]:
    """``--arch`` for each model: the models it means something for (state dicts beside an ONNX
    file), or every model when it means something for none (whose loading then says so)."""
    if arch is None:
        return [None] * len(models)
    applies = [_named(model, lambda model=model: takes_arch(model)) for model in models]
    return [arch if ok else None for ok in applies] if any(applies) else [arch] * len(models)


def _check(models: list[Any], data: Any, options: DriftOptions) -> Any:
    """``data``, after refusing what a ranking cannot do."""
    if len(models) < 2:
        raise UsageError("ranking needs at least two models; `bncheck drift MODEL DATA` reports on one.")
    if data is None:
        raise UsageError("ranking models needs DATA: give it after the models (bncheck drift M1 M2 ... DATA).")
    if options.stats is not None:
        raise UsageError("--stats holds the statistics of one model; give DATA to rank several models.")
    if options.save_stats is not None:
        raise UsageError("--save-stats writes the statistics of one model; run bncheck drift MODEL DATA --save-stats per model.")
    if isinstance(data, InMemoryData) and data.one_shot:
        raise UsageError(f"DATA {data.name} is an iterator that can be read once; ranking reads DATA once per model: give a list, an array, a Dataset or a DataLoader.")
    seen: dict[str, Any] = {}
    for model in models:
        if not isinstance(model, (str, os.PathLike)):
            continue
        key = os.path.normcase(os.path.realpath(os.fspath(model)))
        if key in seen:
            raise UsageError(f"MODEL {os.fspath(model)} is given twice{_also(seen[key], model)}; give each model once.")
        seen[key] = model
    return data


def _also(first: Any, second: Any) -> str:
    return "" if os.fspath(first) == os.fspath(second) else f" (also as {os.fspath(first)})"


def _name(model: Any) -> str:
    if isinstance(model, (str, os.PathLike)):
        return os.fspath(model)
    return str(getattr(model, "path", None) or type(model).__name__)


def _named(model: Any, work: Callable[[], Any]) -> Any:
    """``work()``, its refusals naming ``model`` (same error class, one sentence)."""
    try:
        return work()
    except BncheckError as exc:
        name = _name(model)
        if name in str(exc):
            raise
        raise type(exc)(f"model {name}: {exc}") from exc


def _load(model: Any, arch: str | None, trust_pickle: bool) -> ModelSource:
    step(f"loading the model {_name(model)}")
    return _named(model, lambda: as_source(model, arch=arch, trust_pickle=trust_pickle))


def _spec(source: ModelSource) -> InputSpec | None:
    try:
        return source.input_spec()
    except BncheckError:
        return None  # not runnable: its own drift run says so, naming the model


def _same_inputs(models: list[Any], sources: list[ModelSource]) -> None:
    """UsageError when two models declare inputs that no one DATA can feed (different rank or
    different fixed sizes); unknown and dynamic dimensions are left to each drift run."""
    known = [(model, spec) for model, source in zip(models, sources, strict=True) if (spec := _spec(source)) is not None and spec.shape is not None]
    for (model_a, a), (model_b, b) in itertools.combinations(known, 2):
        clash = len(a.shape) != len(b.shape) or any(x is not None and y is not None and x != y for x, y in zip(a.shape, b.shape, strict=True))
        if clash:
            raise UsageError(
                f"the models take different inputs: {_name(model_a)} takes {a.describe()}, {_name(model_b)} takes {b.describe()}; "
                "rank only models that take the same DATA."
            )


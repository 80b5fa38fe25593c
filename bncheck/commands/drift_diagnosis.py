"""BN103's input diagnosis: what input the model expects, what DATA gives it, and which change
of the user's preprocessing options closes the gap, verified by measuring again.

Everything runs on the part of the network up to the first BN layers only
(``Backend.first_layers_runner``) and on a subsample:

1. probes (:mod:`bncheck.numerics.input_fit`) on the nearest layer: DATA with all but one or
   two input channels zeroed, a zero and constant inputs; when that layer's input is affine in
   the model input (checked), the stored statistics are solved for the per-channel scale and
   offset of the input they were accumulated on, i.e. the mean and std the model expects;
2. candidates in pixel space (:mod:`.drift_pixels`): the inferred ``--mean/--std``, /255, x255,
   inverted, channel order swapped, ImageNet, [-1, 1] and plain [0, 1] inputs;
3. each candidate is measured on the first ``verify`` BN layers (the nearest one and the two
   after it, so that corrections the first layer alone cannot tell apart, such as an inverted
   input and a mean shift, are told apart by the non-linearities between them), as far as the
   network up to them holds at most a third of a forward pass's multiply-adds or is cheap in
   itself (where the second BN node comes late in a large network, as in PP-OCR's recogniser,
   the nearest layer alone); the best one
   that halves their mean drift score is the finding's fix, reported with the nearest layer's
   drift score before -> after (``baseline_first_layer`` -> ``first_layer_score``), the figure
   the finding's headline gives; what the model expects is said in pixel units (``pixels``:
   the units of the user's ``--mean``/``--std``)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bncheck.commands.drift_pixels import Candidate, PixelSpace, fixed_candidates
from bncheck.engines.measure import array_moments
from bncheck.errors import BncheckError
from bncheck.numerics import drift as metrics
from bncheck.numerics.input_fit import (
    FULL_COVARIANCE_CHANNELS,
    Probes,
    covariance_from_pairs,
    fit_correction,
    predicted,
)
from bncheck.rules.input_diagnosis import InputDiagnosis, ScoredCandidate

#: BN layers a candidate is judged on (the nearest ones in network order)
VERIFY_LAYERS = 3
#: ... of which those after the first only while the network up to them holds at most this
#: share of a forward pass's multiply-adds (``Backend.cut_cost``), or this many a sample
#: (64 samples x a dozen candidates: a few seconds on a laptop core at most)
MAX_VERIFY_SHARE = 1 / 3
CHEAP_VERIFY_MACS = 50_000_000
#: largest number of input channels whose expected mean/std is inferred
MAX_INFERRED_CHANNELS = 16
#: a named candidate within this factor of the best score is preferred to the inferred one
NAMED_PREFERENCE = 1.25
#: a named candidate that lowers the score by this fraction is named beside the inferred fix
NAMED_GAIN = 0.1
#: channels whose correlation reaches this (and whose spreads agree) are copies of one another
COPIED_CORRELATION = 0.9999
#: values per channel that check (every k-th)
COPIED_VALUES = 1 << 18
#: how the inferred mean/std candidates' descriptions start, and how the one of a single scale
#: and shift for every channel ends (on top of the user's own per-channel --mean/--std it
#: still suggests one mean and std per channel: "one mean and std" read as a contradiction)
INFERRED = "normalising to the inferred"
ONE_FOR_ALL = "one scale and shift for all channels"
#: a per-channel fit whose scales differ by more than this across channels that DATA spreads
#: alike (their stds within ALIKE_RATIO) is no plausible preprocessing
IMPLAUSIBLE_RATIO = 3.0
ALIKE_RATIO = 1.5
COPIED = "DATA's channels are copies of one another (grey images stored as RGB): one scale and shift fitted for all of them"
ONE_FOR_ALL_WHY = "one scale and shift for all channels, re-measured, does as well as one per channel or nearly: the simpler fix"


@dataclass
class Runners:
    """Truncated runners: ``probe`` observes the nearest layer, ``verify`` the first few."""

    probe: Any
    verify: Any
    probe_layer: str
    verify_layers: list[str]
    batch_size: int


def _masked(x: np.ndarray, axis: int, channels: tuple[int, ...]) -> np.ndarray:
    out = np.zeros_like(x)
    index = [slice(None)] * x.ndim
    for c in channels:
        index[axis] = slice(c, c + 1)
        out[tuple(index)] = x[tuple(index)]
    return out


def _probe(runners: Runners, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = array_moments(runners.probe, x, runners.batch_size, [runners.probe_layer])[runners.probe_layer]
    return m.mean, m.var


def _constant(like: np.ndarray, axis: int, channels: tuple[int, ...]) -> np.ndarray:
    out = np.zeros_like(like[:1])
    index = [slice(None)] * like.ndim
    for c in channels:
        index[axis] = slice(c, c + 1)
        out[tuple(index)] = 1.0
    return out


def _probes(runners: Runners, x: np.ndarray, axis: int, data_mean: np.ndarray) -> tuple[Probes, bool]:
    """The probe runs, and whether the nearest layer's input is affine in the model input."""
    channels = x.shape[axis]
    centred = (x - data_mean.reshape([-1 if a == axis % x.ndim else 1 for a in range(x.ndim)])).astype(np.float32)
    bias, _ = _probe(runners, np.zeros_like(x[:1]))
    singles = [_probe(runners, _masked(centred, axis, (c,))) for c in range(channels)]
    constants = [_probe(runners, _constant(x, axis, (c,))) for c in range(channels)]
    pairs, border_pairs, cross = {}, {}, None
    if channels <= FULL_COVARIANCE_CHANNELS:
        for i, j in itertools.combinations(range(channels), 2):
            pairs[(i, j)] = _probe(runners, _masked(centred, axis, (i, j)))[1]
            border_pairs[(i, j)] = _probe(runners, _constant(x, axis, (i, j)))[1]
        cross = np.zeros((len(bias), channels, channels))
        for i, j in itertools.product(range(channels), repeat=2):
            var = _probe(runners, (_masked(centred, axis, (i,)) + _constant(x, axis, (j,))).astype(np.float32))[1]
            cross[:, i, j] = 0.5 * (var - singles[i][1] - constants[j][1])
    covariance = covariance_from_pairs(np.stack([var for _, var in singles], axis=1), pairs)
    border = covariance_from_pairs(np.stack([var for _, var in constants], axis=1), border_pairs)
    probes = Probes(
        bias, np.stack([mean - bias for mean, _ in singles], axis=1), covariance,
        np.stack([mean - bias for mean, _ in constants], axis=1), border, cross,
    )  # fmt: skip
    full_mean, full_var = _probe(runners, x)
    mean, var = predicted(probes, np.ones(channels), data_mean)
    spread = np.sqrt(np.maximum(full_var, 1e-30))
    affine = bool(np.all(np.abs(mean - full_mean) <= 1e-3 * spread + 1e-6 * np.abs(full_mean)))
    if pairs or channels == 1:  # the whole covariance is known: the variances must add up too
        affine = affine and bool(np.all(np.abs(var - full_var) <= 1e-2 * full_var + 1e-12))
    return probes, affine


def _score(runners: Runners, by_name: dict, x: np.ndarray) -> tuple[float, float]:
    """(mean drift score of the ``verify`` layers, which candidates are ranked by; drift score
    of the nearest layer, the figure the finding reports before -> after)."""
    merged = array_moments(runners.verify, x, runners.batch_size, runners.verify_layers)
    values = {}
    for name in runners.verify_layers:
        m, layer = merged.get(name), by_name[name]
        if m is None or m.count == 0:
            continue
        d = metrics.layer_drift(m.mean, m.var, layer.running_mean, layer.running_var, layer.eps, samples=len(x), elements=m.count)
        values[name] = d.score
    mean = float(np.mean(list(values.values()))) if values else float("nan")
    return mean, float(values.get(runners.verify_layers[0], float("nan"))) if runners.verify_layers else float("nan")


def _channel_stats(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    axes = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    # float64 accumulation without a float64 copy (64 samples of 3 x 224 x 224: 0.16 -> 0.03 s)
    return x.mean(axis=axes, dtype=np.float64), x.std(axis=axes, dtype=np.float64)


def _inferred(runners: Runners, by_name: dict, x: np.ndarray, space: PixelSpace) -> tuple[dict | None, list[Candidate]]:
    """What the model expects of its input (the fit of the probes) and the candidates that give
    it: one mean/std per channel and, for several channels, one for all of them (the
    re-measurement decides; where DATA's channels are copies of one another only the latter)."""
    axis = space.channel_axis
    if axis is None or space.channels > MAX_INFERRED_CHANNELS:
        return None, []
    mean, std = _channel_stats(x, axis)
    pixel_mean, pixel_std = _channel_stats(space.to_pixels(x), axis)
    probes, affine = _probes(runners, x, axis, mean)
    if not affine:
        return {"affine": False}, []
    layer = by_name[runners.probe_layer]
    eps = float(layer.eps or 0.0)
    info: dict[str, Any] = {"affine": True, "layer": runners.probe_layer}
    own = None if copied_channels(x, axis) else fit_correction(probes, layer.running_mean, layer.running_var, eps, mean)
    if space.channels == 1:
        figures, candidate = _fitted(own, space, x, mean, std, pixel_mean, pixel_std, False)
        return {**info, **figures}, [candidate] if candidate else []
    one = fit_correction(probes, layer.running_mean, layer.running_var, eps, mean, tied=True)
    tied, tied_candidate = _fitted(one, space, x, mean, std, pixel_mean, pixel_std, True)
    why = COPIED if own is None else _implausible(own.scale, std)
    if why:  # one map for all channels only
        per_channel = {"per_channel_fit": _fitted(own, space, x, mean, std, pixel_mean, pixel_std, False)[0]} if own is not None else {}
        return {**info, **tied, "tied": why, **per_channel}, [tied_candidate] if tied_candidate else []
    figures, candidate = _fitted(own, space, x, mean, std, pixel_mean, pixel_std, False)
    return {**info, **figures, "tied_fit": tied}, [c for c in (candidate, tied_candidate) if c]


def _implausible(scale: np.ndarray, data_std: np.ndarray) -> str:
    """Why a per-channel fit is no preprocessing a pipeline would have (empty when it could be):
    its scales differ across channels by more than :data:`IMPLAUSIBLE_RATIO` where DATA's own
    channels spread alike (grey or near-grey images: the fit turns the channels' small
    differences into the match, a std of 6.4 for one channel and 0.34 for the next)."""
    a = np.abs(np.asarray(scale, np.float64))
    spread = np.asarray(data_std, np.float64)
    if a.size < 2 or not np.all(np.isfinite(a)) or np.min(a) <= 0 or np.min(spread) <= 0:
        return ""
    if np.max(a) / np.min(a) <= IMPLAUSIBLE_RATIO or np.max(spread) / np.min(spread) > ALIKE_RATIO:
        return ""
    return (
        f"a fit per channel needs scales {np.max(a) / np.min(a):.3g}x apart on channels that DATA spreads alike, "
        "which no preprocessing does: one scale and shift fitted for all channels"
    )


def _fitted(fit, space: PixelSpace, x: np.ndarray, mean, std, pixel_mean, pixel_std, tied: bool) -> tuple[dict, Candidate | None]:
    """The figures of one fit (what the model expects, the suggestion) and its candidate (None
    where the fit's scale is not positive and finite)."""
    expected_mean, expected_std = fit.mean, np.abs(fit.scale) * std
    offset = fit.mean - fit.scale * mean  # x' = a (x - m) + mu = a x + offset
    figures: dict[str, Any] = {
        "expected": {"mean": _round(expected_mean), "std": _round(expected_std)},
        "data": {"mean": _round(mean), "std": _round(std)},
        "mean_shift": _round((mean - expected_mean) / np.where(expected_std > 0, expected_std, 1.0)),
        "pixels": _in_pixels(space, expected_mean, expected_std, pixel_mean, pixel_std),
        "residual": {"log_var": fit.var_residual, "mean_z": fit.mean_residual},
    }
    if np.any(fit.scale <= 0) or not np.all(np.isfinite(fit.scale)):
        return figures, None
    dtype = np.result_type(x.dtype, np.float32)
    scale_b = space.per_channel(fit.scale, x.ndim, dtype)
    offset_b = space.per_channel(offset, x.ndim, dtype)
    if space.images:  # x' = a x + d = (q - M') / S' with S' = S / a, M' = M - d S / a
        new_std = space.std / fit.scale
        new_mean = space.mean - offset * space.std / fit.scale
        options = space.options(mean=_round(new_mean), std=_round(new_std))
        figures["suggested"] = {"mean": _round(new_mean), "std": _round(new_std)}
    else:
        options = None
        figures["suggested"] = {"scale": _round(fit.scale), "offset": _round(offset)}
    description = INFERRED + (f" mean/std, {ONE_FOR_ALL}" if tied else " mean/std")
    return figures, (description, options, lambda q: space.normalise(q) * scale_b + offset_b)


def copied_channels(x: np.ndarray, axis: int) -> bool:
    """Whether DATA's channels are (to within :data:`COPIED_CORRELATION`) copies of one another,
    as grey images stored as RGB are: the separate contribution of each channel to the first
    layer cannot be told apart then, and the expected input is inferred with one mean and one
    std for every channel."""
    channels = x.shape[axis]
    if channels < 2:
        return False
    flat = np.moveaxis(np.asarray(x), axis, 0).reshape(channels, -1)
    flat = flat[:, :: max(1, flat.shape[1] // COPIED_VALUES)].astype(np.float64)  # evenly thinned: a check, not a figure
    centred = flat - flat.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", centred, centred))
    if np.any(norms == 0):
        return bool(np.all(norms == 0) and np.ptp(flat.mean(axis=1)) == 0)
    correlation = (centred @ centred.T) / np.outer(norms, norms)
    spread = norms.max() / norms.min()
    return bool(np.min(correlation) >= COPIED_CORRELATION and spread <= 1.0 + (1.0 - COPIED_CORRELATION) * 100)


def _in_pixels(space: PixelSpace, expected_mean, expected_std, data_mean, data_std) -> dict:
    """What the model expects and what DATA has in the units of the user's options: the scaled
    pixels (after ``--scale``, before ``--mean``/``--std``), the expectation under the current
    ``--mean``/``--std`` (``under``); arrays: as stored."""
    mean, std = space.pixel_moments(expected_mean, expected_std)
    out: dict[str, Any] = {"expected": {"mean": _round(mean), "std": _round(std)}, "data": {"mean": _round(data_mean), "std": _round(data_std)}}
    if space.images:
        out["under"] = {"mean": _round(space.mean), "std": _round(space.std)}
    return out


def _round(values) -> list[float]:
    return [float(f"{float(v):.4g}") for v in np.asarray(values).reshape(-1)]


def diagnose_input(runners: Runners, layers, sub: np.ndarray, space: PixelSpace) -> InputDiagnosis:
    """BN103's diagnosis on the subsample ``sub`` (model inputs as DATA gives them)."""
    by_name = {layer.name: layer for layer in layers}
    baseline, baseline_first = _score(runners, by_name, sub)
    q = space.to_pixels(sub)
    inference, inferred = _inferred(runners, by_name, sub, space)
    candidates = fixed_candidates(space, q) + inferred
    tried = []
    for description, options, transform in candidates:
        try:
            value, first = _score(runners, by_name, np.ascontiguousarray(transform(q), dtype=np.float32))
        except BncheckError:
            continue
        tried.append({"description": description, "options": options, "score": value, "first_layer_score": first})
    tried.sort(key=lambda t: t["score"] if math.isfinite(t["score"]) else math.inf)
    best = _best(tried, baseline)
    also = _named_alternative(tried, best, baseline, baseline_first)
    inference = _winning_fit(inference, best)
    return InputDiagnosis(
        baseline=baseline, baseline_first_layer=baseline_first, candidates=[ScoredCandidate.from_dict(t) for t in tried],
        samples=int(len(sub)), layers=list(runners.verify_layers), inference=inference,
        best=ScoredCandidate.from_dict(best) if best is not None else None,
        also=ScoredCandidate.from_dict(also) if also is not None else None, images=space.images,
    )  # fmt: skip


def _winning_fit(inference: dict | None, best: dict | None) -> dict | None:
    """``inference`` saying what the fit that won says: where the one mean/std for all channels
    is the fix, its figures replace the per-channel fit's (kept under ``per_channel_fit``)."""
    if best is None or not best["description"].endswith(ONE_FOR_ALL) or not inference or "tied_fit" not in inference:
        return inference
    rest = {k: v for k, v in inference.items() if k != "tied_fit"}
    own = {k: rest[k] for k in ("expected", "data", "mean_shift", "pixels", "residual", "suggested") if k in rest}
    return {**rest, **inference["tied_fit"], "tied": ONE_FOR_ALL_WHY, "per_channel_fit": own}


def _named_alternative(tried: list[dict], best: dict | None, baseline: float, first: float) -> dict | None:
    """Where the fix is the inferred mean/std (fitted to DATA, so it nearly always wins): the
    best named correction with options that lowers both the score and the nearest layer's score
    (the figure the finding reports) by at least :data:`NAMED_GAIN` (a channel order swapped,
    /255 ...), which says what went wrong where the fit only undoes it."""
    if best is None or not best["description"].startswith(INFERRED) or not (math.isfinite(baseline) and math.isfinite(first)):
        return None
    keep = 1.0 - NAMED_GAIN
    for t in tried:
        if t["options"] and not t["description"].startswith(INFERRED) and math.isfinite(t["score"]):
            lower = t["first_layer_score"] is not None and t["first_layer_score"] <= keep * first
            if lower and t["score"] <= keep * baseline:
                return t
    return None


def _best(tried: list[dict], baseline: float) -> dict | None:
    """The lowest-scoring candidate that halves the drift, a named one preferred to the inferred
    mean/std when it scores nearly as well (it says more about what went wrong)."""
    finite = [t for t in tried if math.isfinite(t["score"])]
    if not finite or not math.isfinite(baseline) or finite[0]["score"] >= 0.5 * baseline:
        return None
    top = finite[0]
    if top["description"].startswith(INFERRED):
        near = [t for t in finite[1:] if t["score"] <= NAMED_PREFERENCE * top["score"] + 1e-3]
        named = [t for t in near if not t["description"].startswith(INFERRED)]
        if named:
            return named[0]
        fewer = [t for t in near if t["description"].endswith(ONE_FOR_ALL)]  # two numbers rather than 2C
        if fewer:
            return fewer[0]
    return top

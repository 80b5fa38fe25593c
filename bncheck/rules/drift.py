"""Rules with data: BN101-BN104 (drift), BN201 (small-batch risk), BN301 (train/eval mismatch:
stored vs DATA's own statistics).

They read what ``bncheck drift`` measured, ``RuleContext.drift`` (a :class:`~bncheck.rules.context.DriftEvidence`:
per-layer drift, samples, the input diagnosis, the small-batch and the train/eval figures); without it they find nothing.
"""

from __future__ import annotations

import math

from bncheck.numerics.drift import LayerDrift
from bncheck.rules import references as papers
from bncheck.rules.context import RuleContext
from bncheck.rules.finding import Severity
from bncheck.rules.registry import rule


def _graded(value: float, warn: float, error: float) -> Severity | None:
    if not math.isfinite(value):
        return None
    if value >= error:
        return Severity.ERROR
    if value >= warn:
        return Severity.WARNING
    return None


@rule(
    code="BN101",
    name="mean-shift",
    severity="warning",
    phase="drift",
    summary="Mean shift of a layer above threshold (warning/error by threshold).",
    what="""For every channel, z = (data mean - running_mean) / sqrt(running_var + eps): how many
    stored standard deviations the mean of what the layer receives on DATA has moved. Flags a
    layer whose mean |z| over channels exceeds `warning` (warning) or `error` (error) by
    `significance` times the mean |z| that sampling noise alone gives on DATA (measured on
    two halves of DATA, its even and odd batches, and never below what normal sampling errors
    give, sqrt(2/pi) times the standard error: the report's `noise`). False-alarm rule: a
    figure that sampling noise alone could carry across the threshold (about one in a hundred
    at three noise levels) is not reported; bench/results/false_alarms.md has the measured
    rates on the bench models at n = 32, 256 and 2048.""",
    why="""BN subtracts the stored mean; when the data mean has moved, every following layer sees
    shifted activations it was never trained on. This is how a change of camera, lighting,
    preprocessing or population silently degrades a model.""",
    example="""Images 20% brighter in production: the first BN layer sees mean |z| = 0.8.""",
    fix="""Find what changed in the input (see BN103 and the first drifting layer); if the new data
    is the new normal, re-estimate the statistics with `bncheck recalibrate MODEL DATA --out OUT`
    and validate accuracy, or fine-tune.""",
    thresholds={"warning": 0.25, "error": 0.5, "significance": 3.0},
    threshold_docs={"warning": "mean |z| for a warning", "error": "mean |z| for an error", "significance": "sampling-noise levels by which mean |z| must exceed them"},
)
def check_mean_shift(r, ctx: RuleContext):
    yield from _graded_findings(
        r, ctx, lambda d: (d.mean_shift, d.z_se, d.noise()[0]), lambda s, d: f"mean shift: mean |z| {s.mean:.3g} (max {s.max:.3g} at channel {s.channel})"
    )


#: samples below which BN101/BN102 report nothing: from one sample neither the noise level nor,
#: for a layer that sees one value per channel (BatchNorm1d), a variance can be measured
MIN_DRIFT_SAMPLES = 2


def _layers(ctx: RuleContext) -> dict[str, LayerDrift]:
    return ctx.drift.layers if ctx.drift is not None else {}


def _graded_findings(r, ctx: RuleContext, figure, describe):
    """One finding per layer whose ``figure(drift) -> (Summary, standard error, noise level)``
    mean exceeds the rule's warning or error threshold by ``significance`` times the level
    sampling noise alone gives; ``describe(summary, drift)`` words it."""
    warn, error = ctx.threshold(r.code, "warning"), ctx.threshold(r.code, "error")
    z = ctx.threshold(r.code, "significance")
    for name, d in _layers(ctx).items():
        if d.samples < MIN_DRIFT_SAMPLES:  # one sample has no spread to tell sampling noise by (BN104 says so)
            continue
        summary, se, noise = figure(d)
        margin = z * noise if math.isfinite(noise) else 0.0
        sev = _graded(summary.mean - margin, warn, error)
        if sev:
            yield r.finding(
                name,
                f"{describe(summary, d)} ≥ {warn if sev is Severity.WARNING else error:g} + {z:g} x noise level {noise:.2g}",
                sev,
                mean=summary.mean,
                max=summary.max,
                channel=summary.channel,
                standard_error=se,
                noise=noise,
            )


@rule(
    code="BN102",
    name="variance-ratio",
    severity="warning",
    phase="drift",
    summary="Variance log-ratio of a layer above threshold (warning/error by threshold).",
    what="""For every channel, r = ln((data var + eps) / (running_var + eps)). Flags a layer whose
    mean |r| over channels reaches `warning` or `error` (0.5 means the variance is 1.65x or
    0.61x what the layer was calibrated for) by `significance` times the mean |r| that
    sampling noise alone gives on DATA, measured on two halves of it (the false-alarm rule of
    BN101; heavy-tailed activations have a noisier variance than a normal law says, and the
    split halves measure it).""",
    why="""BN divides by the stored standard deviation; when the spread of the data has changed
    (contrast, noise, blur, a different sensor gain) the normalised activations are too wide or
    too narrow, which saturates or silences the non-linearities that follow.""",
    example="""Noisy production images: BN layers near the input see 2x the variance (r = 0.69).""",
    fix="""As for BN101: find the input change, then recalibrate (`bncheck recalibrate`) or
    fine-tune on the new data.""",
    thresholds={"warning": 0.25, "error": 0.5, "significance": 3.0},
    threshold_docs={"warning": "mean |r| for a warning", "error": "mean |r| for an error", "significance": "sampling-noise levels by which mean |r| must exceed them"},
    references=(papers.ADABN_2016, papers.COVARIATE_SHIFT_ADAPTATION_2020),
)
def check_variance_ratio(r, ctx: RuleContext):
    yield from _graded_findings(
        r,
        ctx,
        lambda d: (d.var_log_ratio, d.r_se, d.noise()[1]),
        lambda s, d: f"variance ratio: mean |r| {s.mean:.3g} (max {s.max:.3g} at channel {s.channel}{_variance_factor(d.r, s.channel)})",
    )


def _variance_factor(r, channel: int) -> str:
    """``: data variance x2.13 the stored one`` for the channel of the largest |r| (its sign
    says which way: the message said "x2.13 or x0.47", as if the direction were unknown)."""
    if not 0 <= channel < len(r) or not math.isfinite(float(r[channel])):
        return ""
    return f": data variance x{math.exp(float(r[channel])):.3g} the stored one"


@rule(
    code="BN103",
    name="input-mismatch",
    severity="warning",
    phase="drift",
    summary="Drift already strong at the BN layer(s) nearest the input: preprocessing mismatch suspected.",
    what="""Looks at the first `first_layers` BN layers in network order. When they drift strongly
    (BN101/BN102 error level, or a drift score at `score`), bncheck runs the network up to its
    first BN layers only, on a subsample (--diagnosis-samples), to find the fix: (1) from the
    nearest layer's stored statistics and the map from the input to it (probed with DATA's
    channels one and two at a time and with constant inputs, so when that map is affine this
    is E[y] = W E[x] + b and Var[y] = a^T K a with K the measured covariance of the channels'
    contributions, spatial correlation included; beyond 4 input channels the channels are
    taken as independent) it infers the per-channel mean and std the model expects of its
    input, and one scale and shift for all channels beside it (the only fit where DATA's channels
    are copies of one another, grey stored as RGB, or where the per-channel fit needs scales
    more than 3x apart on channels DATA spreads alike, which no preprocessing does); (2) it
    re-measures the first three BN layers (those after the first while the network up to
    them is cheap: a third of a forward pass or 5e7 multiply-adds a sample at most) with
    candidate corrections made in pixel space (the user's --scale/--mean/--std/--channel-order undone, then redone): the
    inferred --mean/--std, /255, x255, an inverted input, the channel order swapped, ImageNet
    mean/std, [-1, 1] and plain [0, 1] pixels. It reports a preprocessing mismatch when one
    correction removes at least half of the drift (and names it, in the options that apply
    it, with the nearest layer's drift score before and after on the diagnosis' subsample),
    or when the score alone reaches `score`; where that correction is the inferred mean/std,
    the named one that helps most (by a tenth at least) is said beside it, since it says what
    went wrong. An inverted input is said as `--scale=-S --mean=M-1`. The finding states what the model expects and
    what DATA has in the units of the options (pixels after --scale, the units of
    --mean/--std; the expectation under the current --mean/--std), and the per-channel mean
    shift. False-alarm rate: in bench/false_alarms.py (six models, 200 in-distribution subsets
    at each of n = 32, 256 and 2048, default options) no run had any warning or error, BN103
    included: 0 of 3,600 runs (95% upper bound 1.5% per model and size;
    bench/results/false_alarms.md). Its trigger is an effect size alone (no noise margin), so
    it relies on in-distribution drift scores staying far below `score`.""",
    why="""Drift that starts at the very first layer is rarely a change of the world; it is
    almost always a change of plumbing: pixels in 0-255 instead of 0-1, BGR instead of RGB,
    normalisation applied twice or not at all, a different resize. Recalibrating would hide a
    bug that is cheaper to fix.""",
    example="""A CRNN trained on [-1, 1] grayscale text lines is fed plain 0-1 pixels: BN103
    says "drift starts at the input (cnn.1: drift score 0.132 on 32 samples) ...; in pixels after
    --scale (the units of --mean/--std), the model expects mean ≈ (0.8205),
    std ≈ (0.6871) under the current `--mean 0 --std 1`; DATA has mean (0.5915), std (0.3052);
    try `--mean 0.2271 --std 0.4441` (normalising to the inferred mean/std): re-measured on 32
    samples, cnn.1's drift score goes from 0.132 to 0.013".""",
    fix="""Apply the options the finding suggests (or the matching change in your own pipeline),
    then run drift again; where it suggests none, compare the scale (0-1 or 0-255), mean/std,
    channel order and resolution with the training pipeline's. `--select`/`--ignore BN103`
    turns the diagnosis off entirely.""",
    thresholds={"first_layers": 1, "score": 0.3},
    threshold_docs={"first_layers": "how many BN layers count as nearest the input", "score": "drift score that triggers the diagnosis"},
)
def check_input_mismatch(r, ctx: RuleContext):
    drift = _layers(ctx)
    if not drift or ctx.drift.samples < MIN_DRIFT_SAMPLES:
        return
    first = int(ctx.threshold(r.code, "first_layers"))
    limit = ctx.threshold(r.code, "score")
    nearest = [layer.name for layer in ctx.layers if layer.name in drift][:first]
    diagnosis = ctx.drift.input_diagnosis
    best = diagnosis.best if diagnosis is not None else None
    strong = [n for n in nearest if drift[n].score >= limit or best]
    if not strong:
        return
    msg = f"drift starts at the input ({strong[0]}: drift score {drift[strong[0]].score:.3g} on {ctx.drift.samples} samples): preprocessing mismatch suspected"
    expected = _expectation((diagnosis.inference if diagnosis is not None else None) or {})
    if expected:
        msg += f"; {expected}"
    if best:
        how = f"try `{best.options}` ({best.description})" if best.options else best.description
        layer = (diagnosis.layers or [strong[0]])[0]
        before, after = diagnosis.baseline_first_layer, best.first_layer_score
        if before is not None and after is not None and math.isfinite(before) and math.isfinite(after):
            msg += f"; {how}: re-measured on {diagnosis.samples} samples, {layer}'s drift score goes from {before:.3g} to {after:.3g}"
        else:
            msg += f"; {how}"
        also = diagnosis.also
        if also is not None and also.first_layer_score is not None and before is not None and math.isfinite(before):
            msg += f"; of the usual slips, {also.description} (`{also.options}`) helps most: {before:.3g} to {also.first_layer_score:.3g}"
    elif diagnosis is not None and diagnosis.images is False:
        msg += "; check how DATA's arrays were made against training: scale, offset or normalisation, layout, and the features themselves (sample rate, window, mel bins ...)"
    else:
        msg += "; check scale (0-1 vs 0-255), mean/std, channel order and resolution against training"
    yield r.finding(strong[0], msg, layers=strong, diagnosis=diagnosis.to_dict() if diagnosis is not None else {})


def _numbers(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _expectation(inference: dict) -> str:
    """What the model expects of its input and what DATA has, in the units of the user's
    options (pixels after --scale, the units of --mean/--std; arrays: as stored), and the
    largest per-channel mean shift, from the diagnosis' inference (empty without one)."""
    pixels = inference.get("pixels") or {}
    expected, data = pixels.get("expected"), pixels.get("data")
    if not expected or not data:
        return ""
    under = pixels.get("under")
    if under:
        text = (
            f"in pixels after --scale (the units of --mean/--std), the model expects mean ≈ {_numbers(expected['mean'])}, "
            f"std ≈ {_numbers(expected['std'])} under the current `--mean {_options(under['mean'])} --std {_options(under['std'])}`; "
        )
    else:
        text = f"the model expects input mean ≈ {_numbers(expected['mean'])}, std ≈ {_numbers(expected['std'])}; "
    text += f"DATA has mean {_numbers(data['mean'])}, std {_numbers(data['std'])}"
    if inference.get("tied"):
        text += f" ({inference['tied']})"
    shift = inference.get("mean_shift") or []
    ratios = [e / d for e, d in zip(expected["std"], data["std"], strict=False) if d > 0]
    if shift and ratios and all(0.8 <= q <= 1.25 for q in ratios):  # the spread fits: a mean shift
        worst = max(range(len(shift)), key=lambda c: abs(shift[c]))
        if abs(shift[worst]) >= 0.25:
            text += f" (channel {worst}'s mean is off by {shift[worst]:+.3g} expected stds)"
    return text


def _options(values) -> str:
    return ",".join(f"{v:.4g}" for v in values)


@rule(
    code="BN104",
    name="few-samples",
    severity="info",
    phase="drift",
    summary="Too few samples for reliable statistics.",
    what="""Flags a run with fewer than `min_samples` samples, and (one finding, with the samples that would do) the layers
    whose sampling standard error of mean |z| or mean |r| (the report's `uncertainty`) exceeds `max_se`.
    False-alarm rate: an info finding about the size of the run, not a drift detection, so it
    never fails the gate at `--fail-on error` (the default) or `warning`; it fires by design
    on every run below `min_samples`, whatever the data (every n = 32 run of
    bench/false_alarms.py), and bench/results/false_alarms.md, which counts runs with any
    warning or error, does not count it.""",
    why="""Drift figures are estimates: with 20 images a mean shift of 0.3 may be pure chance. The report states
    the standard error of each figure; this rule says when they are too uncertain to act on.""",
    example="""drift on a folder of 12 images: SE(z) = 0.29, SE(r) = 0.43.""",
    fix="""Run on more data (a few hundred samples is usually enough; the finding says how many), or treat the figures as a rough indication only.""",
    thresholds={"min_samples": 100, "max_se": 0.1},
    threshold_docs={"min_samples": "fewest samples for a reliable run", "max_se": "largest acceptable standard error"},
)
def check_few_samples(r, ctx: RuleContext):
    if ctx.drift is None:
        return
    samples = ctx.drift.samples
    minimum = ctx.threshold(r.code, "min_samples")
    max_se = ctx.threshold(r.code, "max_se")
    if samples < MIN_DRIFT_SAMPLES:
        yield r.finding(None, f"only {samples} sample: drift cannot be measured from one sample (no spread to tell noise by), "
                        f"so BN101-BN103 report nothing; run on at least {minimum:g}", samples=samples)
        return
    if samples < minimum:
        return (yield r.finding(None, f"only {samples} samples: drift figures are uncertain (fewer than {minimum:g})", samples=samples))
    over = {name: max(d.z_se, d.r_se) for name, d in ctx.drift.layers.items() if math.isfinite(max(d.z_se, d.r_se)) and max(d.z_se, d.r_se) > max_se}
    if over:  # one finding for the run (a PicoDet's 94 layers each said "0.1 exceeds 0.1"), sized in samples
        name, worst = max(over.items(), key=lambda item: item[1])
        need = math.ceil(samples * (worst / max_se) ** 2)  # the standard errors fall as 1/sqrt(n); beyond 10x, a drift's own spread sets them
        more = f"about {need} samples would bring it under {max_se:g}" if need <= 10 * samples else "the spread of a large drift sets it, more samples hardly lower it"
        yield r.finding(None, f"standard error of the drift figures above {max_se:g} at {len(over)} of {len(ctx.drift.layers)} layer(s) (largest {worst:.3g} at "
                        f"{name}, on {samples} samples): {more}", samples=samples, layers=len(over), largest_se=worst)


@rule(
    code="BN201",
    name="small-batch-risk",
    severity="warning",
    phase="drift",
    summary="Small-batch risk: at the given batch size, per-batch statistics scatter too far from the population statistics and the outputs change.",
    what="""Splits a subsample (--mismatch-samples) into batches of --train-batch-size B, runs them
    with BN using batch statistics (everything else in eval mode, nothing stored modified), and
    measures (a) per layer how far the batch means scatter around the population mean, in
    channel standard deviations, and how far the batch variances scatter (log-ratio), and (b)
    how the outputs differ from eval mode: the fraction of positions whose top-1 class changes
    (per position over the class axis; see `--class-axis`), or the relative output error for
    outputs without classes. Fires when the worst layer's mean scatter exceeds `mean_scatter`
    AND the outputs change by more than `flip_rate` (or `rel_err`), each by `significance`
    standard errors (over the batches, over the samples). The pass is skipped (`--train-pass
    auto`, the default; `always` runs it) when the scatter of every layer, estimated without a
    pass from the per-sample statistics the main pass keeps of the subsample, is below half of
    `mean_scatter`: the estimate is exact for the first BN layer and measured within 1.1x of the
    pass's worst layer on the sample and real trained models, so there the rule cannot fire;
    the report then carries the estimate (`train_pass` false) and no output figures. BatchNorm1d sees one value per sample,
    so its batch means scatter by 1/sqrt(B) std: 0.25 at B = 16, the threshold itself, which
    therefore does not fire on noise alone. False-alarm rule: a change that sampling alone (the subsample is finite) could
    make look as large is not reported; bench/results/false_alarms.md has the measured rates
    on in-distribution data of the bench models. The measured figure is the model's own: a model that
    really changes its predictions under batch statistics of size B fires on any data.""",
    why="""Training normalises with these noisy batch statistics; the network learns under noise
    that inference does not have, and fine-tuning or train-mode inference with such batches
    changes predictions. Below about 16 samples per device BN's statistics become unreliable.""",
    example="""B = 4 on 32x32 feature maps: batch means scatter by 0.4 std, 9% of predictions flip.""",
    fix="""Use GroupNorm or LayerNorm, SyncBatchNorm across devices, larger per-device batches, or
    freeze BN (FrozenBatchNorm2d) when fine-tuning with small batches; serve in eval mode.""",
    thresholds={"mean_scatter": 0.25, "flip_rate": 0.05, "rel_err": 0.25, "significance": 3.0},
    threshold_docs={
        "mean_scatter": "batch-mean scatter in channel stds",
        "flip_rate": "fraction of positions whose top-1 class changes",
        "rel_err": "relative output error (outputs without classes)",
        "significance": "standard errors by which the change must exceed its threshold",
    },
    references=(papers.GROUP_NORM_2018, papers.BATCH_RENORM_2017, papers.RETHINKING_BATCH_2021),
)
def check_small_batch(r, ctx: RuleContext):
    sb = ctx.drift.small_batch if ctx.drift is not None else None
    if not sb:
        return
    z = ctx.threshold(r.code, "significance")
    scatter = sb.max_mean_scatter
    if not isinstance(scatter, (int, float)):  # one batch: not measurable (the result's note says so)
        return
    if not _significantly_above(scatter, ctx.threshold(r.code, "mean_scatter"), _or_nan(sb.mean_scatter_se), z):
        return
    if not sb.train_pass:  # skipped only where the estimated scatter is far below the threshold
        return
    if sb.flip_rate is not None:
        value, se, limit = sb.flip_rate, _or_nan(sb.flip_rate_se), ctx.threshold(r.code, "flip_rate")
        change = f"{value:.1%} of predictions change with BN in train mode"
    else:
        value, se, limit = sb.relative_error, _or_nan(sb.relative_error_se), ctx.threshold(r.code, "rel_err")
        change = f"the outputs change by {value:.3g} (relative error) with BN in train mode"
    if not _significantly_above(value, limit, se, z):
        return
    yield r.finding(
        None,
        f"small-batch risk at batch size {sb.batch_size}: batch means scatter by {scatter:.2g} std in "
        f"{sb.worst_layer} and {change} — consider GroupNorm/LayerNorm, SyncBatchNorm or frozen BN",
        batch_size=sb.batch_size,
        max_mean_scatter=scatter,
        flip_rate=sb.flip_rate,
        relative_error=sb.relative_error,
        worst_layer=sb.worst_layer,
    )


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _significantly_above(value: float, limit: float, se: float, z: float) -> bool:
    """``value`` reaches ``limit`` by at least ``z`` standard errors ``se`` (a NaN error counts as
    no evidence beyond the value itself)."""
    if not (math.isfinite(value) and value >= limit):
        return False
    return not math.isfinite(se) or value - z * se >= limit


def _train_eval_effect(mm, threshold) -> tuple[Severity | None, str]:
    """The severity BN301's effect reaches by its size where it is also ``noise_multiple`` times
    its noise floor (None otherwise), and its words; ``threshold(name)`` reads BN301's
    thresholds. Significance is the caller's (the rule fires on it, the note names its lack)."""
    floor = mm.noise_floor
    if mm.top1_agreement is not None:
        value, noise = 1.0 - mm.top1_agreement, 1.0 - (floor.top1_agreement if floor.top1_agreement is not None else 1.0)
        sev = _graded(value, threshold("warning_disagreement"), threshold("error_disagreement"))
        what = f"top-1 agreement {mm.top1_agreement:.1%} between the stored statistics and DATA's own (noise floor {1.0 - noise:.1%})"
    else:
        value, noise = mm.relative_error, floor.relative_error if floor.relative_error is not None else 0.0
        sev = _graded(value, threshold("warning_rel_err"), threshold("error_rel_err"))
        what = f"relative output error {value:.3g} between the stored statistics and DATA's own (noise floor {noise:.2g})"
    return (sev if value >= threshold("noise_multiple") * noise else None), what


def train_eval_held_back(mm, thresholds: dict[str, float]) -> str | None:
    """The report's note where BN301's effect is beyond its thresholds and its noise floor
    but not significant on this many samples (the rule stays silent then): what was seen and
    that more samples decide. None otherwise."""
    if mm is None or mm.diverged:
        return None
    sev, what = _train_eval_effect(mm, lambda name: float(thresholds[name]))
    significance, needed = mm.significance, float(thresholds["significance"])
    if not sev or not math.isfinite(significance) or not 0 < significance < needed:
        return None  # at or below 0 the effect lies within the noise on the samples compared
    return (
        f"BN301 held back: {what} on {mm.samples} samples, but only {significance:.2g} standard errors beyond "
        f"{thresholds['noise_multiple']:g}x the floor (it needs {needed:g}); more samples (--mismatch-samples, more DATA) decide"
    )


@rule(
    code="BN301",
    name="train-eval-mismatch",
    severity="warning",
    phase="drift",
    summary="Train/eval mismatch: the stored statistics change the outputs on this data beyond its sampling noise.",
    what="""Runs a subsample (--mismatch-samples) with BN normalised by DATA's own population
    statistics — what `bncheck recalibrate --method exact` would write on DATA: every layer's
    statistics those it sees with the layers before it on DATA's statistics too (refined from
    the main pass's moments, below) — and compares with the eval outputs of the
    main pass (stored running statistics): the fraction of positions whose top-1 class agrees
    (per position over the class axis, `--class-axis`) and the relative output error for
    outputs without classes; with labels, the accuracy both ways. The noise floor is the same
    comparison between the statistics of one half of DATA (its even batches) and of all of it,
    which differ by sampling alone as much as DATA's statistics differ from its population's.
    Fires (warning or error by the `*_disagreement` / `*_rel_err` thresholds) only when the
    effect also reaches `noise_multiple` times the noise floor AND exceeds that multiple by
    `significance` standard errors over the samples (an effect below the warning thresholds cannot fire, and its floor is not
    measured: `noise_floor.measured` false; the floor's pass stops after 64, 128, ... samples where they decide the rule,
    t below significance - 3 or at least significance + 3: `noise_floor.samples`). It stays a warning when the stored
    statistics suit DATA at least as well as its own: with labels, when recalibrating would not
    raise the accuracy; without, when the outputs are more confident with the stored statistics
    (DATA narrower than the training data: its own statistics would not generalise). DATA's
    statistics are refined to the fixed point `recalibrate --method exact` writes (a first pass
    checks the one-pass statistics; where they do not hold, one level-by-level pass solves for
    it and a last pass measures the residual, none where it took every sample (0 there by construction), `refinement_movement`: mean in channel standard
    deviations, variance relative, with the layer's eps; `refinement_tolerance` 0.02); when
    they do not settle within the passes allowed (`refinement_converged` false: a model that
    cannot be cut into levels, iterated one level per pass), the report says so in a note and
    BN301 reports at most a warning, qualified; nothing where the passes diverged (no estimate). False-alarm rule: on data drawn from the
    distribution the statistics were accumulated on, the effect is about the noise floor (its
    expected ratio is sqrt(1 + n/m) for statistics accumulated on m samples), so twice the floor
    at 3 standard errors rarely fires there; bench/results/false_alarms.md has the measured
    rates (bench/false_alarms.py).""",
    why="""Eval mode normalises with the stored statistics; when they do not describe the data,
    every prediction is made with mis-normalised activations, and the outputs differ from what
    the same model gives with statistics of this data. A model left in train mode (BN201's
    subject) sees these data statistics plus the noise of its batches.""",
    example="""Top-1 agreement 81% between stored and DATA's statistics (noise floor 99.6%):
    recalibrating on this data would take accuracy from 68.0% to 91.2%.""",
    fix="""If DATA is what the model will see, recalibrate (`bncheck recalibrate MODEL DATA
    --out OUT`) and validate accuracy; if it should not be, find what changed in the input (BN103,
    the first drifting layer). Make sure inference runs in eval mode.""",
    thresholds={
        "warning_disagreement": 0.02, "error_disagreement": 0.1, "warning_rel_err": 0.1, "error_rel_err": 0.5,
        "noise_multiple": 2.0, "significance": 3.0,
    },  # fmt: skip
    threshold_docs={
        "warning_disagreement": "1 - top-1 agreement for a warning",
        "error_disagreement": "1 - top-1 agreement for an error",
        "warning_rel_err": "relative output error for a warning (outputs without classes)",
        "error_rel_err": "relative output error for an error (outputs without classes)",
        "noise_multiple": "how many times the noise floor the effect must reach",
        "significance": "standard errors by which the effect must exceed noise_multiple x floor",
    },
    references=(papers.IOFFE_SZEGEDY_2015, papers.ADABN_2016, papers.RETHINKING_BATCH_2021),
)
def check_train_eval(r, ctx: RuleContext):
    mm = ctx.drift.train_eval if ctx.drift is not None else None
    if mm is None or mm.diverged:  # passes that diverged give no figures to judge (a note says so)
        return
    sev, what = _train_eval_effect(mm, lambda name: ctx.threshold(r.code, name))
    if not sev or not mm.significance >= ctx.threshold(r.code, "significance"):
        return
    message = f"{what} on {mm.samples} samples"
    before, after = mm.accuracy_stored, mm.accuracy_population
    if before is not None and after is not None:
        message += f"; recalibrating on this data would take accuracy from {before:.1%} to {after:.1%}"
        stored_fit = after <= before
    else:
        sure_before, sure_after = mm.confidence_stored, mm.confidence_population
        stored_fit = sure_before is not None and sure_after is not None and sure_after < sure_before
        if stored_fit:
            message += (
                f"; the outputs are more confident with the stored statistics ({sure_before:.1%} against {sure_after:.1%}): "
                "DATA may be narrower than what the model was trained on, and recalibrating on it is not advised"
            )
    if stored_fit:  # the stored statistics suit DATA at least as well as its own: not an error
        sev = Severity.WARNING
    if mm.refinement_converged is False:  # DATA's statistics did not settle: approximate figures
        sev, movement = Severity.WARNING, (mm.refinement_movement if mm.refinement_movement is not None else math.nan)
        message += f"; DATA's statistics did not settle in {mm.refinement_passes} pass(es) (movement {movement:.3g}): the figures are approximate"
    top = ", ".join(mm.top_layers[:3])
    yield r.finding(
        None,
        message + (f"; most drifted: {top}" if top else ""),
        sev,
        **{k: v for k, v in mm.to_dict().items() if k != "per_layer"},
    )

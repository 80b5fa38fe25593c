"""Static rules BN001-BN011: checks of the stored parameters, no data needed."""

from __future__ import annotations

import math

import numpy as np

from bncheck.rules.context import RuleContext
from bncheck.rules.registry import rule


def _never_materialised(layer) -> bool:
    return any("lazy layer never materialised" in n for n in layer.notes)


def _channels(mask: np.ndarray, limit: int = 10) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)[:limit]]


@rule(
    code="BN001",
    name="non-finite-parameters",
    severity="error",
    phase="audit",
    summary="NaN or Inf in running_mean, running_var, weight or bias.",
    what="""Checks every stored BN tensor (running mean and variance, affine weight and bias) for
    NaN and infinite values.""",
    why="""A single NaN in a running statistic turns every output of that channel into NaN at
    inference, and folding copies it into the conv weights. It usually comes from a loss
    explosion or an fp16 overflow during the last training steps.""",
    example="""bn2.running_var[7] = nan  ->  every prediction of the model is NaN.""",
    fix="""Restore an earlier checkpoint, or re-estimate the statistics on clean data with
    `bncheck recalibrate MODEL DATA --out OUT`; find the cause (learning rate, fp16 loss scaling).""",
)
def check_non_finite(r, ctx: RuleContext):
    for layer in ctx.layers:
        bad = {}
        for field in ("running_mean", "running_var", "weight", "bias"):
            values = getattr(layer, field)
            if values is None:
                continue
            mask = ~np.isfinite(values)
            if mask.any():
                bad[field] = {"count": int(mask.sum()), "channels": _channels(mask)}
        if bad:
            fields = ", ".join(f"{k} ({v['count']} ch)" for k, v in bad.items())
            yield r.finding(layer.name, f"non-finite values in {fields}", tensors=bad)


@rule(
    code="BN002",
    name="negative-variance",
    severity="error",
    phase="audit",
    summary="Negative running_var, or running_var + eps <= 0.",
    what="""Checks that every running variance is >= 0 and that running_var + eps is positive,
    so that the inference normalisation 1/sqrt(var + eps) is defined.""",
    why="""A variance cannot be negative: a negative value means the file was edited, damaged,
    or produced by a faulty converter. sqrt of a negative number is NaN at inference.""",
    example="""bn1.running_var[3] = -0.2 with eps = 1e-5  ->  NaN outputs for channel 3.""",
    fix="""Re-export the model from the original checkpoint, or re-estimate the statistics with
    `bncheck recalibrate`.""",
)
def check_negative_variance(r, ctx: RuleContext):
    for layer in ctx.layers:
        if layer.running_var is None:
            continue
        eps = layer.eps or 0.0
        with np.errstate(invalid="ignore"):
            neg = layer.running_var < 0
            nonpos = (layer.running_var + eps) <= 0
        if neg.any() or nonpos.any():
            yield r.finding(
                layer.name,
                f"{int(neg.sum())} channel(s) with negative running_var"
                + (f", {int(nonpos.sum())} with var + eps <= 0" if nonpos.any() else ""),
                channels=_channels(neg | nonpos),
                min_var=float(np.nanmin(layer.running_var)),
                eps=eps,
            )


@rule(
    code="BN003",
    name="uncalibrated-statistics",
    severity="error",
    phase="audit",
    summary="Running statistics never updated: every channel still at its initial value.",
    what="""Flags a layer whose running_mean is exactly 0 and running_var exactly 1 in every
    channel: the values PyTorch initialises them to. A zero num_batches_tracked alone is not
    enough, because models converted from other frameworks carry real statistics with a zero
    counter; a lazy layer that was never run is flagged too.""",
    why="""Such a layer normalises with mean 0 / variance 1 at inference instead of the statistics
    of the data: the network sees activations at the wrong scale and accuracy collapses. It
    happens when weights are trained with BN frozen or in eval mode, when statistics were reset,
    or when a model is assembled from parts.""",
    example="""bn1.running_mean = [0, 0, ...], bn1.running_var = [1, 1, ...] after training.""",
    fix="""Estimate the statistics on representative data: `bncheck recalibrate MODEL DATA --out OUT`
    (the same as torch.optim.swa_utils.update_bn with --method cumulative).""",
)
def check_uncalibrated(r, ctx: RuleContext):
    for layer in ctx.layers:
        if _never_materialised(layer):
            yield r.finding(layer.name, "lazy BN layer was never run: it has no statistics at all")
            continue
        if not layer.has_running_stats or layer.num_features == 0:
            continue
        if np.all(layer.running_mean == 0.0) and np.all(layer.running_var == 1.0):
            yield r.finding(
                layer.name,
                "running statistics were never updated (mean exactly 0, var exactly 1 in every channel)",
                num_batches_tracked=layer.num_batches_tracked,
            )


@rule(
    code="BN004",
    name="no-running-statistics",
    severity="error",
    phase="audit",
    summary="No running statistics: inference normalises with the statistics of each batch.",
    what="""Flags BN layers that will normalise with batch statistics at inference:
    track_running_stats=False in PyTorch, training_mode=1 on an ONNX BatchNormalization node
    (or is_test=0 before opset 7), or a layer whose running statistics are missing.""",
    why="""The output for one sample then depends on the other samples in the batch, differs
    between batch size 1 and 32, and is undefined for a single sample of a BatchNorm1d on
    (N, C) input. Evaluation numbers measured in large batches do not hold in production.""",
    example="""nn.BatchNorm2d(64, track_running_stats=False) exported to production.""",
    fix="""Re-create the layer with track_running_stats=True and estimate statistics with
    `bncheck recalibrate`; for ONNX, export in eval mode (training=TrainingMode.EVAL).""",
)
def check_no_running_stats(r, ctx: RuleContext):
    for layer in ctx.layers:
        if layer.uses_running_stats or _never_materialised(layer):
            continue  # a lazy layer never run has no statistics yet: BN003's business
        if layer.training and layer.has_running_stats and layer.momentum_convention == "pytorch":
            continue  # a module in train mode with stats: BN005's business
        if layer.kind == "BatchNormalization":
            reason = "ONNX node runs in training mode (training_mode=1)" if layer.training else "statistics are not constants"
        elif not layer.has_running_stats:
            reason = "track_running_stats=False (no running statistics)"
        else:
            reason = "the layer normalises with batch statistics"
        yield r.finding(layer.name, f"no running statistics at inference: {reason}")


@rule(
    code="BN005",
    name="saved-in-training-mode",
    severity="warning",
    phase="audit",
    summary="Layer saved in training mode.",
    what="""Flags BN modules whose `training` flag is True in a pickled module, TorchScript
    archive or torch.export program. (State dicts and ONNX files record no such flag.)""",
    why="""Whoever runs the file as-is normalises with batch statistics and keeps updating the
    running statistics with production data: outputs depend on batch composition and drift
    over time. TorchScript freezes the mode at save time.""",
    example="""torch.jit.save(torch.jit.script(model), "m.ts") without model.eval() first.""",
    fix="""Call model.eval() before saving / scripting / exporting, and save again.""",
)
def check_training_mode(r, ctx: RuleContext):
    for layer in ctx.layers:
        # a layer with no running statistics normalises with its batch's in any mode: BN004's
        # business (torch.export writes track_running_stats=False as a training-mode batch norm,
        # and a program exported after model.eval() read "saved in training mode")
        if layer.training and layer.has_running_stats and layer.momentum_convention == "pytorch":
            yield r.finding(layer.name, "layer was saved in training mode (model.eval() not called)")


@rule(
    code="BN006",
    name="few-updates",
    severity="warning",
    phase="audit",
    summary="Too few updates for the running average to forget its initial value.",
    what="""With momentum m, after n = num_batches_tracked updates the initial statistics
    (mean 0, var 1) still weigh (1 - m)^n in the running average. Flags layers where that
    weight is above the threshold (n > 0; a zero counter is BN003's business, since converted
    models carry real statistics with a zero counter).""",
    why="""The running statistics are still a blend of the initial values and real data, so
    they underestimate the mean and pull the variance towards 1: typical of fine-tuning for a
    few steps or of statistics re-estimated on a handful of batches.""",
    example="""momentum 0.1, num_batches_tracked 10: the initial values still weigh 0.9^10 = 35%.""",
    fix="""Re-estimate the statistics on enough data (`bncheck recalibrate`, which uses the exact
    population average) or train longer.""",
    thresholds={"max_initial_weight": 0.01},
    threshold_docs={"max_initial_weight": "largest acceptable weight (1-m)^n of the initial values"},
)
def check_few_updates(r, ctx: RuleContext):
    limit = ctx.threshold(r.code, "max_initial_weight")
    for layer in ctx.layers:
        n, m = layer.num_batches_tracked, layer.momentum
        if not n or n <= 0 or m is None or layer.momentum_convention != "pytorch" or not 0 < m < 1:
            continue
        weight = (1.0 - m) ** n
        if weight > limit:
            needed = math.ceil(math.log(limit) / math.log(1.0 - m))
            yield r.finding(
                layer.name,
                f"only {n} updates at momentum {m:g}: initial statistics still weigh {weight:.1%} "
                f"({needed} updates needed)",
                num_batches_tracked=n,
                momentum=m,
                initial_weight=weight,
                updates_needed=needed,
            )


@rule(
    code="BN007",
    name="dead-channels",
    severity="warning",
    phase="audit",
    summary="Dead channels: |gamma| ~ 0 or running_var ~ 0.",
    what="""Counts channels whose affine weight |gamma| is at most `gamma` or whose running
    variance is at most `var`.""",
    why="""A channel with gamma ~ 0 outputs a constant (its bias); a channel with variance ~ 0
    received a constant input during training (e.g. a dead ReLU upstream) and its
    normalisation divides by sqrt(eps), amplifying any change of that input. Both waste
    capacity and the second is fragile under drift.""",
    example="""bn3: 12 of 64 channels with running_var < 1e-8.""",
    fix="""Prune the channels, or check the layer upstream (learning rate, initialisation, dead
    ReLUs); weight decay on gamma drives it to zero.""",
    thresholds={"gamma": 1e-6, "var": 1e-8},
    threshold_docs={"gamma": "|gamma| at or below this is dead", "var": "running_var at or below this is dead"},
)
def check_dead_channels(r, ctx: RuleContext):
    g_lim, v_lim = ctx.threshold(r.code, "gamma"), ctx.threshold(r.code, "var")
    for layer in ctx.layers:
        dead_gamma = np.zeros(layer.num_features, dtype=bool)
        dead_var = np.zeros(layer.num_features, dtype=bool)
        with np.errstate(invalid="ignore"):
            if layer.weight is not None and layer.weight.size == layer.num_features:
                dead_gamma = np.abs(layer.weight) <= g_lim
            if layer.running_var is not None and layer.running_var.size == layer.num_features:
                dead_var = (layer.running_var <= v_lim) & (layer.running_var >= 0)
        dead = dead_gamma | dead_var
        if dead.any():
            yield r.finding(
                layer.name,
                f"{int(dead.sum())} of {layer.num_features} channels dead "
                f"({int(dead_gamma.sum())} with |gamma|~0, {int(dead_var.sum())} with var~0)",
                channels=_channels(dead),
                dead_gamma=int(dead_gamma.sum()),
                dead_var=int(dead_var.sum()),
            )


@rule(
    code="BN008",
    name="extreme-scale",
    severity="warning",
    phase="audit",
    summary="Extreme effective scale |gamma| / sqrt(var + eps): folding, fp16 and int8 risk.",
    what="""Computes the per-channel factor |gamma| / sqrt(running_var + eps) that inference (and
    folding) multiplies activations by, and flags channels above `max_scale`.""",
    why="""Folding multiplies the conv weights by this factor: a factor of 1e3 pushes folded
    weights out of fp16 range and destroys int8 quantisation resolution for the whole
    output channel; it also means tiny input changes are amplified a thousandfold.""",
    example="""gamma = 2.0, running_var = 1e-7, eps = 1e-5 -> scale 629; var = 0, eps = 1e-8 -> 2e4.""",
    fix="""Check the channel for a dead input (BN007), raise eps, or clamp; recalibrate if the
    variance is wrong.""",
    thresholds={"max_scale": 1e3},
    threshold_docs={"max_scale": "largest acceptable |gamma|/sqrt(var+eps)"},
)
def check_extreme_scale(r, ctx: RuleContext):
    limit = ctx.threshold(r.code, "max_scale")
    for layer in ctx.layers:
        scale = layer.effective_scale()
        if scale is None:
            continue
        with np.errstate(invalid="ignore"):
            big = np.isfinite(scale) & (scale > limit)
        if big.any():
            worst = int(np.nanargmax(np.where(np.isfinite(scale), scale, -np.inf)))
            yield r.finding(
                layer.name,
                f"{int(big.sum())} channel(s) with effective scale above {limit:g} (max {scale[worst]:.3g} at channel {worst})",
                channels=_channels(big),
                max_scale=float(scale[worst]),
                channel=worst,
            )


@rule(
    code="BN009",
    name="unusual-hyperparameters",
    severity="info",
    phase="audit",
    summary="Unusual or inconsistent eps / momentum.",
    what="""Reports PyTorch BN layers whose eps differs from PyTorch's default 1e-5 (1e-3 is the
    Keras/TF default and shows up in ported models), eps below `min_eps`, momentum None
    (cumulative average) or outside (0, 1], and models whose layers use different eps values.""",
    why="""eps is part of the function the network computes: a model trained with eps 1e-3 and
    rebuilt with 1e-5 (or the reverse) gives different outputs, most of all in channels with
    small variance. momentum None keeps a cumulative average, which is right for a
    re-estimation pass but wrong if training is resumed.""",
    example="""BatchNorm2d(64, eps=1e-3) in a PyTorch port of a Keras ResNet.""",
    fix="""Make sure the value matches the framework the weights were trained in; set it
    explicitly when porting weights.""",
    thresholds={"min_eps": 1e-8},
    threshold_docs={"min_eps": "eps below this is reported"},
)
def check_unusual_hyperparameters(r, ctx: RuleContext):
    min_eps = ctx.threshold(r.code, "min_eps")
    eps_values = set()
    for layer in ctx.layers:
        if layer.eps is None:
            continue
        if "eps" not in layer.assumed:
            eps_values.add(float(layer.eps))
        if layer.eps < min_eps:
            yield r.finding(layer.name, f"eps {layer.eps:g} is tiny: var + eps may underflow in low precision", eps=layer.eps)
        elif layer.momentum_convention == "pytorch" and "eps" not in layer.assumed and not math.isclose(layer.eps, 1e-5, rel_tol=1e-6):
            yield r.finding(
                layer.name,
                f"eps {layer.eps:g} differs from PyTorch's default 1e-5 (1e-3 is the Keras/TF default): check it matches training",
                eps=layer.eps,
            )
        if layer.momentum_convention == "pytorch" and "momentum" not in layer.assumed:
            if layer.momentum is None and layer.kind != "FrozenBatchNorm":
                yield r.finding(layer.name, "momentum None: running statistics are a cumulative average")
            elif layer.momentum is not None and not 0 < layer.momentum <= 1:
                yield r.finding(layer.name, f"momentum {layer.momentum:g} is outside (0, 1]", momentum=layer.momentum)
    if len(eps_values) > 1:
        values = sorted(eps_values)
        yield r.finding(None, f"layers use {len(values)} different eps values: {', '.join(f'{v:g}' for v in values)}", eps_values=values)


@rule(
    code="BN010",
    name="small-training-batch",
    severity="warning",
    phase="audit",
    summary="Training batch size (--train-batch-size) below 16: unreliable batch statistics.",
    what="""Uses the batch size the model is (or was) trained with, given by --train-batch-size
    or the config, and flags it when it is below `min_batch_size` per device.""",
    why="""BN normalises each training batch with that batch's own mean and variance. With few
    samples these estimates are noisy, the network learns to rely on noisy statistics, and
    the running averages used at inference do not match what training saw: accuracy drops
    sharply below about 16 samples per device.""",
    example="""Detection or segmentation training with 2 images per GPU and plain BatchNorm2d.""",
    fix="""Use GroupNorm or LayerNorm, SyncBatchNorm across devices, or freeze BN (FrozenBatchNorm2d)
    and fine-tune with fixed statistics; `bncheck drift` (BN201) measures the actual scatter.""",
    thresholds={"min_batch_size": 16},
    threshold_docs={"min_batch_size": "smallest per-device batch with reliable statistics"},
)
def check_small_training_batch(r, ctx: RuleContext):
    if ctx.train_batch_size is None or not ctx.layers:
        return
    limit = ctx.threshold(r.code, "min_batch_size")
    if ctx.train_batch_size < limit:
        yield r.finding(
            None,
            f"training batch size {ctx.train_batch_size} is below {limit:g}: batch statistics are noisy; "
            "consider GroupNorm/LayerNorm, SyncBatchNorm or frozen BN",
            train_batch_size=ctx.train_batch_size,
        )


@rule(
    code="BN011",
    name="not-foldable",
    severity="info",
    phase="audit",
    summary="BN that cannot be folded (not fed by a conv/linear it alone consumes).",
    what="""Reports BN layers that `bncheck fold` cannot merge into the preceding op: the input
    comes from an activation, an addition or the model input, the producer's output is used
    elsewhere (a residual branch), its weight is shared, or the module is called twice.""",
    why="""Such a layer stays a separate normalisation at inference: it costs memory traffic,
    and it is a separate op to quantise. Often harmless (pre-activation ResNets), sometimes a
    sign that the intended conv->BN pattern was broken.""",
    example="""x = relu(x); x = bn(x)  (BN after the activation).""",
    fix="""Nothing is required; `bncheck fold --affine` turns it into a per-channel multiply-add.
    Reorder to conv -> BN -> activation if the architecture allows.""",
)
def check_not_foldable(r, ctx: RuleContext):
    for layer in ctx.layers:
        if layer.foldable is False:
            yield r.finding(layer.name, f"cannot be folded: {layer.fold_reason}", producer=layer.producer, producer_kind=layer.producer_kind)

"""Recalibration rules: what ``bncheck recalibrate`` checks about its own result."""

from __future__ import annotations

from bncheck.rules.context import RuleContext
from bncheck.rules.registry import rule


@rule(
    code="BN501",
    name="recalibration-made-worse",
    severity="error",
    phase="recalibrate",
    summary="The recalibrated model does worse than the stored one on the held-out split.",
    what="""Before writing, `bncheck recalibrate` runs the stored and the recalibrated model on a
    held-out split of DATA (--holdout, samples the estimate did not read). With labels it compares
    their top-1 errors; without labels, their disagreement with the predictions the model makes with
    batch statistics on the same batches (outputs without a class axis: the squared distance to
    those outputs). This rule fires when the recalibrated model is worse by more than 1.96 standard
    errors of the paired per-sample difference (McNemar's test in its normal approximation).""",
    why="""Re-estimating BN statistics is not always an improvement: few samples, class-imbalanced
    or non-i.i.d. DATA, or data from another domain than production give statistics that hurt
    (DELTA, ICLR 2023; RDumb, 2023). Writing such a model replaces a good one silently.""",
    example="""accuracy on 256 held-out samples 91.0% -> 84.4% (difference +6.6% +- 1.6%): OUT not written.""",
    fix="""Use more, and more representative, DATA; blend with the stored statistics (--prior N,
    Schneider et al. 2020); recalibrate only some layers (--layers). --force-write writes OUT anyway.""",
    references=("https://arxiv.org/abs/2006.16971",),
)
def check_recalibration_guard(r, ctx: RuleContext):
    evidence = ctx.recalibration
    if evidence is None or not evidence.guard.get("worse"):
        return
    g = evidence.guard
    if "accuracy_before" in g:
        what = f"accuracy on {g['samples']} held-out samples {g['accuracy_before']:.1%} -> {g['accuracy_after']:.1%}"
    else:
        what = f"{g['basis']} on {g['samples']} held-out samples: loss {g['loss_before']:.4g} -> {g['loss_after']:.4g}"
    done = "written anyway (--force-write)" if evidence.written else "OUT not written"
    message = f"recalibration made the model worse: {what} (difference {g['difference']:+.3g} +- {g['standard_error']:.2g}); {done}"
    yield r.finding(None, message, **{k: v for k, v in g.items() if k != "worse"}, written=evidence.written)

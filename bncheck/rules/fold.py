"""Fold rules: what ``bncheck fold`` checks about its own result."""

from __future__ import annotations

from bncheck.rules.context import RuleContext
from bncheck.rules.registry import rule


@rule(
    code="BN401",
    name="fold-verification-failed",
    severity="error",
    phase="fold",
    summary="The folded model's outputs differ from the original's beyond --atol/--rtol.",
    what="""After folding, `bncheck fold` runs the original and the folded model on the same
    inputs (--verify DATA, or random inputs of the model's input shape) and compares every
    output: max |original - folded| must stay within atol + rtol * max |original| per output.
    This rule reports an output that does not.""",
    why="""A folded model that does not compute the original function silently changes every
    prediction in production. Folding itself only re-rounds float32 weights (errors around
    1e-6 of the output scale), so a larger difference means a broken pattern (a BN whose
    producer output is also used elsewhere, a channel axis that is not the producer's output
    axis, a custom BN forward) or extreme BN scales (BN008) that float32 weights cannot hold.""",
    example="""max_abs_err 0.8, max_rel_err 0.12 with rtol 1e-4: the folded model is wrong.""",
    fix="""Look at the layers reported as folded and at BN008 (extreme scales) in
    `bncheck audit`; verify on real data (--verify DATA); loosen --atol/--rtol only for
    low-precision models (float16 defaults to 1e-2). OUT is not written unless --force.""",
)
def check_fold_verification(r, ctx: RuleContext):
    evidence = ctx.fold
    if evidence is None or evidence.verification.passed:
        return
    verification = evidence.verification.to_dict()
    if evidence.output_mismatch:
        message = f"the folded model does not match the original: {evidence.output_mismatch}"
    else:
        message = (
            f"folded model differs from the original: max abs error {verification['max_abs_err']}, "
            f"max relative error {verification['max_rel_err']} (atol {evidence.atol}, rtol {evidence.rtol})"
        )
    yield r.finding(None, message, **verification, atol=evidence.atol, rtol=evidence.rtol)

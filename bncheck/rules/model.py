"""Model rules: what every command that reads a model checks about it as a whole (audit,
drift and fold run the ``model`` phase next to their own)."""

from __future__ import annotations

from bncheck.rules.context import RuleContext
from bncheck.rules.registry import rule


@rule(
    code="BN000",
    name="no-batch-norm-layers",
    severity="warning",
    phase="model",
    summary="The model has no batch-norm layer: nothing was checked.",
    what="""Reports a model in which bncheck finds no batch-norm layer (no BatchNorm module, no
    F.batch_norm call, no ONNX BatchNormalization node), so that audit, drift and fold had
    nothing to check. The CLI also says so on stderr, whatever the report format.""",
    why="""A run with nothing to check passes, and a green gate on such a model is silent: the
    usual cause is an exporter that already folded BN into the convolutions
    (torch.onnx.export in eval mode with constant folding), so the file in CI is not the one
    whose statistics need checking. A warning by default; `--fail-on warning` makes it fail.""",
    example="""torch.onnx.export(model.eval(), x, "m.onnx")  ->  `bncheck audit m.onnx` finds
    0 BN layers (BN folded into the Conv weights).""",
    fix="""Check the PyTorch checkpoint (or an export with do_constant_folding=False and
    training=torch.onnx.TrainingMode.PRESERVE) instead; if the model really has no BN, drop
    bncheck for it or `--ignore BN000`.""",
)
def check_has_batch_norm(r, ctx: RuleContext):
    if not ctx.layers:
        ops = f" ({ctx.op_count} ops/modules)" if ctx.op_count is not None else ""
        yield r.finding(
            None, f"the model has no batch-norm layer{ops}: nothing was checked", op_count=ctx.op_count
        )

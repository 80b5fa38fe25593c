"""``bncheck fold``: fold BN layers into the conv/linear weights that feed them, write an
inference model, and prove numerically that it computes the same function.

Flow: load MODEL -> choose the output kind (``--to`` or OUT's extension; ``.pt``/``.pth`` =
the input's kind) and guard the paths -> refuse defective statistics (BN001, BN002, BN004)
unless ``force`` -> verification inputs (``verify`` DATA, or random inputs of the model's
input shape) -> fold with the backend (:mod:`~bncheck.backends.onnx.fold`,
:mod:`~bncheck.backends.torch.fold_module`) -> convert to the output kind -> run original and folded
on the same inputs (errors as defined in :mod:`bncheck.numerics.verify`) -> time both ->
write OUT atomically -> one :class:`~bncheck.report.report.Report`.

Decisions a user should know:

* **Nothing to fold** (no BN folded or turned affine): exit 0, OUT is still written (the model
  as it is, in OUT's kind, verified against the original like any output): a pipeline that
  deploys OUT (``bncheck fold M -o X && deploy X``) must find it; the report says so.
* **Verification failed** (error above ``atol + rtol * scale``): finding BN401 (error, exit 1)
  and OUT is not written unless ``force``.
* **State-dict output** (``.safetensors``, or ``.pt``/``.pth`` for a state-dict input): the
  state dict of the folded model with the user's module names: each folded BN's keys are
  gone, producers that had no bias gain ``<producer>.bias``, and with ``affine`` a BN's keys
  become ``<bn>.scale``/``<bn>.shift``. It loads into the original architecture after
  :func:`load_folded_state_dict` (or, by hand: replace those BN modules by ``nn.Identity``
  and give the producers a bias). Only BN layers with their own module call can be removed
  this way; BN subclasses with extra behaviour (e.g. an activation) are folded in the
  graph-carrying outputs (``.pt2``, ``.ts``, ``.onnx``) only.
* **Speedup**: original and folded timed alternately on the first verification batch in the
  same runtime: torch eager (TorchScript: the script module) for PyTorch inputs, onnxruntime
  with its default graph optimisations for ONNX (which already fuse Conv+BN, so expect ~1x:
  ONNX folds are timed only when asked, ``timing=True`` / ``--timing``).
"""

from __future__ import annotations

import functools
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.backends import output
from bncheck.backends.interface import Backend, FoldedModel, FoldOutcome, ModelSource
from bncheck.backends.load import as_source, backend_for, backend_of
from bncheck.commands.fold_inputs import InputPlan, parse_input_shape, plan_inputs
from bncheck.commands.progress import step
from bncheck.config import Settings
from bncheck.errors import BncheckError, UsageError
from bncheck.numerics.verify import ErrorAccumulator, default_tolerances, interleaved_timing
from bncheck.report.fold_figures import BeforeAfter, FoldFigures, FoldOutput, FoldTiming
from bncheck.report.report import Report
from bncheck.report.results import FoldResult, VerificationInputs
from bncheck.rules import FoldEvidence, RuleContext, Verification, run_codes, run_rules
from bncheck.rules.finding import Finding

#: Audit rules whose findings make folding refuse (it would bake the defect into weights).
REFUSING_RULES = ("BN001", "BN002", "BN004")
#: the verification record's reason when nothing was folded and nothing is written
UNCHANGED = "nothing was folded and nothing is written: the model is unchanged, so no whole-model run was needed"
__all__ = ["fold", "load_folded_state_dict", "parse_input_shape", "FoldRefused"]


class FoldRefused(BncheckError):
    """The model's BN statistics are defective; folding would bake the defect in."""


def fold(
    model: Any,
    out: str | Path | None = None,
    *,
    to: str | None = None,
    affine: bool = False,
    verify: str | Path | None = None,
    input_shape: str | list[tuple[int, ...]] | tuple[int, ...] | None = None,
    samples: int | None = None,
    batch_size: int = 32,
    atol: float | None = None,
    rtol: float | None = None,
    force: bool = False,
    timing: bool | None = None,
    seed: int = 0,
    settings: Settings | None = None,
    arch: str | None = None,
    trust_pickle: bool = False,
) -> Report:
    """Fold ``model`` (a path, nn.Module, ExportedProgram, ScriptModule, onnx.ModelProto or
    ModelSource) and write the result to ``out`` (``None``: fold and verify, write nothing).

    ``to``: onnx | export | torchscript | state-dict (default: from ``out``'s extension).
    ``affine``: BN layers that cannot be folded become a per-channel multiply-add.
    ``verify``: DATA (file or folder) to verify on; else ``samples`` random inputs shaped by
    ``input_shape`` (``"1,3,224,224"``, ``;`` between several inputs; default: the ONNX
    graph's input shapes or a torch.export program's example inputs).
    ``atol``/``rtol``: the pass criterion (defaults by output dtype, 1e-4 for float32).
    ``force``: overwrite ``out``, fold despite BN001/BN002/BN004 findings, and write ``out``
    even when nothing was folded or verification failed.
    """
    settings = settings or Settings()
    source = as_source(model, arch=arch, trust_pickle=trust_pickle)
    backend = backend_for(source)
    out = output.file_path(out) if out is not None else None
    kind = backend.output_kind(source, out, to)
    if out is not None:
        output.check_output_path(
            out, protected=backend.protected_paths(source), force=force, companions=backend.companions(source, out)
        )
    layers = source.bn_layers()
    defects = _defects(source, settings)
    if defects and not force:
        raise FoldRefused(_refusal_message(defects))

    planning = functools.partial(plan_inputs, backend, source, input_shape=input_shape, verify=verify, samples=samples,
                                 batch_size=batch_size, seed=seed, settings=settings)
    site_atol, site_rtol = _site_tolerances(backend.float_dtype(source).name, atol, rtol)
    prove = functools.partial(backend.prove_sites, source, atol=site_atol, rtol=site_rtol)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="bncheck-fold") as pool:
        plan, expected, first, proving = _planned(pool, backend, source, kind, affine, planning, prove,
                                                  any(la.foldable for la in layers))
        if plan.example is None and backend.needs_example(source, kind):
            raise UsageError(_needs_example_message(kind, plan))
        check = _Check(backend, source, kind, plan, out, force, atol, rtol, site_atol, site_rtol, expected)
        folded, proofs, checked = _fold_proved(check, affine, prove, first, proving)
    changed, plan, artifact, artifact_notes, evidence = checked
    timing_info, timing_note = _timing_if_asked(backend, source, folded, plan, timing, changed)
    notes: list[str] = [*folded.notes, *artifact_notes, *backend.fold_notes(source), *plan.notes, *timing_note]
    written = _write(backend, source, folded, artifact, kind, out, changed=changed, passed=evidence.verification.passed, force=force, notes=notes)
    ctx = RuleContext(layers=layers, thresholds=settings.threshold_table(), model_format=source.format, fold=evidence, op_count=source.op_count())
    findings: list[Finding] = list(defects) + run_rules(("model", "fold"), ctx, select=settings.select, ignore=settings.ignore)
    report = Report(command="fold", model=source.info(), layers=layers, findings=findings, fail_on=settings.fail_on)
    count = evidence.verification.samples
    report.result = FoldResult(
        verification=evidence.verification,
        figures=_fold_figures(backend, source, folded, kind, out, written, timing_info, evidence.atol, evidence.rtol, affine),
        outcomes={layer.name: _outcome(folded, layer).to_dict() for layer in layers},
        data={"samples": int(count), "batch_size": int(batch_size), **plan.data_info} if plan.data_info is not None else None,
        site_proofs=proofs,
        inputs=plan.used,
    )
    report.result.figures = replace(report.result.figures, site_proofs=report.result.proof_counts())
    # with no BN layer at all, BN000's finding says so (the note would say it a second time)
    said = not layers and any(finding.rule == "BN000" for finding in findings)
    report.notes.extend(([] if said else _outcome_notes(source, layers, changed)) + notes)
    return report


def _timing_if_asked(backend: Backend, source: ModelSource, folded: FoldedModel, plan: InputPlan, timing: bool | None, changed: bool):
    """The speed-up figures when timing is on, and the note saying why it is off by default."""
    timing, note = _timing_choice(backend, timing, changed)
    info = _timing(backend, source, folded, plan.example) if timing and changed and plan.example is not None else None
    return info, note


def _outcome_notes(source: ModelSource, layers, changed: bool) -> list[str]:
    if not layers:
        return [f"no batch-norm layers found (the model has {source.op_count()} ops/modules): nothing to fold"]
    if not changed:
        return ["no BN layer can be folded: every layer is kept (see the reasons per layer)"]
    return []


@dataclass(frozen=True)
class _Check:
    """What converting and verifying a folded model needs besides the model."""

    backend: Backend
    source: ModelSource
    kind: str
    plan: InputPlan
    out: Path | None
    force: bool
    atol: float | None
    rtol: float | None
    site_atol: float
    site_rtol: float
    #: the original's outputs on ``plan``'s batches, when they were computed beforehand
    expected: list | None = None

    def run(self, folded: FoldedModel) -> tuple[bool, InputPlan, Any, list[str], FoldEvidence]:
        """(changed, the plan verified on, the converted artifact, its notes, the evidence)."""
        backend, source, kind, plan = self.backend, self.source, self.kind, self.plan
        changed = folded.count("folded") + folded.count("affine") > 0
        converted = changed or self.out is not None  # OUT is written even where nothing folds
        if not converted and plan.batches is not None:  # nothing folded or written: a run against itself proves nothing
            plan = replace(plan, batches=None, data_info=None, used=VerificationInputs("none", None, UNCHANGED))
        if converted:
            step(f"converting to {output.OUTPUT_KINDS.get(kind, kind)}")
        artifact, notes = backend.convert(source, folded, kind, plan.example) if converted else (None, [])
        expected = self.expected if plan is self.plan else None
        evidence = _verify(backend, source, artifact, kind, plan, self.atol, self.rtol, self.site_atol, self.site_rtol, expected)
        return changed, plan, artifact, notes, evidence


def _planned(pool: ThreadPoolExecutor, backend: Backend, source: ModelSource, kind: str, affine: bool, planning,
             prove, foldable: bool):
    """(plan, the original's outputs on it or None, the first fold or None, its site proofs under
    way or None). Where the backend's checks run alongside, the rewrite needs no example input:
    the inputs are planned, and the original is run on them, while the model is rewritten, and
    the rewrite's sites are proved as soon as it exists."""
    step("reading the verification inputs")
    if not backend.checks_alongside:
        return planning(), None, None, None
    pending = pool.submit(_plan_and_reference, backend, source, planning, foldable)
    step("folding BN into the conv/linear weights")
    first = backend.fold(source, kind, affine=affine, example=None)
    proving = pool.submit(prove, first)
    plan, expected = pending.result()
    return plan, expected, first, proving


def _plan_and_reference(backend: Backend, source: ModelSource, planning, foldable: bool) -> tuple[InputPlan, list | None]:
    """The verification plan and, for random inputs of a model with a foldable layer, the
    original's outputs on them (DATA's batches run beside the folded model's as they come)."""
    plan = planning()
    if not foldable or plan.batches is None or plan.used.origin == "data":
        return plan, None
    run = backend.executable(source)
    return plan, [run(batch) for batch in plan.batches]


def _fold_proved(check: _Check, affine: bool, prove, first: FoldedModel | None = None, proving=None):
    """Fold (``first``: the fold made already, ``proving``: its site proofs under way), prove
    every folded site on its own, and fold again keeping the sites whose proof failed (and, with
    no whole-model verification to cover them, those not provable alone); convert and verify what
    is kept. Where the backend's checks may run alongside (``checks_alongside``), the first fold
    is converted and verified while the proofs run: it is the final model unless a proof fails
    (then the second fold is checked again)."""
    backend, source, kind, plan = check.backend, check.source, check.kind, check.plan
    folded = first
    if folded is None:
        step("folding BN into the conv/linear weights")
        folded = backend.fold(source, kind, affine=affine, example=plan.example)
    step(f"proving each folded site on its own ({folded.count('folded') + folded.count('affine')} sites)")
    checked = None
    if proving is not None:
        checked = check.run(folded)
        proofs = proving.result()
    else:
        proofs = prove(folded)
    keep = {name: f"its site proof failed: {p.reason}" for name, p in proofs.items() if p.passed is False}
    if plan.batches is None:
        keep.update({name: f"not proved on its own ({p.reason}) and no input to verify the whole model (pass --input-shape)"
                     for name, p in proofs.items() if p.passed is None})
    if keep:
        step(f"folding again, keeping {len(keep)} site(s) not proved")
        folded = backend.fold(source, kind, affine=affine, example=plan.example, keep=keep)
        checked = None
    return folded, proofs, checked or check.run(folded)


def _needs_example_message(kind: str, plan: InputPlan) -> str:
    return (
        f"writing {output.OUTPUT_KINDS.get(kind, kind)} needs an example input, and {plan.used.why.split(': ', 1)[0]}; "
        "pass --input-shape N,C,H,W (e.g. 1,3,224,224) or --verify DATA, or write a state dict (OUT .safetensors), "
        "which needs none."
    )


def _site_tolerances(dtype_name: str, atol, rtol) -> tuple[float, float]:
    """The dtype's default tolerances, loosened (never tightened) by ``atol``/``rtol``: a site
    proof keeps a layer unfolded, which a tighter whole-model criterion should not do."""
    d_atol, d_rtol = default_tolerances(dtype_name)
    return max(d_atol, float(atol or 0.0)), max(d_rtol, float(rtol or 0.0))


def _tolerances(dtype_name: str, atol, rtol) -> tuple[float, float]:
    d_atol, d_rtol = default_tolerances(dtype_name)
    return (d_atol if atol is None else float(atol)), (d_rtol if rtol is None else float(rtol))


def _outcome(folded: FoldedModel, layer) -> FoldOutcome:
    return folded.outcomes.get(layer.name) or FoldOutcome("kept", None, layer.fold_reason or "not found in the model graph")


def _verify(backend: Backend, source: ModelSource, artifact, kind: str, plan: InputPlan, atol, rtol, site_atol, site_rtol,
            expected: list | None = None) -> FoldEvidence:
    """Run the original (``expected``: its outputs, computed already) and what will be written
    (the converted artifact; an unchanged model is compared with itself only when it is
    written anyway, with ``--force``) on every batch; with no batches, the site proofs are the
    evidence (sites that failed were kept)."""
    batches = plan.batches
    total = sum(_batch_len(batch) for batch in batches) if isinstance(batches, (list, tuple)) else None
    advance = step("verifying the whole folded model against the original", total=total)
    if batches is None:
        # the contract's inputs are "data"|"random": the site proofs ran on random inputs built
        # from each op's own weights; inputs_used.origin "none" says no whole model ran
        verification = Verification(inputs="random", samples=0, max_abs_err=None, max_rel_err=None, passed=True)
        return FoldEvidence(verification=verification, atol=site_atol, rtol=site_rtol)
    reference = backend.executable(source)
    candidate = backend.executable(artifact, kind) if artifact is not None else reference
    acc = ErrorAccumulator()
    count = 0
    out_dtype = None
    for k, batch in enumerate(batches):
        want = expected[k] if expected is not None else reference(batch)
        out_dtype = out_dtype or _output_dtype(want)
        acc.add(want, candidate(batch))
        count += _batch_len(batch)
        if advance is not None:
            advance(_batch_len(batch))
    atol, rtol = _tolerances(out_dtype, atol, rtol)
    verification = Verification(
        inputs="data" if plan.used.origin == "data" else "random",
        samples=int(count),
        max_abs_err=_finite_or_none(acc.max_abs()),
        max_rel_err=_finite_or_none(acc.max_rel()),
        passed=bool(acc.passed(atol, rtol)),
    )
    return FoldEvidence(verification=verification, atol=atol, rtol=rtol, output_mismatch=acc.mismatch)


def _write(backend: Backend, source, folded, artifact, kind, out: Path | None, *, changed: bool, passed: bool, force: bool, notes: list[str]) -> list[Path]:
    """Write OUT unless verification failed (``force`` writes anyway; with nothing to fold,
    OUT is the model as it is); the files written, and why not in ``notes``."""
    step("writing OUT")
    if out is None:
        if not changed:
            notes.append("nothing to fold")
        return []
    if not changed:
        notes.append(f"nothing to fold: {out} is the model as it is (written, so that what reads OUT finds it)")
    if not passed and not force:
        notes.append(f"verification failed: {out} was not written (--force writes it anyway)")
        return []
    return backend.write_folded(source, folded, artifact, kind, out)


def _defects(source: ModelSource, settings: Settings) -> list[Finding]:
    """BN001/BN002/BN004 findings (those the user has not ignored)."""
    ctx = RuleContext(layers=source.bn_layers(), thresholds=settings.threshold_table(), model_format=source.format)
    return run_codes("audit", REFUSING_RULES, ctx, ignore=settings.ignore)


def _refusal_message(defects: list[Finding]) -> str:
    first = defects[0]
    more = f" (and {len(defects) - 1} more)" if len(defects) > 1 else ""
    why, fix = {
        "BN001": ("folding would copy NaN/Inf into the weights", "re-estimate the statistics (bncheck recalibrate MODEL DATA --out OUT)"),
        "BN002": ("folding would bake an invalid variance into the weights", "re-estimate the statistics (bncheck recalibrate MODEL DATA --out OUT)"),
        "BN004": (
            "the layer normalises with batch statistics, which no folded weight can reproduce",
            "export in eval mode / with track_running_stats=True and estimate statistics (bncheck recalibrate)",
        ),
    }[first.rule]
    return (
        f"refusing to fold: {first.rule} on layer {first.layer}: {first.message}{more}; {why}. "
        f"Fix: {fix}, or pass --force to fold the other layers and keep these."
    )


def _batch_len(batch: tuple) -> int:
    first = batch[0]
    return int(first.shape[0]) if getattr(first, "ndim", 0) else 1


def _timing_choice(backend: Backend, timing: bool | None, changed: bool) -> tuple[bool, list[str]]:
    """Whether to time the fold (``None``: the backend's default) and the note saying why not."""
    if timing is not None:
        return timing, []
    note = [backend.fold_timing_note] if changed and backend.fold_timing_note and not backend.fold_timing_default else []
    return backend.fold_timing_default, note


def _timing(backend: Backend, source: ModelSource, folded: FoldedModel, batch: tuple) -> FoldTiming:
    step("timing the original and the folded model")
    a, b, runtime = backend.timing_pair(source, folded, batch)
    t = interleaved_timing(a, b)
    return FoldTiming(
        runtime=runtime,
        original_ms=round(t["first_ms"], 4),
        folded_ms=round(t["second_ms"], 4),
        speedup=round(t["ratio"], 4),
        rounds=t["rounds"],
        batch=_batch_len(batch),
    )


def _fold_figures(backend, source, folded, kind, out, written, timing_info, atol, rtol, affine):
    before_params, before_nodes = backend.counts(source)
    # Same representation before and after (the folded model before any format conversion).
    after_params, after_nodes = backend.counts(folded.model)
    size_before = backend.file_size(source)
    size_after = sum(p.stat().st_size for p in written) if written else None
    return FoldFigures(
        output=FoldOutput(str(out) if out is not None else None, kind, bool(written), tuple(str(p) for p in written)),
        layers_folded=folded.count("folded"),
        layers_kept=folded.count("kept"),
        layers_affine=folded.count("affine"),
        affine=bool(affine),
        mode=folded.extras.get("mode"),
        parameters=BeforeAfter(before_params, after_params),
        nodes=BeforeAfter(before_nodes, after_nodes),
        file_size=BeforeAfter(size_before, size_after),
        timing=timing_info,
        atol=atol,
        rtol=rtol,
    )


def _output_dtype(outputs: list[np.ndarray]) -> str:
    for o in outputs:
        if np.issubdtype(np.asarray(o).dtype, np.floating):
            return np.asarray(o).dtype.name
    return "float32"


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def load_folded_state_dict(model, path: str | Path):
    """Load a state dict written by ``bncheck fold ... -o X.safetensors`` into ``model`` (the
    original architecture, modified in place and returned); see
    :meth:`bncheck.backends.interface.Backend.load_folded_state`."""
    return backend_of(model).load_folded_state(model, Path(path))

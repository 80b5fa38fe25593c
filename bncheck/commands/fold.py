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

* **Nothing to fold** (no BN folded or turned affine): exit 0, OUT is *not* written (it would
  be the input model again) unless ``force``; the report says so.
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
  with its default graph optimisations for ONNX (which already fuse Conv+BN, so expect ~1x).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.backends import output
from bncheck.backends.interface import Backend, FoldedModel, FoldOutcome, InputSpec, ModelSource
from bncheck.backends.load import as_source, backend_for
from bncheck.commands.progress import step
from bncheck.config import Settings
from bncheck.data import build_options, open_data
from bncheck.errors import BncheckError, DataError, UsageError
from bncheck.numerics.verify import ErrorAccumulator, default_tolerances, interleaved_timing
from bncheck.report.report import Report
from bncheck.report.results import FoldResult
from bncheck.rules import FoldEvidence, RuleContext, Verification, run_codes, run_rules
from bncheck.rules.finding import Finding

#: Audit rules whose findings make folding refuse (it would bake the defect into weights).
REFUSING_RULES = ("BN001", "BN002", "BN004")
#: Random verification samples when neither ``samples`` nor DATA says otherwise.
DEFAULT_RANDOM_SAMPLES = 8
#: Samples taken from DATA by default.
DEFAULT_DATA_SAMPLES = 256


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
    timing: bool = True,
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
    out = Path(out) if out is not None else None
    kind = backend.output_kind(source, out, to)
    if out is not None:
        output.check_output_path(
            out, protected=backend.protected_paths(source), force=force, companions=backend.companions(source, out)
        )
    layers = source.bn_layers()
    defects = _defects(source, settings)
    if defects and not force:
        raise FoldRefused(_refusal_message(defects))

    specs = _input_specs(backend, source, input_shape)
    sized = ""
    if verify is None and specs is not None:
        specs, sized = backend.concrete_inputs(source, specs)
    batches, inputs_from, data_info = _verification_batches(backend, source, specs, verify, samples, batch_size, seed, settings)
    step("folding")
    folded = backend.fold(source, kind, affine=affine, example=batches[0])
    changed = folded.count("folded") + folded.count("affine") > 0
    converted = changed or (out is not None and force)
    artifact, artifact_notes = backend.convert(source, folded, kind, batches[0]) if converted else (None, [])
    evidence = _verify(backend, source, artifact, kind, batches, inputs_from, atol, rtol)
    timing_info = _timing(backend, source, folded, batches[0]) if timing and changed else None

    notes: list[str] = [*([sized] if sized else []), *folded.notes, *artifact_notes, *backend.fold_notes(source)]
    written = _write(backend, source, folded, artifact, kind, out, changed=changed, passed=evidence.verification.passed, force=force, notes=notes)
    ctx = RuleContext(layers=layers, thresholds=settings.threshold_table(), model_format=source.format, fold=evidence)
    findings: list[Finding] = list(defects) + run_rules("fold", ctx, select=settings.select, ignore=settings.ignore)
    report = Report(command="fold", model=source.info(), layers=layers, findings=findings, fail_on=settings.fail_on)
    count = evidence.verification.samples
    report.result = FoldResult(
        verification=evidence.verification,
        figures=_fold_figures(backend, source, folded, kind, out, written, timing_info, evidence.atol, evidence.rtol, affine),
        outcomes={layer.name: _outcome(folded, layer).to_dict() for layer in layers},
        data={"samples": int(count), "batch_size": int(batch_size), **data_info} if data_info is not None else None,
    )
    if not layers:
        report.notes.append(f"no batch-norm layers found (the model has {source.op_count()} ops/modules): nothing to fold")
    elif not changed:
        report.notes.append("no BN layer can be folded: every layer is kept (see the reasons per layer)")
    report.notes.extend(notes)
    return report


def _outcome(folded: FoldedModel, layer) -> FoldOutcome:
    return folded.outcomes.get(layer.name) or FoldOutcome("kept", None, layer.fold_reason or "not found in the model graph")


def _verify(backend: Backend, source: ModelSource, artifact, kind: str, batches, inputs_from: str, atol, rtol) -> FoldEvidence:
    """Run the original and what will be written (the converted artifact; an unchanged model
    is compared with itself only when nothing is converted or written) on every batch."""
    step(f"verifying on {len(batches)} batch(es)")
    reference = backend.executable(source)
    candidate = backend.executable(artifact, kind) if artifact is not None else reference
    acc = ErrorAccumulator()
    count = 0
    out_dtype = None
    for batch in batches:
        expected = reference(batch)
        out_dtype = out_dtype or _output_dtype(expected)
        acc.add(expected, candidate(batch))
        count += _batch_len(batch)
    d_atol, d_rtol = default_tolerances(out_dtype)
    atol = d_atol if atol is None else float(atol)
    rtol = d_rtol if rtol is None else float(rtol)
    verification = Verification(
        inputs=inputs_from,
        samples=int(count),
        max_abs_err=_finite_or_none(acc.max_abs()),
        max_rel_err=_finite_or_none(acc.max_rel()),
        passed=bool(acc.passed(atol, rtol)),
    )
    return FoldEvidence(verification=verification, atol=atol, rtol=rtol, output_mismatch=acc.mismatch)


def _write(backend: Backend, source, folded, artifact, kind, out: Path | None, *, changed: bool, passed: bool, force: bool, notes: list[str]) -> list[Path]:
    """Write OUT unless there is nothing to fold or verification failed (``force`` writes
    anyway); the files written, and why not in ``notes``."""
    step("writing OUT")
    if out is None:
        if not changed:
            notes.append("nothing to fold")
        return []
    if not changed and not force:
        notes.append(f"nothing to fold: {out} was not written (it would be the input model again; --force writes it anyway)")
        return []
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
        "BN001": ("folding would copy NaN/Inf into the weights", "re-estimate the statistics (bncheck recalibrate MODEL DATA -o OUT)"),
        "BN002": ("folding would bake an invalid variance into the weights", "re-estimate the statistics (bncheck recalibrate MODEL DATA -o OUT)"),
        "BN004": (
            "the layer normalises with batch statistics, which no folded weight can reproduce",
            "export in eval mode / with track_running_stats=True and estimate statistics (bncheck recalibrate)",
        ),
    }[first.rule]
    return (
        f"refusing to fold: {first.rule} on layer {first.layer}: {first.message}{more}; {why}. "
        f"Fix: {fix}, or pass --force to fold the other layers and keep these."
    )


def parse_input_shape(text: str | list | tuple | None) -> list[tuple[int, ...]] | None:
    """``"1,3,224,224"`` -> [(1, 3, 224, 224)]; ``;`` separates several inputs."""
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        if text and all(isinstance(d, int) for d in text):
            return [tuple(int(d) for d in text)]
        return [tuple(int(d) for d in s) for s in text]
    shapes = []
    for part in str(text).split(";"):
        part = part.strip().strip("()[]")
        try:
            dims = tuple(int(d) for d in part.replace("x", ",").split(",") if d.strip())
        except ValueError:
            dims = ()
        if not dims or any(d <= 0 for d in dims):
            raise UsageError(f"--input-shape {text!r}: expected positive integers like 1,3,224,224 (';' between inputs).")
        shapes.append(dims)
    return shapes


def _input_specs(backend: Backend, source: ModelSource, input_shape) -> list[InputSpec] | None:
    shapes = parse_input_shape(input_shape)
    declared = backend.input_specs(source)
    if shapes is None:
        return declared
    if declared is not None:
        if len(shapes) != len(declared):
            raise UsageError(f"--input-shape gives {len(shapes)} input(s) but the model has {len(declared)}.")
        for shape, spec in zip(shapes, declared, strict=True):
            full = spec.full_shape() or ()
            if len(shape) != len(full) or any(d is not None and d != s for s, d in zip(shape, full, strict=True)):
                raise UsageError(
                    f"--input-shape {','.join(map(str, shape))} does not fit input {spec.name} of shape "
                    f"{_shape_text(full)}."
                )
        return [_concrete(spec.name, shape, spec.dtype) for shape, spec in zip(shapes, declared, strict=True)]
    dtype = backend.float_dtype(source).name
    return [_concrete(f"input{i}", shape, dtype) for i, shape in enumerate(shapes)]


def _concrete(name: str, shape: tuple[int, ...], dtype: str) -> InputSpec:
    return InputSpec(name, tuple(shape[1:]), dtype, batch=shape[0] if shape else None, batched=bool(shape))


def _verification_batches(backend, source, specs, verify, samples, batch_size, seed, settings):
    """The verification inputs: a list of batches, each a tuple of arrays (one per input)."""
    step("reading the verification inputs")
    if verify is not None:
        return _data_batches(backend, source, specs, verify, samples, batch_size, settings)
    if specs is None:
        raise UsageError(
            "bncheck needs inputs to verify the folded model: pass --input-shape N,C,H,W (the "
            "model's input shape, e.g. 1,3,224,224) or --verify DATA."
        )
    total = int(samples or DEFAULT_RANDOM_SAMPLES)
    if total < 1:
        raise UsageError("--samples must be at least 1.")
    rng = np.random.default_rng(seed)
    resolved = []
    for spec in specs:
        dims = list(spec.full_shape() or ())
        if dims and dims[0] is None:
            dims[0] = total
        if any(d is None for d in dims):
            raise UsageError(
                f"input {spec.name} has dynamic dimensions {_shape_text(spec.full_shape() or ())}; pass --input-shape "
                "with concrete sizes (e.g. 8,3,224,224)."
            )
        resolved.append((spec, tuple(int(d) for d in dims)))
    per_batch = resolved[0][1][0] if resolved[0][1] else 1
    n_batches = max(1, math.ceil(total / max(per_batch, 1)))
    batches = []
    for _ in range(n_batches):
        batch = []
        for spec, shape in resolved:
            if np.issubdtype(np.dtype(spec.dtype), np.floating):
                batch.append(rng.standard_normal(shape).astype(spec.dtype))
            else:
                batch.append(np.zeros(shape, dtype=spec.dtype))
        batches.append(tuple(batch))
    return batches, "random", None


def _data_batches(backend, source, specs, verify, samples, batch_size, settings):
    if specs is not None and len(specs) != 1:
        raise UsageError("--verify DATA works for single-input models; this one has several inputs: use --input-shape.")
    spec = specs[0] if specs else None
    options = build_options(settings.options, {"limit": int(samples or DEFAULT_DATA_SAMPLES)})
    dataset = open_data(verify, options, expected_shape=spec.shape if spec else None)
    fixed = spec.batch if spec is not None else None
    size = fixed or int(batch_size)
    dtype = np.dtype(spec.dtype) if spec is not None else backend.float_dtype(source)
    batches = []
    for batch in dataset.batches(size):
        if fixed is not None and len(batch.x) != fixed:
            continue  # a model with a fixed batch size: drop the last, partial batch
        batches.append((np.ascontiguousarray(batch.x.astype(dtype, copy=False)),))
    if not batches:
        raise DataError(f"DATA {verify} gives fewer samples than the model's fixed batch size {fixed}.")
    info = {"path": str(verify), **{k: v for k, v in dataset.describe().items() if k not in ("path", "samples", "batch_size")}}
    return batches, "data", info


def _batch_len(batch: tuple) -> int:
    first = batch[0]
    return int(first.shape[0]) if getattr(first, "ndim", 0) else 1


def _shape_text(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _timing(backend: Backend, source: ModelSource, folded: FoldedModel, batch: tuple) -> dict[str, Any]:
    step("timing the original and the folded model")
    a, b, runtime = backend.timing_pair(source, folded, batch)
    t = interleaved_timing(a, b)
    return {
        "runtime": runtime,
        "original_ms": round(t["first_ms"], 4),
        "folded_ms": round(t["second_ms"], 4),
        "speedup": round(t["ratio"], 4),
        "rounds": t["rounds"],
        "batch": _batch_len(batch),
    }


def _fold_figures(backend, source, folded, kind, out, written, timing_info, atol, rtol, affine):
    before_params, before_nodes = backend.counts(source)
    # Same representation before and after (the folded model before any format conversion).
    after_params, after_nodes = backend.counts(folded.model)
    size_before = backend.file_size(source)
    size_after = sum(p.stat().st_size for p in written) if written else None
    figures: dict[str, Any] = {
        "output": {
            "path": str(out) if out is not None else None,
            "kind": kind,
            "written": bool(written),
            "files": [str(p) for p in written],
        },
        "layers_folded": folded.count("folded"),
        "layers_kept": folded.count("kept"),
        "layers_affine": folded.count("affine"),
        "affine": bool(affine),
        "mode": folded.extras.get("mode"),
        "parameters": {"before": before_params, "after": after_params},
        "nodes": {"before": before_nodes, "after": after_nodes},
        "file_size": {"before": size_before, "after": size_after},
        "speedup": timing_info["speedup"] if timing_info else None,
        "timing": timing_info,
        "tolerance": {"atol": atol, "rtol": rtol},
        "relative_error": "max|original - folded| / max|original|, per output, max over outputs",
    }
    return figures


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
    :func:`bncheck.backends.torch.folded_state.load_folded_state_dict`."""
    from bncheck.backends.torch import folded_state  # optional: torch

    return folded_state.load_folded_state_dict(model, path)

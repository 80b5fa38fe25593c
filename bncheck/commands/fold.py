"""``bncheck fold``: fold BN layers into the conv/linear weights that feed them, write an
inference model, and prove numerically that it computes the same function.

Flow: load MODEL -> choose the output kind (``--to`` or OUT's extension; ``.pt``/``.pth`` =
the input's kind) and guard the paths -> refuse defective statistics (BN001, BN002, BN004)
unless ``force`` -> verification inputs (``verify`` DATA, or random inputs of the model's
input shape) -> fold with the backend (:mod:`~bncheck.backends.onnx.fold`,
:mod:`~bncheck.backends.torch.fold`) -> convert to the output kind -> run original and folded
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

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.backends import output as writers
from bncheck.backends.folded import FoldedModel, FoldOutcome
from bncheck.backends.interface import ModelSource
from bncheck.backends.load import as_source
from bncheck.commands.audit import run_rules
from bncheck.config import Settings
from bncheck.errors import BncheckError, DataError, OutputError, UsageError
from bncheck.numerics.verify import ErrorAccumulator, default_tolerances, interleaved_timing
from bncheck.report.finding import Finding
from bncheck.report.report import Report
from bncheck.rules.registry import RuleContext

#: Audit rules whose findings make folding refuse (it would bake the defect into weights).
REFUSING_RULES = ("BN001", "BN002", "BN004")
#: Random verification samples when neither ``samples`` nor DATA says otherwise.
DEFAULT_RANDOM_SAMPLES = 8
#: Samples taken from DATA by default.
DEFAULT_DATA_SAMPLES = 256


class FoldRefused(BncheckError):
    """The model's BN statistics are defective; folding would bake the defect in."""


@dataclass
class InputSpec:
    """One model input: name, shape (None: dynamic axis) and numpy dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype


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
    import bncheck.rules  # noqa: F401  (registers the rules)

    settings = settings or Settings()
    source = as_source(model, arch=arch, trust_pickle=trust_pickle)
    if source.format == "state_dict" and not hasattr(source, "module"):
        raise UsageError(
            "folding a state dict needs its architecture: pass --arch package.module:factory "
            "(or path/to/file.py:factory)."
        )
    out = Path(out) if out is not None else None
    kind = _output_kind(source, out, to)
    if out is not None:
        _guard_paths(source, out, kind, force)
    layers = source.bn_layers()
    defects = _defects(source, settings)
    if defects and not force:
        raise FoldRefused(_refusal_message(defects))

    specs = _input_specs(source, input_shape)
    batches, inputs_from, data_info = _verification_batches(source, specs, verify, samples, batch_size, seed, settings)

    folded = _fold_backend(source, kind, affine=affine, example=batches[0])
    outcomes = folded.outcomes
    changed = folded.count("folded") + folded.count("affine") > 0
    artifact, artifact_notes = _convert(source, folded, kind, batches[0]) if changed or (out is not None and force) else (None, [])

    reference = _runner(source)
    # Verify what will be written (the converted artifact); an unchanged model is compared
    # with itself only when nothing is converted or written.
    candidate = _artifact_runner(source, folded, kind, artifact) if artifact is not None else reference
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
    passed = acc.passed(atol, rtol)
    verification = {
        "inputs": inputs_from,
        "samples": int(count),
        "max_abs_err": _finite_or_none(acc.max_abs()),
        "max_rel_err": _finite_or_none(acc.max_rel()),
        "passed": bool(passed),
    }

    timing_info = None
    if timing and changed:
        timing_info = _timing(source, folded, batches[0])

    written: list[Path] = []
    notes: list[str] = [*folded.notes, *artifact_notes]
    if source.family == "torch" and any(layer.training for layer in layers):
        notes.append("the model was saved in training mode; it was folded and verified in eval mode (inference)")
    if out is not None:
        if not changed and not force:
            notes.append(f"nothing to fold: {out} was not written (it would be the input model again; --force writes it anyway)")
        elif not passed and not force:
            notes.append(f"verification failed: {out} was not written (--force writes it anyway)")
        else:
            written = _write(source, folded, kind, artifact, out)
    elif not changed:
        notes.append("nothing to fold")

    ctx = RuleContext(layers=layers, thresholds=settings.threshold_table(), model_format=source.format,
                      extras={"verification": verification, "tolerance": {"atol": atol, "rtol": rtol}, "mismatch": acc.mismatch})
    findings: list[Finding] = list(defects) + run_rules("fold", ctx, settings)
    report = Report(command="fold", model=source.info(), layers=layers, findings=findings, fail_on=settings.fail_on)
    for layer in layers:
        outcome = outcomes.get(layer.name) or FoldOutcome("kept", None, layer.fold_reason or "not found in the model graph")
        report.layer_extras[layer.name] = {"fold": outcome.to_dict()}
    report.extras["verification"] = verification
    if data_info is not None:
        report.extras["data"] = {"samples": int(count), "batch_size": int(batch_size), **data_info}
    report.extras["fold"] = _fold_figures(
        source, folded, kind, out, written, timing_info, atol, rtol, affine
    )
    if not layers:
        report.notes.append(f"no batch-norm layers found (the model has {source.op_count()} ops/modules): nothing to fold")
    elif folded.count("folded") == 0 and folded.count("affine") == 0:
        report.notes.append("no BN layer can be folded: every layer is kept (see the reasons per layer)")
    report.notes.extend(notes)
    return report


# ------------------------------------------------------------------------------ output kind


def _output_kind(source: ModelSource, out: Path | None, to: str | None) -> str:
    if out is None:
        if to is not None:
            kind = writers.output_kind(Path("x"), to, source.format)
        else:
            kind = {"onnx": "onnx", "torchscript": "torchscript", "export": "export"}.get(source.format, "module")
    else:
        kind = writers.output_kind(out, to, source.format)
    if source.family == "onnx" and kind != "onnx":
        raise UsageError(
            f"an ONNX model can only be folded into ONNX (OUT .onnx or --to onnx), not {kind}: "
            "bncheck does not convert ONNX to PyTorch formats."
        )
    if source.format == "torchscript" and kind != "torchscript":
        raise UsageError(
            f"a TorchScript model can only be folded into TorchScript (OUT .ts/.pt or --to torchscript), not {kind}: "
            "torch.jit.freeze does the folding and leaves no module structure to convert; fold the "
            "state dict with --arch to get other formats."
        )
    return kind


def _guard_paths(source: ModelSource, out: Path, kind: str, force: bool) -> None:
    protected: list[Path] = [Path(source.path)] if source.path is not None else []
    companions: list[Path] = []
    if source.family == "onnx":
        from bncheck.backends.onnx.fold import external_data_files, uses_external_data

        protected += external_data_files(source.path)
        if uses_external_data(source.path):  # OUT keeps its tensors in OUT.data, too
            companions.append(writers.onnx_data_path(out))
    writers.check_output_path(out, protected=protected, force=force, companions=companions)


# ------------------------------------------------------------------------------ refusal


def _defects(source: ModelSource, settings: Settings) -> list[Finding]:
    """BN001/BN002/BN004 findings (those the user has not ignored)."""
    from bncheck.rules.registry import select_rules

    ctx = RuleContext(layers=source.bn_layers(), thresholds=settings.threshold_table(), model_format=source.format)
    findings: list[Finding] = []
    for r in select_rules("audit", REFUSING_RULES, settings.ignore):
        findings.extend(r.run(ctx))
    return findings


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


# ------------------------------------------------------------------------------ inputs


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


def _input_specs(source: ModelSource, input_shape) -> list[InputSpec] | None:
    shapes = parse_input_shape(input_shape)
    declared = _declared_inputs(source)
    if shapes is None:
        return declared
    if declared is not None:
        if len(shapes) != len(declared):
            raise UsageError(f"--input-shape gives {len(shapes)} input(s) but the model has {len(declared)}.")
        for shape, spec in zip(shapes, declared):
            if len(shape) != len(spec.shape) or any(d is not None and d != s for s, d in zip(shape, spec.shape)):
                raise UsageError(
                    f"--input-shape {','.join(map(str, shape))} does not fit input {spec.name} of shape "
                    f"{_shape_text(spec.shape)}."
                )
        return [InputSpec(spec.name, shape, spec.dtype) for shape, spec in zip(shapes, declared)]
    dtype = _torch_float_dtype(source)
    return [InputSpec(f"input{i}", shape, dtype) for i, shape in enumerate(shapes)]


def _declared_inputs(source: ModelSource) -> list[InputSpec] | None:
    if source.family == "onnx":
        from bncheck.backends.onnx.fold import input_specs

        return [InputSpec(*spec) for spec in input_specs(source.model)]
    if source.format == "export":
        from bncheck.backends.torch.fold import example_inputs

        example = example_inputs(source.program)
        if example is None:
            return None
        args, kwargs = example
        if kwargs or not all(hasattr(a, "shape") for a in args):
            return None
        return [
            InputSpec(f"input{i}", tuple(int(d) for d in a.shape), np.dtype(str(a.dtype).replace("torch.", "")))
            for i, a in enumerate(args)
        ]
    return None


def _torch_float_dtype(source: ModelSource) -> np.dtype:
    module = getattr(source, "module", None)
    if module is not None:
        for t in (*module.parameters(), *module.buffers()):
            if t.is_floating_point():
                return np.dtype(str(t.dtype).replace("torch.", ""))
    return np.dtype("float32")


def _verification_batches(source, specs, verify, samples, batch_size, seed, settings):
    """The verification inputs: a list of batches, each a tuple of arrays (one per input)."""
    if verify is not None:
        return _data_batches(source, specs, verify, samples, batch_size, settings)
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
        dims = list(spec.shape)
        if dims and dims[0] is None:
            dims[0] = total
        if any(d is None for d in dims):
            raise UsageError(
                f"input {spec.name} has dynamic dimensions {_shape_text(spec.shape)}; pass --input-shape "
                "with concrete sizes (e.g. 8,3,224,224)."
            )
        resolved.append((spec, tuple(int(d) for d in dims)))
    per_batch = resolved[0][1][0] if resolved[0][1] else 1
    n_batches = max(1, math.ceil(total / max(per_batch, 1)))
    batches = []
    for _ in range(n_batches):
        batch = []
        for spec, shape in resolved:
            if np.issubdtype(spec.dtype, np.floating):
                batch.append(rng.standard_normal(shape).astype(spec.dtype))
            else:
                batch.append(np.zeros(shape, dtype=spec.dtype))
        batches.append(tuple(batch))
    return batches, "random", None


def _data_batches(source, specs, verify, samples, batch_size, settings):
    from bncheck.data import build_options, open_data

    if specs is not None and len(specs) != 1:
        raise UsageError("--verify DATA works for single-input models; this one has several inputs: use --input-shape.")
    spec = specs[0] if specs else None
    options = build_options(settings.options, {"limit": int(samples or DEFAULT_DATA_SAMPLES)})
    dataset = open_data(verify, options, expected_shape=spec.shape[1:] if spec else None)
    fixed = spec.shape[0] if spec is not None and spec.shape and spec.shape[0] is not None else None
    size = fixed or int(batch_size)
    dtype = spec.dtype if spec is not None else _torch_float_dtype(source)
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


# ------------------------------------------------------------------------------ backends


def _fold_backend(source: ModelSource, kind: str, *, affine: bool, example: tuple) -> FoldedModel:
    if source.family == "onnx":
        from bncheck.backends.onnx.fold import fold_onnx

        return fold_onnx(source, affine=affine)
    from bncheck.backends.torch import fold as torch_fold

    layers = source.bn_layers()
    if source.format == "torchscript":
        result = torch_fold.fold_torchscript(source.module, layers)
        if affine:
            result.notes.append("--affine is not available for TorchScript inputs (torch.jit.freeze folds what it can)")
        return result
    if source.format == "export":
        return torch_fold.fold_export(source.program, layers, affine=affine, example=torch_fold.as_tensors(example))
    return torch_fold.fold_module(
        source.module, layers, affine=affine, swap_only=kind in ("state-dict", "pickle"), example=torch_fold.as_tensors(example)
    )


def _convert(source: ModelSource, folded: FoldedModel, kind: str, example: tuple) -> tuple[Any, list[str]]:
    """The object that will be written for ``kind`` (and verified)."""
    if source.family == "onnx" or kind in ("module", "state-dict", "pickle"):
        return folded.model, []
    from bncheck.backends.torch import fold as torch_fold

    try:
        return torch_fold.convert(folded.model, kind, torch_fold.as_tensors(example))
    except BncheckError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise OutputError(
            f"the folded model cannot be converted to {writers.OUTPUT_KINDS.get(kind, kind)} ({type(exc).__name__}: {first}); "
            "choose another output kind with --to."
        ) from exc


def _runner(source: ModelSource) -> Callable[[tuple], list[np.ndarray]]:
    """Runs the original model on a batch (tuple of arrays) and returns numpy outputs."""
    if source.family == "onnx":
        from bncheck.backends.onnx.fold import ort_runner

        return ort_runner(source.model, optimize=False)
    from bncheck.backends.torch import fold as torch_fold

    return torch_fold.runner(torch_fold.original_callable(source))


def _artifact_runner(source: ModelSource, folded: FoldedModel, kind: str, artifact) -> Callable[[tuple], list[np.ndarray]]:
    if kind == "onnx":
        from bncheck.backends.onnx.fold import ort_runner

        return ort_runner(artifact if artifact is not None else folded.model, optimize=False)
    from bncheck.backends.torch import fold as torch_fold

    target = artifact if artifact is not None else folded.model
    return torch_fold.runner(torch_fold.callable_of(target))


def _timing(source: ModelSource, folded: FoldedModel, batch: tuple) -> dict[str, Any]:
    if source.family == "onnx":
        from bncheck.backends.onnx.fold import ort_runner

        original, new = ort_runner(source.model, optimize=True), ort_runner(folded.model, optimize=True)
        runtime = "onnxruntime (default graph optimisations, which fuse Conv+BN themselves)"
        a, b = (lambda: original(batch)), (lambda: new(batch))
    else:
        from bncheck.backends.torch import fold as torch_fold

        a, b = torch_fold.timed_pair(source, folded.model, batch)
        runtime = "torch (TorchScript)" if source.format == "torchscript" else "torch eager"
    t = interleaved_timing(a, b)
    return {
        "runtime": runtime,
        "original_ms": round(t["first_ms"], 4),
        "folded_ms": round(t["second_ms"], 4),
        "speedup": round(t["ratio"], 4),
        "rounds": t["rounds"],
        "batch": _batch_len(batch),
    }


def _write(source: ModelSource, folded: FoldedModel, kind: str, artifact, out: Path) -> list[Path]:
    if kind == "onnx":
        from bncheck.backends.onnx.fold import uses_external_data

        external = source.family == "onnx" and uses_external_data(source.path)
        return writers.write_onnx(artifact, out, external_data=external)
    if kind == "export":
        return writers.write_export(artifact, out)
    if kind == "torchscript":
        return writers.write_torchscript(artifact, out)
    if kind == "pickle":
        return writers.write_pickle(artifact, out)
    if kind == "state-dict":
        layout = {
            name: o.status for name, o in folded.outcomes.items() if o.status in ("folded", "affine")
        }
        meta = {"bncheck.fold": json.dumps({"folded": sorted(k for k, v in layout.items() if v == "folded"),
                                            "affine": sorted(k for k, v in layout.items() if v == "affine")})}
        state = dict(artifact.state_dict) if hasattr(artifact, "graph_signature") else artifact.state_dict()
        return writers.write_state_dict(state, out, metadata=meta)
    raise UsageError(f"cannot write output kind {kind}.")


# ------------------------------------------------------------------------------ figures


def _fold_figures(source, folded, kind, out, written, timing_info, atol, rtol, affine):
    before_params, before_nodes = _counts(source.family, _model_object(source))
    # Same representation before and after (the folded model before any format conversion).
    after_params, after_nodes = _counts(source.family, folded.model)
    size_before = _file_size(source)
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
        "mode": folded.extras.get("mode", "onnx" if source.family == "onnx" else None),
        "parameters": {"before": before_params, "after": after_params},
        "nodes": {"before": before_nodes, "after": after_nodes},
        "file_size": {"before": size_before, "after": size_after},
        "speedup": timing_info["speedup"] if timing_info else None,
        "timing": timing_info,
        "tolerance": {"atol": atol, "rtol": rtol},
        "relative_error": "max|original - folded| / max|original|, per output, max over outputs",
    }
    return figures


def _model_object(source: ModelSource):
    if source.family == "onnx":
        return source.model
    if source.format == "export":
        return source.program
    return source.module


def _counts(family: str, obj) -> tuple[int | None, int | None]:
    if obj is None:
        return None, None
    if family == "onnx" or type(obj).__name__ == "ModelProto":
        from bncheck.backends.onnx.fold import node_count, parameter_count

        return parameter_count(obj), node_count(obj)
    from bncheck.backends.torch import fold as torch_fold

    return torch_fold.parameter_count(obj), torch_fold.node_count(obj)


def _file_size(source: ModelSource) -> int | None:
    if source.path is None or not Path(source.path).is_file():
        return None
    size = Path(source.path).stat().st_size
    if source.family == "onnx":
        from bncheck.backends.onnx.fold import external_data_files

        size += sum(p.stat().st_size for p in external_data_files(source.path) if p.is_file())
    return size


def _output_dtype(outputs: list[np.ndarray]) -> str:
    for o in outputs:
        if np.issubdtype(np.asarray(o).dtype, np.floating):
            return np.asarray(o).dtype.name
    return "float32"


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


# ------------------------------------------------------------------------------ state dicts


def load_folded_state_dict(model, path: str | Path):
    """Load a state dict written by ``bncheck fold ... -o X.safetensors`` into ``model`` (the
    original architecture, modified in place and returned): BN modules whose keys are absent
    become ``nn.Identity``, those with ``scale``/``shift`` keys become the per-channel affine
    map, and producers gain the bias the file holds for them; then a strict load."""
    import torch
    from torch import nn

    from bncheck.backends.torch.fold import ChannelAffine
    from bncheck.backends.torch.loading import load_safetensors, torch_load, unwrap_checkpoint
    from bncheck.backends.torch.source import is_bn_module

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        state = unwrap_checkpoint(load_safetensors(path), path)
    else:
        state = unwrap_checkpoint(torch_load(path, trust_pickle=False), path)
    modules = dict(model.named_modules())
    for name, module in list(modules.items()):
        if not name or not is_bn_module(module):
            continue
        own = [k for k in state if k.startswith(name + ".")]
        if f"{name}.scale" in state and f"{name}.shift" in state:
            shift = state[f"{name}.shift"]
            _replace(model, name, ChannelAffine.empty(int(shift.numel()), dtype=shift.dtype))
        elif not own:
            _replace(model, name, nn.Identity())
    for key, value in state.items():
        prefix, _, attr = key.rpartition(".")
        module = model.get_submodule(prefix) if prefix else model
        if attr == "bias" and getattr(module, "bias", "absent") is None:
            module.bias = nn.Parameter(torch.zeros_like(value))
    model.load_state_dict(state, strict=True)
    return model


def _replace(root, path: str, module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)

"""The inputs ``bncheck fold`` verifies the whole model on, and why those.

In order: ``--verify DATA``; ``--input-shape``; the static shapes the model declares (an ONNX
graph's inputs, a torch.export program's example inputs, a dynamic batch axis set to the
sample count); example inputs the backend infers (:meth:`~bncheck.backends.interface.Backend.
infer_inputs`: for a torch module, the first layer's channels and a spatial size the model
accepts). When none can be built, the model is verified site by site only
(:mod:`bncheck.numerics.site_proof`), and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bncheck import data  # the package: its readers load on first use (--verify DATA)
from bncheck.backends.interface import Backend, InputSpec, ModelSource
from bncheck.errors import DataError, UsageError
from bncheck.report.results import VerificationInputs

#: Random verification samples when neither ``samples`` nor DATA says otherwise: one batch of
#: two (more random samples find nothing more: a wrong fold is wrong on every input, and
#: every folded site is proved on its own besides; for a 224x224 ResNet-18 each further
#: sample costs two full forward passes)
DEFAULT_RANDOM_SAMPLES = 2
#: Samples taken from DATA by default.
DEFAULT_DATA_SAMPLES = 256

#: what the report says when no whole-model input could be built
SITES_ONLY = (
    "no input shape is known (dynamic or undeclared, and none could be inferred): every folded site "
    "was proved on its own; pass --input-shape or --verify DATA to verify the whole model too"
)

#: a model whose data are constants: nothing to feed, each site's proof is the verification
NO_INPUTS = "the model has no inputs (its data are constants): every folded site was proved on its own"


@dataclass
class InputPlan:
    """The whole-model verification batches (None: sites only) and the report's record of them."""

    batches: list[tuple] | None
    used: VerificationInputs
    #: what the DATA reader describes (``--verify`` only)
    data_info: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def example(self) -> tuple | None:
        return self.batches[0] if self.batches else None


def plan_inputs(backend: Backend, source: ModelSource, *, input_shape, verify, samples, batch_size, seed, settings) -> InputPlan:
    """The inputs to verify on, and why (see the module docstring for the order). The caller
    says the step (``fold`` may run this in a thread beside the rewrite)."""
    specs = _input_specs(backend, source, input_shape)
    if verify is not None:
        batches, info = _data_batches(backend, source, specs, verify, samples, batch_size, settings)
        return InputPlan(batches, VerificationInputs("data", _shapes(batches), f"--verify {verify}"), info)
    total = int(samples or DEFAULT_RANDOM_SAMPLES)
    if total < 1:
        raise UsageError("--samples must be at least 1.")
    if input_shape is not None:
        return _random_plan(specs, total, seed, "input-shape", f"--input-shape {input_shape}")
    if specs is not None and not specs:
        return InputPlan(None, VerificationInputs("none", None, NO_INPUTS))
    if specs is not None and all(_static(spec) for spec in specs):
        return _random_plan(specs, total, seed, "graph", "static input shapes declared by the model")
    how = ""
    if specs is not None:
        sized, how = backend.concrete_inputs(source, specs)
        if all(_static(spec) for spec in sized):
            # the sizes and where they came from are the verification record's reason (the
            # report prints it once, on the verification-inputs line)
            return _random_plan(sized, total, seed, "inferred", how or "dynamic dimensions set to sizes the model accepts")
    inferred = backend.infer_inputs(source, specs)
    if inferred is not None:
        found, why = inferred
        return _random_plan(found, total, seed, "inferred", why)
    if specs is not None:
        dynamic = "; ".join(f"{s.name} {_shape_text(s.full_shape() or ())}" for s in specs)
        tried = f" ({how.rstrip('.')})" if how else ""
        why = f"the model's inputs have dynamic dimensions ({dynamic}) and no size could be inferred{tried}: " + SITES_ONLY.split(": ", 1)[1]
        return InputPlan(None, VerificationInputs("none", None, why))
    return InputPlan(None, VerificationInputs("none", None, SITES_ONLY))


def _static(spec: InputSpec) -> bool:
    """Every per-sample dimension known (the batch may stay dynamic)."""
    return spec.shape is not None and None not in spec.shape


def _random_plan(specs: list[InputSpec], total: int, seed: int, origin: str, why: str) -> InputPlan:
    batches = _random_batches(specs, total, seed)
    return InputPlan(batches, VerificationInputs(origin, _shapes(batches), why))


def _shapes(batches: list[tuple]) -> list[list[int]]:
    return [list(np.shape(a)) for a in batches[0]] if batches else []


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


def _random_batches(specs: list[InputSpec], total: int, seed: int) -> list[tuple]:
    """``total`` standard-normal samples shaped by ``specs`` (a dynamic batch axis: ``total``)."""
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
    return batches


def _data_batches(backend, source, specs, verify, samples, batch_size, settings):
    if specs is not None and len(specs) != 1:
        raise UsageError("--verify DATA works for single-input models; this one has several inputs: use --input-shape.")
    spec = specs[0] if specs else None
    options = data.build_options(settings.options, {"limit": int(samples or DEFAULT_DATA_SAMPLES)})
    dataset = data.open_data(verify, options, expected_shape=spec.shape if spec else None)
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
    return batches, info


def _shape_text(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"



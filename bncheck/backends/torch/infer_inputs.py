"""Example inputs for a torch module that declares none: built from its first layer (a conv's
``in_channels`` and rank, a Linear's ``in_features``, a BatchNorm's ``num_features``) and a
spatial size the model accepts, tried from a short list on a batch of 2 in eval mode.

The first layer is the first conv / linear / BN module in definition order; candidate shapes
follow from it (``(C, s, s)`` for a Conv2d, ``(F,)`` for a Linear), then a few rank-1 and
rank-2 shapes for models that reshape their input themselves (torchcrepe's ``(N, 1024)``
audio frames go to a ``Conv2d(1, ...)`` as ``x[:, None, :, None]``). Each try is one forward
pass with no gradient; the search stops at the first success, after :data:`MAX_TRIES` tries or
:data:`TIME_BUDGET_S` seconds.
"""

from __future__ import annotations

import time
import warnings

import torch

from bncheck.backends.interface import InputSpec

#: spatial sizes tried, in order (ImageNet first, then sizes small and fixed-input models use)
SPATIAL_SIZES = (224, 32, 64, 128, 256, 28, 16, 8, 1024)
#: lengths tried for rank-1 and rank-2 candidates
LENGTHS = (1024, 256, 128, 64, 32, 16, 512, 2048)
MAX_TRIES = 24
TIME_BUDGET_S = 20.0
BATCH = 2

_CONV_RANK = {"Conv1d": 1, "Conv2d": 2, "Conv3d": 3, "ConvTranspose1d": 1, "ConvTranspose2d": 2, "ConvTranspose3d": 3}
_BN_RANK = {"BatchNorm1d": None, "BatchNorm2d": 2, "BatchNorm3d": 3}


def first_layer(module) -> tuple[str, object] | None:
    """(path, module) of the first conv / linear / BN module, in definition order."""
    for name, child in module.named_modules():
        kind = _kind(child)
        if kind in _CONV_RANK or kind in _BN_RANK or kind == "Linear":
            return name or "<root>", child
    return None


def _kind(module) -> str:
    return (getattr(module, "original_name", None) or type(module).__name__).replace("Lazy", "")


def candidates(layer) -> list[tuple[int, ...]]:
    """Per-sample shapes to try for a model whose first layer is ``layer``."""
    kind = _kind(layer)
    shapes: list[tuple[int, ...]] = []
    width = _input_width(layer, kind)
    if width is None:
        pass
    elif kind == "Linear":
        shapes.append((width,))
    elif kind in _CONV_RANK:
        rank = _CONV_RANK[kind]
        shapes += [(width, *(s,) * rank) for s in SPATIAL_SIZES]
    elif kind in _BN_RANK:
        rank = _BN_RANK[kind]
        shapes += [(width,), *[(width, s) for s in LENGTHS]] if rank is None else [(width, *(s,) * rank) for s in SPATIAL_SIZES]
    shapes += [(n,) for n in LENGTHS]
    unique = []
    for shape in shapes:
        if shape not in unique:
            unique.append(shape)
    return unique


def _input_width(layer, kind: str) -> int | None:
    """The input width of ``layer``: its ``in_features`` / ``in_channels`` / ``num_features``,
    else (a traced TorchScript submodule keeps its parameters but not those attributes) read
    from its weight or running mean: a conv's ``weight.shape[1]`` (groups are not stored, so 1
    is assumed), a transposed conv's ``weight.shape[0]``; None when neither is there."""
    name = "in_features" if kind == "Linear" else "in_channels" if kind in _CONV_RANK else "num_features"
    value = getattr(layer, name, None)
    if value is not None:
        return int(value)
    if kind in _BN_RANK:
        stored = getattr(layer, "running_mean", None)
        stored = getattr(layer, "weight", None) if stored is None else stored
        return int(stored.shape[0]) if stored is not None and stored.dim() == 1 else None
    weight = getattr(layer, "weight", None)
    if weight is None or weight.dim() < 2:
        return None
    return int(weight.shape[0] if kind.startswith("ConvTranspose") else weight.shape[1])


def _accepts(call, shape: tuple[int, ...], dtype: torch.dtype) -> bool:
    try:
        with torch.no_grad():
            out = call(torch.randn((BATCH, *shape), dtype=dtype))
    except Exception:  # any failure means: not this shape
        return False
    return out is not None


def infer_module_inputs(module, dtype: torch.dtype) -> tuple[list[InputSpec], str] | None:
    """The first candidate shape ``module`` runs on, and how it was found; None if none ran."""
    first = first_layer(module)
    if first is None:
        return None
    name, layer = first
    was_training = module.training
    module.eval()
    start = time.perf_counter()
    tried = []
    try:
        for shape in candidates(layer)[:MAX_TRIES]:
            tried.append(shape)
            if _accepts(module, shape, dtype):
                dtype_name = str(dtype).replace("torch.", "")
                how = (
                    f"per-sample shape {_text(shape)} from the first layer {name} ({_kind(layer)}), "
                    f"the first the model ran on ({_ordinal(len(tried))} tried)"
                )
                return [InputSpec("input", shape, dtype_name)], how
            if time.perf_counter() - start > TIME_BUDGET_S:
                break
    finally:
        module.train(was_training)
    return None


def _text(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _ordinal(n: int) -> str:
    return {1: "first", 2: "second", 3: "third"}.get(n, f"{n}th")


def jit_traced(module):
    """``torch.jit.trace`` of ``module`` (eval mode) on an inferred input, for its dataflow
    graph when torch.fx cannot trace it; None when no input is found or tracing fails."""
    if isinstance(module, torch.jit.ScriptModule):
        return None
    params = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    dtype = params[0].dtype if params else torch.float32
    found = infer_module_inputs(module, dtype)
    if found is None:
        return None
    (spec,), _ = found
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about the traced path
            return torch.jit.trace(module, torch.randn((BATCH, *spec.shape), dtype=dtype), check_trace=False)
    except Exception:  # untraceable by jit as well
        return None
    finally:
        module.train(was_training)

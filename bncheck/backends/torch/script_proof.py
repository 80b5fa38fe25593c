"""Per-site proof of a TorchScript fold (``torch.jit.freeze`` did the folding, see
:mod:`~bncheck.backends.torch.fold_script`): the original pair is the scripted producer and BN
submodules run in float64; the folded op is the frozen graph's conv / linear call whose
constant weight is this layer's fold (found by comparing every candidate of the right shape
with :mod:`bncheck.numerics.fold_math`'s result), called again in float64 with its own
constant arguments. A layer whose fold no frozen op carries is not proved on its own."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from bncheck.backends.torch.fold_proof import PairRun, module_geometry
from bncheck.backends.torch.producers import module_kind
from bncheck.layer import BNLayer
from bncheck.numerics import fold_math

METHOD = "torch float64: scripted producer then BN, against the frozen graph's op"
_OPS = ("aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::conv_transpose1d", "aten::conv_transpose2d",
        "aten::conv_transpose3d", "aten::linear", "aten::_convolution")


@dataclass
class _FrozenCall:
    op: object
    weight: torch.Tensor
    args: list


def frozen_calls(frozen) -> list[_FrozenCall]:
    """Every conv / linear call of the frozen graph whose weight is a constant tensor."""
    calls = []
    for node in frozen.graph.nodes():
        if node.kind() not in _OPS:
            continue
        values = [None if i.node().kind() != "prim::Constant" else i.toIValue() for i in node.inputs()]
        if len(values) < 2 or not isinstance(values[1], torch.Tensor):
            continue
        op = getattr(torch.ops.aten, node.kind().split("::", 1)[1])
        calls.append(_FrozenCall(op, values[1], values[2:]))
    return calls


def _expected_weight(producer, kind: str, layer: BNLayer) -> np.ndarray:
    scale, shift = fold_math.bn_scale_shift(layer.running_mean, layer.running_var, layer.eps or 1e-5,
                                            weight=layer.weight, bias=layer.bias)
    w = producer.weight.detach().double().numpy()
    if kind == "linear":
        return fold_math.fold_bn_into_linear(w, None, scale, shift)[0]
    return fold_math.fold_bn_into_conv(w, None, scale, shift, transposed=kind == "convtranspose",
                                       groups=int(producer.groups))[0]


def _match(calls: list[_FrozenCall], expected: np.ndarray) -> _FrozenCall | None:
    best, best_err = None, np.inf
    for call in calls:
        if tuple(call.weight.shape) != expected.shape:
            continue
        err = float(np.abs(call.weight.detach().double().numpy() - expected).max())
        if err < best_err:
            best, best_err = call, err
    scale = float(np.abs(expected).max()) or 1.0
    return best if best is not None and best_err <= 1e-3 * scale else None


def script_checks(module, frozen, layers: list[BNLayer], folded: set[str]) -> dict[str, PairRun]:
    """The proof of every folded layer whose producer is a submodule and whose fold a frozen op carries."""
    work = copy.deepcopy(module).double().eval()
    originals = dict(module.named_modules())
    doubles = dict(work.named_modules())
    calls = frozen_calls(frozen)
    checks: dict[str, PairRun] = {}
    for layer in layers:
        producer = originals.get(layer.producer or "")
        kind = module_kind(producer) if producer is not None else None
        if layer.name not in folded or kind is None or layer.running_mean is None:
            continue
        try:
            call = _match(calls, _expected_weight(producer, kind, layer))
            geometry = module_geometry(producer, kind)
        except (AttributeError, RuntimeError, ValueError):  # a traced module keeps no attributes
            continue
        if call is None:
            continue
        prod64, bn64 = doubles[layer.producer], doubles[layer.name]
        weight = call.weight.detach().double()
        args = [a.detach().double() if isinstance(a, torch.Tensor) else a for a in call.args]
        op = call.op
        checks[layer.name] = PairRun(
            layer.name,
            geometry=geometry,
            original=lambda x, p=prod64, b=bn64: b(p(x)),
            folded=lambda x, op=op, w=weight, a=args: op(x, w, *a),
            method=METHOD,
        )
    return checks

"""Per-site proof of a torch fold (see :mod:`bncheck.numerics.site_proof`): for each folded
site, the original producer followed by ``F.batch_norm`` with the BN's own statistics, against
the folded producer, both in float64 on a random input built from the producer's weight and
attributes. The original side is captured before the graph is edited, the folded side after.

Producers are a conv / transposed conv / linear module (copied and run as a module, its
``padding_mode`` included) or a functional call on parameters (its own target called again
with the same non-tensor arguments)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx

from bncheck.backends.torch.fold_sites import Site
from bncheck.backends.torch.tensors import resolve_tensor
from bncheck.numerics.site_proof import ProducerGeometry, SiteProof, judge, random_input, unproved

METHOD = "torch float64: producer then F.batch_norm, against the folded producer"

_CONV = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_CONV_T = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_CONVOLUTION = ("input", "weight", "bias", "stride", "padding", "dilation", "transposed", "output_padding", "groups")
_LINEAR = ("input", "weight", "bias")

Call = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class PairRun:
    """One site's two sides: ``original`` (producer then BN) and ``folded`` (the new producer)."""

    layer: str
    geometry: ProducerGeometry | None = None
    original: Call | None = None
    folded: Call | None = None
    problem: str = ""
    method: str = METHOD

    def prove(self, atol: float, rtol: float, seed: int = 0) -> SiteProof:
        if self.problem or self.original is None or self.folded is None or self.geometry is None:
            return unproved(self.layer, self.problem or "the folded producer was not recorded", self.method)
        x = random_input(self.geometry, seed)
        with torch.no_grad():
            t = torch.from_numpy(x)
            expected = self.original(t).detach().numpy()
            got = self.folded(t).detach().numpy()
        return judge(self.layer, expected, got, atol=atol, rtol=rtol, input_shape=x.shape, method=self.method)


def capture(site: Site) -> PairRun:
    """The original side of ``site`` (call before its producer is edited)."""
    run = PairRun(site.layer.name)
    try:
        producer, run.geometry = _producer_call(site)
    except ValueError as exc:
        run.problem = str(exc)
        return run
    stats = [None if t is None else t.detach().double().clone() for t in (site.mean, site.var, site.weight, site.bias)]
    mean, var, weight, bias = stats
    eps = float(site.eps)

    def original(x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(producer(x), mean, var, weight, bias, False, 0.0, eps)

    run.original = original
    return run


def complete(run: PairRun, site: Site) -> None:
    """Record the folded side (call after the producer got its new weight and bias)."""
    if run.problem:
        return
    try:
        run.folded, _ = _producer_call(site)
    except ValueError as exc:
        run.problem = str(exc)


def _producer_call(site: Site) -> tuple[Call, ProducerGeometry]:
    prod = site.producer
    if prod.module is not None:
        module = copy.deepcopy(prod.module).double().eval()
        return module, module_geometry(module, prod.kind)
    return functional_call(site)


def module_geometry(module, kind: str) -> ProducerGeometry:
    weight = module.weight
    if kind == "linear":
        return ProducerGeometry("linear", int(weight.shape[1]))
    return ProducerGeometry.conv(
        tuple(weight.shape),
        groups=int(module.groups),
        transposed=kind == "convtranspose",
        stride=module.stride,
        dilation=module.dilation,
        padding=module.padding,
        output_padding=getattr(module, "output_padding", None),
    )


def arg_names(target) -> tuple[str, ...]:
    """The argument names of a functional conv / transposed conv / linear call target."""
    text = str(getattr(target, "__name__", target))
    if "convolution" in text:
        return _CONVOLUTION
    if "transpose" in text:
        return _CONV_T
    if "linear" in text:
        return _LINEAR
    return _CONV


def functional_call(site: Site) -> tuple[Call, ProducerGeometry]:
    """The producer's own call target, on float64 copies of its current weight and bias."""
    node = site.producer.node
    names = arg_names(node.target)
    given = dict(zip(names, node.args, strict=False))
    given.update(node.kwargs)
    rest = {k: v for k, v in given.items() if k not in ("input", "weight", "bias")}
    if _has_node(list(rest.values())):
        raise ValueError("its producer takes computed arguments, so it cannot be run on its own")
    owner = node.graph.owning_module
    weight = _tensor(owner, given.get("weight"))
    bias_arg = given.get("bias")
    bias = _tensor(owner, bias_arg) if bias_arg is not None else None
    target = node.target

    def call(x: torch.Tensor) -> torch.Tensor:
        return target(x, weight, bias, **rest)

    if site.producer.kind == "linear":
        geometry = ProducerGeometry("linear", int(weight.shape[1]))
    else:
        transposed = bool(rest.get("transposed", site.producer.kind == "convtranspose"))
        geometry = ProducerGeometry.conv(
            tuple(weight.shape), groups=int(rest.get("groups", 1)), transposed=transposed,
            stride=rest.get("stride"), dilation=rest.get("dilation"), padding=rest.get("padding"),
            output_padding=rest.get("output_padding"),
        )
    return call, geometry


def _has_node(value) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_has_node(v) for v in value)
    return isinstance(value, fx.Node)


def _tensor(owner, value) -> torch.Tensor:
    if getattr(value, "op", "") != "get_attr":
        raise ValueError("its producer's weight or bias is not a stored tensor")
    return resolve_tensor(owner, value.target).detach().double().clone()

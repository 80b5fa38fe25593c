"""How a :class:`~bncheck.backends.torch.runner.TorchRunner` sees the input of each BN layer,
per kind of model:

* eager BN modules (``nn.BatchNorm*``, subclasses, frozen BN): a forward pre-hook;
* everything that reaches a batch-norm op at run time — functional ``F.batch_norm`` calls,
  BN modules of TorchScript archives (which take no hooks) and the aten BN nodes of
  ``torch.export`` programs: the runner's dispatch mode, which recognises the layer by the
  identity of its ``running_mean`` (or ``weight``) tensor;
* BN-like modules that torch.export decomposed into arithmetic: an observer module inserted
  into the program's runnable graph before their first op.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bncheck.backends.interface import InputSpec
from bncheck.backends.torch import graph as torch_graph
from bncheck.backends.torch.input_spec import (
    export_input_spec,
    module_input_spec,
    script_input_spec,
)
from bncheck.backends.torch.inventory import BN_CLASS_NAMES
from bncheck.backends.torch.ops import EXPORT_BN_OPS
from bncheck.backends.torch.tensors import (
    attr_tensor,
    first_not_none,
    param_dtype_device,
    resolve_tensor,
    tensor_key,
)
from bncheck.layer import BNLayer

#: ``observe(layer name, BN input)``: what hooks and observers call (the runner decides whether to record)
Observe = Callable[[str, Any], None]
FROZEN_REASON = "frozen BN module: keeps normalising with its stored statistics in train mode"


@dataclass
class Observation:
    """What runs the model and how each BN layer's input is seen."""

    call: Any
    flavour: str  # eager | torchscript | export
    input_spec: InputSpec | None = None
    dtype: Any = None
    device: Any = None
    #: tensor identity (running_mean, else weight) -> layer name, for every layer
    by_tensor: dict[tuple[int, int], str] = field(default_factory=dict)
    #: layers whose input the dispatch mode records (the others have a hook or an observer)
    dispatch_observed: set[str] = field(default_factory=set)
    unhookable: dict[str, str] = field(default_factory=dict)
    frozen: dict[str, str] = field(default_factory=dict)
    hooks: list[Any] = field(default_factory=list)
    #: (module, its training flag) as found, restored by the runner's close()
    saved_modes: list[tuple[Any, bool]] = field(default_factory=list)

    def recognise(self, name: str, tensor) -> None:
        """Let the dispatch mode recognise layer ``name`` by ``tensor`` and record its input."""
        self.by_tensor[tensor_key(tensor)] = name
        self.dispatch_observed.add(name)


def _eval_saving_modes(module) -> list[tuple[Any, bool]]:
    saved = [(m, bool(m.training)) for m in module.modules()]
    module.eval()
    return saved


def _pre_hook(observe: Observe, name: str):
    def hook(module, args):
        if args and isinstance(args[0], torch.Tensor):
            observe(name, args[0])

    return hook


def observe_eager(source, layers: list[BNLayer], wanted: set[str], observe: Observe) -> Observation:
    """Pre-hooks on the wanted BN modules of an eager module; functional calls by dispatch."""
    module = source.module
    obs = Observation(call=module, flavour="eager", saved_modes=_eval_saving_modes(module))
    modules = dict(module.named_modules())
    functional = [layer for layer in layers if layer.kind == "functional batch_norm"]
    for layer in layers:
        if layer.kind == "functional batch_norm":
            continue
        bn = module if layer.name == "<root>" else modules.get(layer.name)
        if bn is None:
            obs.unhookable[layer.name] = "module not found in the model"
            continue
        if layer.name in wanted:
            obs.hooks.append(bn.register_forward_pre_hook(_pre_hook(observe, layer.name)))
        if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            obs.frozen[layer.name] = FROZEN_REASON
        tensor = first_not_none(attr_tensor(bn, "running_mean"), attr_tensor(bn, "weight"))
        if tensor is not None:  # so that its batch_norm op, if any, is recognised
            obs.by_tensor[tensor_key(tensor)] = layer.name
    if functional:
        _map_functional(obs, module, layers, functional)
    obs.dtype, obs.device = param_dtype_device(module)
    obs.input_spec = module_input_spec(module, obs.dtype)
    return obs


def _map_functional(obs: Observation, module, layers: list[BNLayer], functional: list[BNLayer]) -> None:
    names = {layer.name for layer in layers if layer.kind != "functional batch_norm"}
    try:
        _, calls = torch_graph.fx_producers(module, names)
    except Exception as exc:  # torch.fx raises many kinds of errors on untraceable code
        for layer in functional:
            obs.unhookable[layer.name] = f"the model can no longer be traced ({type(exc).__name__})"
        return
    by_name = {call.name: call for call in calls}
    for layer in functional:
        call = by_name.get(layer.name)
        tensor = None
        if call is not None:
            tensor = first_not_none(resolve_tensor(module, call.running_mean), resolve_tensor(module, call.weight))
        if tensor is None:
            obs.unhookable[layer.name] = (
                "functional batch_norm with neither running statistics nor weight: the call "
                "cannot be recognised at run time"
            )
            continue
        obs.recognise(layer.name, tensor)


def observe_script(source, layers: list[BNLayer]) -> Observation:
    """TorchScript modules take no hooks: every BN layer is seen by its batch_norm op."""
    module = source.module
    obs = Observation(call=module, flavour="torchscript", saved_modes=_eval_saving_modes(module))
    modules = dict(module.named_modules())
    for layer in layers:
        bn = module if layer.name == "<root>" else modules.get(layer.name)
        if bn is None:
            obs.unhookable[layer.name] = "module not found in the TorchScript archive"
            continue
        if getattr(bn, "original_name", "") not in BN_CLASS_NAMES:
            obs.frozen[layer.name] = FROZEN_REASON
        if not _script_calls_batch_norm(bn):
            obs.unhookable[layer.name] = (
                "TorchScript module without a batch_norm op (e.g. frozen BN written as "
                "arithmetic): ScriptModules take no hooks, so its input cannot be observed"
            )
            continue
        tensor = first_not_none(attr_tensor(bn, "running_mean"), attr_tensor(bn, "weight"))
        if tensor is None:
            obs.unhookable[layer.name] = "no running statistics and no weight: its batch_norm op cannot be recognised"
            continue
        obs.recognise(layer.name, tensor)
    obs.dtype, obs.device = param_dtype_device(module)
    obs.input_spec = script_input_spec(module, obs.dtype)
    return obs


def observe_export(source, layers: list[BNLayer], wanted: set[str], observe: Observe, device: str = "cpu") -> Observation:
    """The aten BN ops of the program's runnable module (on ``device``) by dispatch; decomposed
    ones by an observer."""
    program = source.program
    call = program.module()
    obs = Observation(call=call if device == "cpu" else call.to(device), flavour="export")
    sig = program.graph_signature
    lifted = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    lifted.update(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})
    seen = _map_export_bn_ops(obs, program, layers, lifted)
    for layer in layers:
        if layer.name not in seen:  # decomposed frozen BN: no batch_norm op, observe its input
            obs.frozen[layer.name] = FROZEN_REASON
            if layer.name not in wanted:
                continue
            problem = _observe_decomposed(obs.call, program, layer.name, set(lifted), observe)
            if problem:
                obs.unhookable[layer.name] = problem
    obs.dtype, obs.device = param_dtype_device(obs.call)
    obs.input_spec = export_input_spec(program)
    return obs


def _map_export_bn_ops(obs: Observation, program, layers: list[BNLayer], lifted: dict) -> set[str]:
    """Recognise the layer of every aten BN op of ``program``; the names of those layers."""
    names = {layer.name for layer in layers}
    seen: set[str] = set()
    for node in program.graph.nodes:
        if node.op != "call_function" or str(node.target) not in EXPORT_BN_OPS:
            continue
        positions = EXPORT_BN_OPS[str(node.target)]
        args = [node.args[i] if i is not None and i < len(node.args) else None for i in positions[:4]]
        weight, _, mean, _ = (lifted.get(getattr(a, "name", None)) for a in args)
        # the same naming as ExportSource.bn_layers: calling module, else buffer owner, else node
        stack = node.meta.get("nn_module_stack") or {}
        name = list(stack.values())[-1][0] if stack else (mean.rsplit(".", 1)[0] if mean else node.name)
        if name not in names:
            continue
        seen.add(name)
        tensor = first_not_none(resolve_tensor(obs.call, mean), resolve_tensor(obs.call, weight))
        if tensor is None:
            obs.unhookable[name] = "no running statistics and no weight: its batch_norm op cannot be recognised"
            continue
        if "frozen" in next((la.kind for la in layers if la.name == name), "").lower():
            obs.frozen[name] = FROZEN_REASON
        obs.recognise(name, tensor)
    return seen


class Observer(torch.nn.Module):
    """Module inserted into an FX graph: passes its input to ``observe``, returns nothing."""

    def __init__(self, observe: Observe, name: str) -> None:
        super().__init__()
        self._observe = observe
        self._name = name

    def forward(self, x) -> None:
        self._observe(self._name, x)


def _observe_decomposed(gm, program, name: str, lifted: set[str], observe: Observe) -> str | None:
    """Insert an observer before the ops of a BN-like module that torch.export decomposed into
    arithmetic (found by ``nn_module_stack``); its input is the one value those ops read from
    outside the module other than lifted parameters and buffers. Returns why not, or None."""
    inside = [
        n
        for n in program.graph.nodes
        if n.op == "call_function"
        and any(path == name for path, _ in (n.meta.get("nn_module_stack") or {}).values())
    ]
    members = {n.name for n in inside}
    inputs = {
        a.name
        for n in inside
        for a in n.all_input_nodes
        if a.name not in members and not (a.op == "placeholder" and a.name in lifted)
    }
    if len(inputs) != 1:
        return "the ops of this decomposed BN module have no single input to observe"
    source = inputs.pop()
    nodes = {n.name: n for n in gm.graph.nodes}
    consumer = next(
        (nodes[n.name] for n in inside if n.name in nodes and source in {a.name for a in n.all_input_nodes}),
        None,
    )
    if source not in nodes or consumer is None:
        return "its input was not found in the runnable module of the program"
    target = f"_bncheck_observer_{len(list(gm.named_children()))}"
    gm.add_submodule(target, Observer(observe, name))
    with gm.graph.inserting_before(consumer):
        gm.graph.call_module(target, (nodes[source],))
    gm.recompile()
    return None


def _script_calls_batch_norm(module) -> bool:
    """Whether a TorchScript module's forward calls ``aten::batch_norm`` / ``F.batch_norm``."""
    try:
        graph = module.graph
    except (AttributeError, RuntimeError):
        return False

    def walk(block) -> bool:
        for node in block.nodes():
            kind = node.kind()
            if kind in ("aten::batch_norm", "aten::native_batch_norm"):
                return True
            if kind == "prim::CallFunction":
                fn = node.inputsAt(0).node()
                if fn.kind() == "prim::Constant" and fn.hasAttribute("name") and fn.s("name") == "batch_norm":
                    return True
            for sub in node.blocks():
                if walk(sub):
                    return True
        return False

    return walk(graph)

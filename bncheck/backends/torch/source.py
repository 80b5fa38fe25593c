"""PyTorch backend: nn.Modules (from --arch, pickles or TorchScript), bare state dicts and
torch.export programs, all presented as a :class:`ModelSource`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bncheck.backends.detect import ModelFormat
from bncheck.backends.interface import ModelSource
from bncheck.backends.torch import graph as torch_graph
from bncheck.backends.torch.loading import (
    build_from_arch,
    import_torch,
    load_exported_program,
    load_safetensors,
    load_state_dict_into,
    load_torchscript,
    torch_load,
    unwrap_checkpoint,
)
from bncheck.errors import ModelLoadError, UsageError, first_line
from bncheck.layer import BNLayer, as_float64

BN_CLASS_NAMES = {
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "LazyBatchNorm1d",
    "LazyBatchNorm2d",
    "LazyBatchNorm3d",
}
#: Why a bare state dict cannot be run.
NEEDS_ARCH = (
    "a state dict holds weights but no architecture, so it cannot be run; pass --arch "
    "package.module:factory (or path/to/file.py:factory) naming a function that builds the model."
)
#: PyTorch's defaults, assumed when a state dict does not say.
DEFAULT_EPS = 1e-5
DEFAULT_MOMENTUM = 0.1


def load_torch_model(
    path: Path, fmt: ModelFormat, *, arch: str | None, trust_pickle: bool
) -> ModelSource:
    if fmt is ModelFormat.TORCHSCRIPT:
        if arch:
            raise ModelLoadError("--arch is only for state dicts; a TorchScript archive carries its own code.")
        return TorchModuleSource(load_torchscript(path), path=path, format="torchscript")
    if fmt is ModelFormat.EXPORT:
        if arch:
            raise ModelLoadError("--arch is only for state dicts; a torch.export archive carries its own graph.")
        return ExportSource(load_exported_program(path), path=path)
    if fmt is ModelFormat.SAFETENSORS:
        state = unwrap_checkpoint(load_safetensors(path), path)
    else:
        state = unwrap_checkpoint(torch_load(path, trust_pickle=trust_pickle), path)
    torch = import_torch()
    if isinstance(state, torch.nn.Module):
        if arch:
            raise ModelLoadError("--arch is only for state dicts; this file holds a whole module.")
        return TorchModuleSource(state, path=path, format="pickle")
    if arch:
        model = build_from_arch(arch)
        load_state_dict_into(model, state, arch)
        model.eval()
        source = TorchModuleSource(model, path=path, format="state_dict")
        source.arch = arch
        return source
    return StateDictSource(state, path=path)


# ------------------------------------------------------------------------------ helpers


def is_bn_module(module) -> bool:
    """BatchNorm1d/2d/3d, SyncBatchNorm, lazy variants, and any module holding
    ``running_mean`` and ``running_var`` buffers itself (frozen BN), but not InstanceNorm."""
    torch = import_torch()
    if isinstance(module, torch.nn.modules.instancenorm._InstanceNorm):
        return False
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return True
    original = getattr(module, "original_name", None)
    if original and "InstanceNorm" in original:
        return False
    if original in BN_CLASS_NAMES:
        return True
    own = dict(module.named_buffers(recurse=False))
    return "running_mean" in own and "running_var" in own


def _kind_name(module) -> str:
    return getattr(module, "original_name", None) or type(module).__name__


#: Ops a frozen BN may apply to running_var before adding eps (torchvision reshapes first).
_SCRIPT_VIEW_OPS = ("aten::reshape", "aten::view", "aten::unsqueeze", "aten::flatten")
_EXPORT_VIEW_OPS = ("aten.reshape.default", "aten.view.default", "aten.unsqueeze.default")


def _script_bn_constants(module) -> dict[str, Any]:
    """eps / momentum / training as constants of a TorchScript BN's ``aten::batch_norm`` call
    (traced modules keep no attributes)."""
    try:
        graph = module.graph
    except (AttributeError, RuntimeError):
        return {}
    running_var: set[str] = set()  # running_var and reshaped views of it
    for node in graph.nodes():
        if node.kind() == "aten::batch_norm":
            values = [inp.toIValue() for inp in node.inputs()]
            out = {}
            if len(values) >= 8:
                out["training"], out["momentum"], out["eps"] = values[5], values[6], values[7]
            return out
        if node.kind() == "prim::GetAttr" and node.s("name") == "running_var":
            running_var.add(node.output().debugName())
        elif node.kind() in _SCRIPT_VIEW_OPS and node.inputsAt(0).debugName() in running_var:
            running_var.add(node.output().debugName())
        elif node.kind() == "aten::add" and node.inputsAt(0).debugName() in running_var:
            # a frozen BN computes running_var + eps itself (e.g. torchvision's FrozenBatchNorm2d)
            eps = node.inputsAt(1).toIValue() if node.inputsAt(1).node().kind() == "prim::Constant" else None
            if hasattr(eps, "numel") and eps.numel() == 1:
                eps = eps.item()
            if isinstance(eps, float):
                return {"eps": eps}
    return {}


def _is_uninitialized(tensor) -> bool:
    from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

    return isinstance(tensor, (UninitializedParameter, UninitializedBuffer))


def layer_from_module(name: str, module) -> BNLayer:
    """A :class:`BNLayer` from an eager or TorchScript BN-like module."""
    torch = import_torch()
    buffers = dict(module.named_buffers(recurse=False))
    params = dict(module.named_parameters(recurse=False))
    kind = _kind_name(module)
    consts = _script_bn_constants(module) if hasattr(module, "graph") else {}
    eps = getattr(module, "eps", consts.get("eps"))
    is_std_bn = isinstance(module, torch.nn.modules.batchnorm._BatchNorm) or kind in BN_CLASS_NAMES
    momentum = getattr(module, "momentum", consts.get("momentum")) if is_std_bn else None
    weight = params.get("weight", buffers.get("weight"))
    bias = params.get("bias", buffers.get("bias"))
    mean, var = buffers.get("running_mean"), buffers.get("running_var")
    notes: list[str] = []
    if mean is not None and _is_uninitialized(mean):
        notes.append("lazy layer never materialised (no forward pass before saving)")
        mean = var = None
    if weight is not None and _is_uninitialized(weight):
        weight = bias = None
    num_features = getattr(module, "num_features", None)
    if not isinstance(num_features, int) or num_features <= 0:
        ref = next((t for t in (mean, weight) if t is not None), None)
        num_features = int(ref.numel()) if ref is not None else 0
    nbt = buffers.get("num_batches_tracked")
    track = getattr(module, "track_running_stats", mean is not None)
    training = bool(module.training) if is_std_bn else None
    if training is None and kind not in BN_CLASS_NAMES:
        notes.append("frozen BN (always uses its stored statistics)")
    return BNLayer(
        name=name,
        kind=kind,
        num_features=num_features,
        eps=float(eps) if eps is not None else None,
        momentum=float(momentum) if isinstance(momentum, (int, float)) else None,
        momentum_convention="pytorch" if is_std_bn else "unknown",
        affine=weight is not None,
        weight=as_float64(weight),
        bias=as_float64(bias),
        running_mean=as_float64(mean),
        running_var=as_float64(var),
        num_batches_tracked=int(nbt.item()) if nbt is not None and nbt.numel() == 1 else None,
        training=training,
        uses_running_stats=bool(track) and mean is not None and var is not None,
        assumed=[] if eps is not None else ["eps"],
        notes=notes,
    )


def apply_producer(layer: BNLayer, producer: torch_graph.Producer | None, reason_if_unknown: str) -> None:
    if producer is None:
        layer.producer, layer.producer_kind, layer.foldable = None, None, None
        layer.fold_reason = reason_if_unknown
        return
    layer.producer = producer.name
    layer.producer_kind = producer.kind
    layer.input_name = producer.bn_node
    blockers = list(producer.blockers)
    if not layer.uses_running_stats:
        blockers.append("no running statistics to fold")
    if producer.kind == "input":
        layer.foldable, layer.fold_reason = False, "normalises the model input directly (no producer op)"
    elif producer.kind not in ("conv", "convtranspose", "linear"):
        layer.foldable = False
        layer.fold_reason = f"fed by {producer.name or producer.kind}, not by a conv/linear"
    elif blockers:
        layer.foldable, layer.fold_reason = False, "; ".join(blockers)
    else:
        layer.foldable, layer.fold_reason = True, f"into {producer.kind} {producer.name}"


# ------------------------------------------------------------------------------ sources


class TorchModuleSource(ModelSource):
    """An ``nn.Module`` (eager or TorchScript) with its BN modules and their producers."""

    family = "torch"

    def __init__(self, module, *, path: Path | None, format: str):
        super().__init__(path)
        self.module = module
        self.format = format
        self.arch: str | None = None
        self._layers: list[BNLayer] | None = None

    def op_count(self) -> int:
        return sum(1 for _, m in self.module.named_modules() if not list(m.children()))

    def input_spec(self):
        from bncheck.backends.torch import runner as torch_runner

        if self.format == "torchscript":
            return torch_runner.script_input_spec(self.module)
        return torch_runner.module_input_spec(self.module)

    def runner(self, *, layers=None):
        from bncheck.backends.torch.runner import TorchRunner

        return TorchRunner(self, layers=layers)

    def bn_layers(self) -> list[BNLayer]:
        if self._layers is None:
            self._layers = self._inventory()
        return self._layers

    def _inventory(self) -> list[BNLayer]:
        bn_modules = [(n, m) for n, m in self.module.named_modules() if n and is_bn_module(m)]
        if not bn_modules and is_bn_module(self.module):
            bn_modules = [("", self.module)]
        layers = [layer_from_module(n or "<root>", m) for n, m in bn_modules]
        names = {n for n, _ in bn_modules}
        producers, functional, reason = self._producers(names)
        for layer, (n, _) in zip(layers, bn_modules):
            apply_producer(layer, producers.get(n), reason or "not called in forward()")
        layers.extend(self._functional_layers(functional))
        return layers

    def _producers(self, names: set[str]):
        if self.format == "torchscript":
            try:
                return torch_graph.script_producers(self.module, names), [], None
            except Exception as exc:  # pragma: no cover - defensive
                return {}, [], f"TorchScript graph could not be read ({exc})"
        try:
            producers, functional = torch_graph.fx_producers(self.module, names)
            return producers, functional, None
        except Exception as exc:  # torch.fx raises many kinds of errors on untraceable code
            first = first_line(exc, limit=120)
            self.notes.append(
                f"torch.fx could not trace the model ({first}); producers come from exact "
                "nn.Sequential patterns only"
            )
            producers = torch_graph.sequential_producers(self.module, names)
            return producers, [], "model not traceable and BN not in an nn.Sequential after its producer"

    def _functional_layers(self, functional) -> list[BNLayer]:
        out = []
        tensors = dict(self.module.named_parameters())
        tensors.update(dict(self.module.named_buffers()))
        for call in functional:
            mean = tensors.get(call.running_mean) if call.running_mean else None
            var = tensors.get(call.running_var) if call.running_var else None
            weight = tensors.get(call.weight) if call.weight else None
            ref = next((t for t in (mean, weight) if t is not None), None)
            layer = BNLayer(
                name=call.name,
                kind="functional batch_norm",
                num_features=int(ref.numel()) if ref is not None else 0,
                eps=call.eps,
                momentum=call.momentum,
                affine=weight is not None,
                weight=as_float64(weight),
                bias=as_float64(tensors.get(call.bias) if call.bias else None),
                running_mean=as_float64(mean),
                running_var=as_float64(var),
                training=call.training,
                uses_running_stats=mean is not None and var is not None and not call.training,
            )
            apply_producer(layer, call.producer, "")
            out.append(layer)
        return out


class StateDictSource(ModelSource):
    """A bare state dict: BN layers recognised by their buffers; no graph, so producers are
    unknown until ``--arch`` supplies the architecture."""

    family = "torch"
    format = "state_dict"

    def __init__(self, state: dict[str, Any], *, path: Path | None):
        super().__init__(path)
        self.state = state
        self.notes.append("state dict without --arch: eps/momentum assumed at PyTorch defaults, producers unknown")

    def op_count(self) -> int:
        return len({k.rsplit(".", 1)[0] for k in self.state if "." in k})

    def input_spec(self):
        raise UsageError(NEEDS_ARCH)

    def runner(self, *, layers=None):
        raise UsageError(NEEDS_ARCH)

    def bn_layers(self) -> list[BNLayer]:
        prefixes = sorted(
            {k[: -len(".running_mean")] for k in self.state if k.endswith(".running_mean")},
            key=lambda p: list(self.state).index(p + ".running_mean"),
        )
        layers = []
        for prefix in prefixes:
            var = self.state.get(prefix + ".running_var")
            if var is None:
                continue
            mean = self.state[prefix + ".running_mean"]
            weight = self.state.get(prefix + ".weight")
            nbt = self.state.get(prefix + ".num_batches_tracked")
            layers.append(
                BNLayer(
                    name=prefix,
                    kind="BatchNorm" if nbt is not None else "FrozenBatchNorm",
                    num_features=int(mean.numel()),
                    eps=DEFAULT_EPS,
                    momentum=DEFAULT_MOMENTUM if nbt is not None else None,
                    momentum_convention="pytorch" if nbt is not None else "unknown",
                    affine=weight is not None,
                    weight=as_float64(weight),
                    bias=as_float64(self.state.get(prefix + ".bias")),
                    running_mean=as_float64(mean),
                    running_var=as_float64(var),
                    num_batches_tracked=int(nbt.item()) if nbt is not None and nbt.numel() == 1 else None,
                    training=None,
                    uses_running_stats=True,
                    foldable=None,
                    fold_reason="unknown without --arch",
                    assumed=["eps", "momentum"] if nbt is not None else ["eps"],
                )
            )
        return layers


class ExportSource(ModelSource):
    """A ``torch.export`` ExportedProgram: BN ops and producers straight from its aten graph."""

    family = "torch"
    format = "export"

    def __init__(self, program, *, path: Path | None):
        super().__init__(path)
        self.program = program

    def op_count(self) -> int:
        return sum(1 for n in self.program.graph.nodes if n.op == "call_function")

    def input_spec(self):
        from bncheck.backends.torch.runner import export_input_spec

        return export_input_spec(self.program)

    def runner(self, *, layers=None):
        from bncheck.backends.torch.runner import TorchRunner

        return TorchRunner(self, layers=layers)

    def _tensor(self, node) -> Any:
        if getattr(node, "op", None) != "placeholder":
            return None
        sig = self.program.graph_signature
        fqn = (
            sig.inputs_to_parameters.get(node.name)
            or sig.inputs_to_buffers.get(node.name)
            or getattr(sig, "inputs_to_lifted_tensor_constants", {}).get(node.name)
        )
        if fqn is None:
            return None
        if fqn in self.program.state_dict:
            return self.program.state_dict[fqn]
        return self.program.constants.get(fqn)

    def _fqn(self, node) -> str | None:
        sig = self.program.graph_signature
        return sig.inputs_to_parameters.get(node.name) or sig.inputs_to_buffers.get(node.name)

    def bn_layers(self) -> list[BNLayer]:
        graph = self.program.graph
        layers = []
        positions: dict[str, int] = {}
        for position, node in enumerate(graph.nodes):
            if node.op != "call_function" or str(node.target) not in torch_graph.EXPORT_BN_OPS:
                continue
            iw, ib, im, iv, it, imom, ieps = torch_graph.EXPORT_BN_OPS[str(node.target)]
            args = list(node.args)

            def get(i, args=args):
                return args[i] if i is not None and i < len(args) else None

            mean_node, var_node = get(im), get(iv)
            weight, bias = self._tensor(get(iw)), self._tensor(get(ib))
            mean, var = self._tensor(mean_node), self._tensor(var_node)
            training = bool(get(it)) if it is not None else False
            fqn = self._fqn(mean_node) if mean_node is not None else None
            stack = node.meta.get("nn_module_stack") or {}
            name = list(stack.values())[-1][0] if stack else (fqn.rsplit(".", 1)[0] if fqn else node.name)
            kind = list(stack.values())[-1][1].rsplit(".", 1)[-1] if stack else "batch_norm"
            ref = next((t for t in (mean, weight) if t is not None), None)
            layer = BNLayer(
                name=name,
                kind=kind,
                num_features=int(ref.numel()) if ref is not None else 0,
                eps=float(get(ieps)) if get(ieps) is not None else None,
                momentum=float(get(imom)) if isinstance(get(imom), (int, float)) else None,
                affine=weight is not None,
                weight=as_float64(weight),
                bias=as_float64(bias),
                running_mean=as_float64(mean),
                running_var=as_float64(var),
                training=training,
                uses_running_stats=mean is not None and var is not None and not training,
                input_name=node.name,
            )
            nbt = self.program.state_dict.get(f"{name}.num_batches_tracked")
            if nbt is not None and nbt.numel() == 1:
                layer.num_batches_tracked = int(nbt.item())
            apply_producer(layer, self._producer(args[0], node), "")
            layers.append(layer)
            positions[name] = position
        frozen = self._frozen_layers({f"{layer.name}.running_mean" for layer in layers})
        for layer, position in frozen:
            layers.append(layer)
            positions[layer.name] = position
        layers.sort(key=lambda layer: positions[layer.name])
        return layers

    def _frozen_layers(self, seen: set[str]) -> list[tuple[BNLayer, int]]:
        """BN-like modules whose arithmetic torch.export decomposed (e.g. a frozen BN computing
        ``x * w / sqrt(var + eps) + ...`` itself): found by their running_mean/running_var
        buffers, their ops by the ``nn_module_stack`` metadata; with the graph position of
        their first op."""
        sig = self.program.graph_signature
        state = self.program.state_dict
        placeholder_of = {fqn: name for name, fqn in sig.inputs_to_buffers.items()}
        lifted = set(sig.inputs_to_parameters) | set(sig.inputs_to_buffers)
        nodes = list(self.program.graph.nodes)
        out = []
        for key in state:
            if not key.endswith(".running_mean") or key in seen:
                continue
            prefix = key[: -len(".running_mean")]
            if f"{prefix}.running_var" not in state:
                continue
            inside = [
                (i, n)
                for i, n in enumerate(nodes)
                if n.op == "call_function"
                and any(path == prefix for path, _ in (n.meta.get("nn_module_stack") or {}).values())
            ]
            if not inside:
                continue
            stack = list(inside[0][1].meta["nn_module_stack"].values())
            kind = next(t for path, t in stack if path == prefix)
            kind = kind.rsplit(".", 1)[-1] if isinstance(kind, str) else getattr(kind, "__name__", "FrozenBatchNorm")
            if "InstanceNorm" in kind or any("instance_norm" in str(n.target) for _, n in inside):
                continue  # InstanceNorm(track_running_stats=True) carries the same buffers
            members = {n for _, n in inside}
            var_names = {placeholder_of.get(f"{prefix}.running_var")}
            eps = None
            for _, n in inside:
                first = getattr(n.args[0], "name", None) if n.args else None
                if str(n.target) in _EXPORT_VIEW_OPS and first in var_names:
                    var_names.add(n.name)
                elif str(n.target) == "aten.add.Tensor" and first in var_names and isinstance(n.args[1], float):
                    eps = n.args[1]
                    break
            mean, var = state[key], state[f"{prefix}.running_var"]
            weight, bias = state.get(f"{prefix}.weight"), state.get(f"{prefix}.bias")
            layer = BNLayer(
                name=prefix,
                kind=kind,
                num_features=int(mean.numel()),
                eps=eps,
                momentum=None,
                momentum_convention="unknown",
                affine=weight is not None,
                weight=as_float64(weight),
                bias=as_float64(bias),
                running_mean=as_float64(mean),
                running_var=as_float64(var),
                training=None,
                uses_running_stats=True,
                assumed=[] if eps is not None else ["eps"],
                notes=["frozen BN (always uses its stored statistics)"],
            )
            inputs = [
                a
                for _, n in inside
                for a in n.all_input_nodes
                if a not in members and not (a.op == "placeholder" and a.name in lifted)
            ]
            if len(set(inputs)) == 1:
                apply_producer(layer, self._producer(inputs[0], inside[0][1]), "")
            else:
                apply_producer(layer, None, "the decomposed frozen BN has no single input")
            out.append((layer, inside[0][0]))
        return out

    def _producer(self, inp, bn_node) -> torch_graph.Producer:
        if inp.op == "placeholder":
            return torch_graph.Producer(name=inp.name, kind="input")
        target = str(inp.target)
        kind = torch_graph.EXPORT_PRODUCER_OPS.get(target)
        if kind is None:
            return torch_graph.Producer(name=inp.name, kind="other")
        if target == "aten.convolution.default" and len(inp.args) > 6 and inp.args[6]:
            kind = "convtranspose"
        weight = inp.args[1]
        fqn = self._fqn(weight) if getattr(weight, "op", None) == "placeholder" else None
        stack = inp.meta.get("nn_module_stack") or {}
        # the calling module, not the weight's FQN: a shared weight is lifted under one name only
        name = (list(stack.values())[-1][0] if stack else "") or (fqn.rsplit(".", 1)[0] if fqn else inp.name)
        blockers = []
        if len(inp.users) > 1:
            blockers.append(f"{name} output is also used elsewhere")
        if fqn is None:
            blockers.append("the weight is computed, not a parameter")
        elif len(weight.users) > 1:
            blockers.append(f"{fqn} is used by more than one op")
        return torch_graph.Producer(name=name, kind=kind, blockers=blockers, bn_node=bn_node.name)


def tensor_to_numpy(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()

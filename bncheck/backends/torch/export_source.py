"""A torch.export program as a :class:`ModelSource`: its BN layers and their producers
straight from its aten graph, including BN-like modules that torch.export decomposed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bncheck.backends.interface import ModelSource
from bncheck.backends.torch import inventory_consumers
from bncheck.backends.torch.input_spec import export_input_spec
from bncheck.backends.torch.inventory import apply_producer
from bncheck.backends.torch.ops import EXPORT_BN_OPS
from bncheck.backends.torch.producers import Producer, producer_call
from bncheck.backends.torch.runner import TorchRunner
from bncheck.layer import BNLayer

#: Ops a decomposed frozen BN may apply to running_var before adding eps.
_EXPORT_VIEW_OPS = ("aten.reshape.default", "aten.view.default", "aten.unsqueeze.default")


class ExportSource(ModelSource):
    """A ``torch.export`` ExportedProgram: BN ops and producers straight from its aten graph."""

    family = "torch"
    format = "export"
    runner_class = TorchRunner

    def __init__(self, program, *, path: Path | None):
        super().__init__(path)
        self.program = program

    def op_count(self) -> int:
        return sum(1 for n in self.program.graph.nodes if n.op == "call_function")

    def input_spec(self):
        return export_input_spec(self.program)

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
            if node.op != "call_function" or str(node.target) not in EXPORT_BN_OPS:
                continue
            iw, ib, im, iv, it, imom, ieps = EXPORT_BN_OPS[str(node.target)]
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
            layer = BNLayer.from_arrays(
                name, kind, weight, bias, mean, var, eps=get(ieps), momentum=get(imom), training=training, input_name=node.name
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
        if inventory_consumers.candidates(layers):  # on the unlifted module, which fold edits
            inventory_consumers.consider_consumers(self.program.module(), layers)
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
            layer = BNLayer.from_arrays(
                prefix,
                kind,
                weight,
                bias,
                mean,
                var,
                eps=eps,
                momentum=None,
                momentum_convention="unknown",
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

    def _producer(self, inp, bn_node) -> Producer:
        if inp.op == "placeholder":
            return Producer(name=inp.name, kind="input")
        call = producer_call(inp, {})
        if call is None:
            return Producer(name=inp.name, kind="other")
        weight = call.weight
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
        return Producer(name=name, kind=call.kind, blockers=blockers, bn_node=bn_node.name)

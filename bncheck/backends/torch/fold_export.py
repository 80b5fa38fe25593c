"""Folding a torch.export program: graph mode on its unlifted module (``program.module()``,
aten ops on ``get_attr`` parameters), then exported again with the original example inputs
(dynamic dimensions kept where the graph shows them)."""

from __future__ import annotations

import torch
from torch.export import Dim

from bncheck.backends.interface import FoldedModel
from bncheck.backends.torch.fold_graph import fold_graph
from bncheck.layer import BNLayer


def fold_export(program, layers: list[BNLayer], *, affine: bool = False, example: tuple | None = None,
                keep: dict[str, str] | None = None) -> FoldedModel:
    """Fold the unlifted module of an ExportedProgram and export the result again (with the
    program's own example inputs, else ``example``)."""
    gm = program.module()
    example = example_inputs(program) or ((tuple(example), {}) if example is not None else None)
    args = example[0] if example is not None else None
    result = fold_graph(gm, gm, layers, affine=affine, swap_only=False, example=args, keep=keep)
    if not any(o.status in ("folded", "affine") for o in result.outcomes.values()):
        result.model = program
        return result
    args, kwargs = example if example is not None else ((), {})
    try:
        new = torch.export.export(result.model, args, kwargs or None, dynamic_shapes=_dynamic_shapes(program, args))
    except Exception:
        new = torch.export.export(result.model, args, kwargs or None)
        result.notes.append("re-exported with static shapes (the dynamic dimensions could not be kept)")
    result.extras["graph_module"] = result.model
    result.model = new
    return result


def example_inputs(program) -> tuple[tuple, dict] | None:
    """The (args, kwargs) a program was exported with, or None when it does not keep them."""
    example = getattr(program, "example_inputs", None)
    if example is not None:
        args, kwargs = example
        return tuple(args), dict(kwargs or {})
    return None


def _dynamic_shapes(program, args: tuple):
    """A dynamic_shapes spec keeping the symbolic dimensions of the program's tensor inputs."""
    user_inputs = [
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind.name == "USER_INPUT" and hasattr(spec.arg, "name")
    ]
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    if len(user_inputs) != len(args) or not all(isinstance(a, torch.Tensor) for a in args):
        return None
    spec = []
    any_dynamic = False
    for name in user_inputs:
        val = placeholders[name].meta.get("val")
        dims = {}
        if val is not None:
            for i, d in enumerate(val.shape):
                if not isinstance(d, int):
                    dims[i] = Dim.DYNAMIC
                    any_dynamic = True
        spec.append(dims or None)
    return tuple(spec) if any_dynamic else None

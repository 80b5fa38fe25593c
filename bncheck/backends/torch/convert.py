"""Converting a (folded) torch model to an output kind: a torch.export program, a TorchScript
module or an ONNX ModelProto."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import torch
from torch import fx
from torch.export import Dim


def convert(model, kind: str, example: tuple):
    """``model`` (GraphModule / module / ExportedProgram / ScriptModule) as ``kind``:
    onnx (ModelProto), export (ExportedProgram) or torchscript (ScriptModule).
    Returns (object, notes)."""
    if kind == "export":
        if hasattr(model, "graph_signature"):
            return model, []
        return _export(model, example), []
    if kind == "torchscript":
        return _to_torchscript(model, example)
    if kind == "onnx":
        return _to_onnx(model, example), []
    raise ValueError(f"unknown output kind {kind}")


def _to_torchscript(model, example: tuple):
    if isinstance(model, torch.jit.ScriptModule):
        return model, []
    target = model.module() if hasattr(model, "graph_signature") else model
    if isinstance(target, fx.GraphModule):
        _drop_string_annotations(target)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's notes on the user's annotations
            return torch.jit.script(target), []
    except Exception:
        notes = ["TorchScript by torch.jit.trace (torch.jit.script failed): control flow is fixed to the traced path"]
        with torch.no_grad():
            return torch.jit.trace(target, example), notes


def _drop_string_annotations(gm: fx.GraphModule) -> None:
    """Forget type annotations that are strings (``from __future__ import annotations`` in
    the user's code): FX would render them as unknown names that TorchScript rejects."""
    changed = False
    for node in gm.graph.nodes:
        if isinstance(node.type, str):
            node.type = None
            changed = True
    if changed:
        gm.recompile()


def _two_samples(example: tuple) -> tuple:
    """``example`` with a batch of one sample doubled: torch.export specialises an axis whose
    example size is 0 or 1 (``--input-shape 1,1,48,512`` gave an ONNX graph of batch 1 only and a
    warning from torch on stderr), so the batch is traced at 2."""
    return tuple(torch.cat([a, a]) if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == 1 else a for a in example)


def _export(model, example: tuple):
    example = _two_samples(example)
    dynamic = tuple({0: Dim.AUTO} if isinstance(a, torch.Tensor) and a.dim() > 0 else None for a in example)
    try:
        return torch.export.export(model, example, dynamic_shapes=dynamic)
    except Exception:
        return torch.export.export(model, example)


def _to_onnx(model, example: tuple):
    program = model if hasattr(model, "graph_signature") else _export(model, example)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            onnx_program = torch.onnx.export(program, _two_samples(example), dynamo=True, optimize=True, verbose=False)
    finally:
        quiet.setLevel(level)
    return onnx_program.model_proto

"""Turning whatever the user passes (a path, an nn.Module, an onnx.ModelProto) into a ModelSource."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bncheck.backends.detect import load_model
from bncheck.backends.interface import ModelSource
from bncheck.errors import UsageError


def as_source(model: Any, *, arch: str | None = None, trust_pickle: bool = False) -> ModelSource:
    if isinstance(model, ModelSource):
        return model
    if isinstance(model, (str, Path)):
        return load_model(model, arch=arch, trust_pickle=trust_pickle)
    module_name = type(model).__module__
    if module_name.startswith("onnx"):
        from bncheck.backends.onnx.source import OnnxSource

        return OnnxSource(model, path=None)
    if module_name.startswith("torch") or hasattr(model, "named_modules"):
        from bncheck.backends.torch.source import ExportSource, TorchModuleSource

        if hasattr(model, "graph_signature"):
            return ExportSource(model, path=None)
        fmt = "torchscript" if hasattr(model, "_c") else "module"
        return TorchModuleSource(model, path=None, format=fmt)
    raise UsageError(
        f"cannot use a {type(model).__name__} as a model; pass a path, an nn.Module, an "
        "ExportedProgram or an onnx.ModelProto."
    )

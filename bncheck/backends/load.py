"""The backend registry: which family a file or an in-memory model belongs to, and the
:class:`~bncheck.backends.interface.Backend` that serves it.

The families are imported only when chosen, so that an ONNX run never imports torch (an
optional dependency): these are the only function-level imports of bncheck's own modules
in the package, by design.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bncheck.backends.detect import ModelFormat, sniff_format
from bncheck.backends.interface import Backend, ModelSource
from bncheck.errors import ModelLoadError, UsageError

FAMILIES = ("onnx", "torch")


def backend(family: str) -> Backend:
    """The backend of ``family`` (``onnx`` or ``torch``)."""
    if family == "onnx":
        from bncheck.backends.onnx.backend import BACKEND as onnx_backend  # optional: onnx

        return onnx_backend
    if family == "torch":
        from bncheck.backends.torch.loading import import_torch  # optional: torch

        import_torch()  # a clear "install torch" message instead of an ImportError
        from bncheck.backends.torch.backend import BACKEND as torch_backend  # optional: torch

        return torch_backend
    raise UsageError(f"no backend for model family {family!r}; bncheck knows: {', '.join(FAMILIES)}.")


def files_on_disk(path: Path) -> list[Path]:
    """The files a model at ``path`` is made of, before loading it: the file itself and, for
    ONNX, the external-data files it names (so that no output is ever written over them)."""
    files = [path]
    if path.is_file() and sniff_format(path) is ModelFormat.ONNX:
        from bncheck.backends.onnx.external_data import (
            external_data_files,  # optional: onnx (chosen family)
        )

        files.extend(external_data_files(path))
    return files


def backend_for(source: ModelSource) -> Backend:
    """The backend that serves ``source``."""
    return backend(source.family)


def load_model(path: str | Path, *, arch: str | None = None, trust_pickle: bool = False) -> ModelSource:
    """Load any supported model file into a :class:`ModelSource`.

    ``arch`` (``package.module:factory`` or ``file.py:factory``) builds the architecture
    for a state dict; ``trust_pickle`` allows unpickling whole modules (runs code).
    """
    path = Path(path)
    fmt = sniff_format(path)
    family = "onnx" if fmt is ModelFormat.ONNX else "torch"
    try:
        chosen = backend(family)
    except ModelLoadError as exc:  # name the file: with several models, which one needs torch
        raise ModelLoadError(f"{path}: {exc}") from exc
    return chosen.load(path, fmt.value, arch=arch, trust_pickle=trust_pickle)


def takes_arch(model: Any) -> bool:
    """Whether ``--arch`` means something for ``model``: a path to a torch.save or safetensors
    file (ONNX, TorchScript and torch.export files carry their own graph). Lets one ``--arch``
    serve the state dicts among several models."""
    return isinstance(model, (str, Path)) and sniff_format(Path(model)) in (ModelFormat.TORCH_SAVE, ModelFormat.SAFETENSORS)


def _families_of(model: Any) -> list[str]:
    """The families an in-memory model object may belong to, from its type."""
    module_name = type(model).__module__
    families = ["onnx"] if module_name.startswith("onnx") else ["torch"] if module_name.startswith("torch") else []
    if not families and hasattr(model, "named_modules"):
        families = ["torch"]
    return families


def backend_of(model: Any) -> Backend:
    """The backend of an in-memory model object (an nn.Module, an onnx.ModelProto, ...)."""
    families = _families_of(model)
    if not families:
        raise UsageError(
            f"a {type(model).__name__} is not a model bncheck knows; pass an nn.Module, an "
            "ExportedProgram or an onnx.ModelProto."
        )
    return backend(families[0])


def as_source(model: Any, *, arch: str | None = None, trust_pickle: bool = False) -> ModelSource:
    """A source for a path, a loaded source, an nn.Module / ScriptModule / ExportedProgram or
    an onnx.ModelProto."""
    if isinstance(model, ModelSource):
        return model
    if isinstance(model, (str, Path)):
        return load_model(model, arch=arch, trust_pickle=trust_pickle)
    for family in _families_of(model):
        source = backend(family).adopt(model)
        if source is not None:
            return source
    raise UsageError(
        f"cannot use a {type(model).__name__} as a model; pass a path, an nn.Module, an "
        "ExportedProgram or an onnx.ModelProto."
    )

"""The backend registry: which family a file or an in-memory model belongs to, and the
:class:`~bncheck.backends.interface.Backend` that serves it.

Each family's backend module is imported by its name in :data:`BACKEND_MODULES` when the family
is chosen, never before: an ONNX run never imports torch (an optional dependency) and a torch
run never pays for importing onnx and onnxruntime. The families never import this module (a
forbidden contract in pyproject.toml), so the edge from here to them runs one way only.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from bncheck.backends.detect import ModelFormat, sniff_format
from bncheck.backends.interface import Backend, ModelSource
from bncheck.errors import BncheckError, ModelLoadError, UsageError

#: family -> the module whose ``BACKEND`` serves it.
BACKEND_MODULES = {"onnx": "bncheck.backends.onnx.backend", "torch": "bncheck.backends.torch.backend"}
FAMILIES = tuple(BACKEND_MODULES)
#: family -> (what its models are called, how to install its runtime).
_RUNTIMES = {
    "onnx": ("an ONNX", "`pip install --force-reinstall bncheck`"),
    "torch": ("a PyTorch", "`pip install 'bncheck[torch]'`"),
}


def backend(family: str) -> Backend:
    """The backend of ``family`` (``onnx`` or ``torch``)."""
    if family not in BACKEND_MODULES:
        raise UsageError(f"no backend for model family {family!r}; bncheck knows: {', '.join(FAMILIES)}.")
    try:
        module = importlib.import_module(BACKEND_MODULES[family])
    except ModuleNotFoundError as exc:
        if not exc.name or exc.name.split(".")[0] == "bncheck":
            raise
        kind, install = _RUNTIMES[family]
        raise ModelLoadError(
            f"this is {kind} model but {exc.name.split('.')[0]} is not installed; install it with {install}."
        ) from exc
    return module.BACKEND


def family_of(fmt: ModelFormat) -> str:
    """The family that reads files of format ``fmt``."""
    return "onnx" if fmt is ModelFormat.ONNX else "torch"


def files_on_disk(path: Path) -> list[Path]:
    """The files a model at ``path`` is made of, before loading it: the file itself and, for
    ONNX, the external-data files it names (so that no output is ever written over them)."""
    if not path.is_file():
        return [path]
    return backend(family_of(sniff_format(path))).files_on_disk(path)


def model_files(model: Path | str | None) -> list[Path]:
    """A model file and the external-data files it names (ONNX), all of them inputs that no
    output may be written over."""
    if model is None or "://" in str(model):
        return []
    try:
        return files_on_disk(Path(model))
    except BncheckError:
        return [Path(model)]  # the model's own loader will say what is wrong with it


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
    try:
        chosen = backend(family_of(fmt))
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

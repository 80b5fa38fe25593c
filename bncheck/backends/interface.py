"""The one interface every model backend implements.

Later stages (rules, drift, fold, recalibrate) only talk to :class:`ModelSource`;
they never ask whether the model came from torch or ONNX.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from bncheck.errors import UsageError
from bncheck.layer import BNLayer

if TYPE_CHECKING:
    from bncheck.backends.runner import InputSpec, ModelRunner


@dataclass
class ModelInfo:
    """What the report says about the model file."""

    path: str
    format: str
    sha256: str
    op_count: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {"path": self.path, "format": self.format, "sha256": self.sha256}
        out["op_count"] = self.op_count
        if self.notes:
            out["notes"] = list(self.notes)
        return out


class ModelSource(ABC):
    """A loaded model, whatever its file format."""

    #: short format name used in reports: onnx, torchscript, export, state_dict, pickle, module
    format: str = ""
    #: backend family: "torch" or "onnx"
    family: str = ""

    def __init__(self, path: Path | None):
        self.path = path
        self.notes: list[str] = []

    @abstractmethod
    def bn_layers(self) -> list[BNLayer]:
        """Every batch-norm layer, in network order."""

    @abstractmethod
    def op_count(self) -> int:
        """Number of ops/modules in the model (for the "no batch-norm layers" message)."""

    def input_spec(self) -> InputSpec:
        """The model input a runner feeds: name, per-sample shape, dtype."""
        raise UsageError(f"a {self.format or 'model'} source cannot be run; drift and recalibrate need a runnable model.")

    def runner(self, *, layers: list[str] | None = None) -> ModelRunner:
        """A :class:`~bncheck.backends.runner.ModelRunner` that runs the model on numpy batches
        and observes the input of the BN layers named in ``layers`` (default: every one); use it
        as a context manager."""
        raise UsageError(f"a {self.format or 'model'} source cannot be run; drift and recalibrate need a runnable model.")

    @cached_property
    def sha256(self) -> str:
        if self.path is None or not Path(self.path).is_file():
            return ""
        return file_sha256(Path(self.path))

    def info(self) -> ModelInfo:
        return ModelInfo(
            path=str(self.path) if self.path is not None else "<in-memory>",
            format=self.format,
            sha256=self.sha256,
            op_count=self.op_count(),
            notes=list(self.notes),
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()

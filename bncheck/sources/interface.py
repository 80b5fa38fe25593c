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

from bncheck.layers import BNLayer


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

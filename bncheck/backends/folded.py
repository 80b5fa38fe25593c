"""The records a fold backend hands back to :func:`bncheck.commands.fold`: the rewritten model and,
per BN layer, what happened to it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: ``folded``: merged into the producer's weights; ``kept``: still a BN (reason says why);
#: ``affine``: not foldable, replaced by a per-channel multiply-add (``--affine``).
FOLD_STATUSES = ("folded", "kept", "affine")


@dataclass
class FoldOutcome:
    """What happened to one BN layer."""

    status: str
    #: the op/module it was folded into (``folded`` only)
    into: str | None = None
    #: why (for ``kept``/``affine``: why it could not be folded)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "into": self.into, "reason": self.reason}


@dataclass
class FoldedModel:
    """A backend's result: the folded model object and the per-layer outcomes."""

    #: onnx.ModelProto, nn.Module (GraphModule or patched copy), ScriptModule or ExportedProgram
    model: Any
    outcomes: dict[str, FoldOutcome]
    notes: list[str] = field(default_factory=list)
    #: backend facts the writer or the report needs (e.g. the state-dict layout)
    extras: dict[str, Any] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes.values() if o.status == status)

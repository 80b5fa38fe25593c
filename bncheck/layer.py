"""The batch-norm layer record that every backend produces and every analysis reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: How ``momentum`` updates the running average:
#: ``pytorch``: running = (1 - m) * running + m * batch (``None`` = cumulative average);
#: ``onnx``: running = m * running + (1 - m) * batch.
MOMENTUM_CONVENTIONS = ("pytorch", "onnx", "unknown")

#: Producer kinds a BN layer can be folded into.
FOLDABLE_PRODUCERS = ("conv", "convtranspose", "linear", "gemm", "matmul")


@dataclass
class BNLayer:
    """One batch-norm layer of a model, as stored (no data involved).

    Arrays are float64 copies of what the model holds (``None`` where the model has none:
    ``weight``/``bias`` without affine parameters, the running statistics without
    ``track_running_stats``).
    """

    name: str
    kind: str
    num_features: int
    eps: float | None
    momentum: float | None
    momentum_convention: str = "pytorch"
    affine: bool = True
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    running_mean: np.ndarray | None = None
    running_var: np.ndarray | None = None
    num_batches_tracked: int | None = None
    #: True/False where the format records a mode (nn.Module.training), None where it does not.
    training: bool | None = None
    #: False when inference normalises with batch statistics (no running stats, ONNX training_mode=1).
    uses_running_stats: bool = True
    #: Name of the op/module that produces the BN input; None when unknown.
    producer: str | None = None
    #: conv | convtranspose | linear | gemm | matmul | input | other; None when unknown.
    producer_kind: str | None = None
    #: True/False, or None when it cannot be decided without the architecture.
    foldable: bool | None = None
    #: Why it can or cannot be folded (one short phrase).
    fold_reason: str = ""
    #: Backend-specific handle: the ONNX tensor name of the BN input, the FX node name...
    input_name: str | None = None
    #: Fields whose value was not stored in the model and was assumed (e.g. eps of a state dict).
    assumed: list[str] = field(default_factory=list)
    #: Free-form backend facts worth showing (e.g. "parameters from Constant nodes").
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_arrays(
        cls, name: str, kind: str, weight: Any, bias: Any, running_mean: Any, running_var: Any, *, eps: Any, momentum: Any, **fields: Any
    ) -> BNLayer:
        """A layer from the values a model holds: the arrays (numpy arrays, torch tensors or
        None) copied as float64 (:func:`as_float64`), ``eps`` as a float (or None), ``momentum``
        as a float when it is a number (else None). Unless ``fields`` give them:
        ``num_features`` is the size of the running mean (else of the weight, else 0), ``affine``
        whether there is a weight, and ``uses_running_stats`` whether both running statistics
        are there and ``training`` is not true."""
        weight, bias, mean, var = (as_float64(a) for a in (weight, bias, running_mean, running_var))
        fields["eps"] = None if eps is None else float(eps)
        fields["momentum"] = float(momentum) if isinstance(momentum, (int, float)) else None
        ref = next((a for a in (mean, weight) if a is not None), None)
        fields.setdefault("num_features", 0 if ref is None else ref.size)
        fields.setdefault("affine", weight is not None)
        fields.setdefault("uses_running_stats", mean is not None and var is not None and not fields.get("training"))
        return cls(name=name, kind=kind, weight=weight, bias=bias, running_mean=mean, running_var=var, **fields)

    @property
    def has_running_stats(self) -> bool:
        return self.running_mean is not None and self.running_var is not None

    def effective_scale(self) -> np.ndarray | None:
        """Per-channel |gamma| / sqrt(running_var + eps): the factor folding multiplies weights by."""
        if not self.has_running_stats or self.eps is None:
            return None
        gamma = np.ones(self.num_features) if self.weight is None else self.weight
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.abs(gamma) / np.sqrt(self.running_var + self.eps)

    def to_dict(self) -> dict[str, Any]:
        """The layer as it appears in the JSON report (contract fields first)."""
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "num_features": int(self.num_features),
            "eps": _num(self.eps),
            "momentum": _num(self.momentum),
            "producer": self.producer,
            "foldable": self.foldable,
            "producer_kind": self.producer_kind,
            "fold_reason": self.fold_reason,
            "affine": self.affine,
            "has_running_stats": self.has_running_stats,
            "uses_running_stats": self.uses_running_stats,
            "num_batches_tracked": self.num_batches_tracked,
            "training": self.training,
            "momentum_convention": self.momentum_convention,
        }
        if self.assumed:
            out["assumed"] = list(self.assumed)
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def _num(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def as_float64(array: Any) -> np.ndarray | None:
    """A float64 numpy copy of an array-like (numpy array, torch tensor), or None."""
    if array is None:
        return None
    if hasattr(array, "detach"):  # torch tensor, without importing torch
        array = array.detach().cpu().double().numpy()
    return np.array(array, dtype=np.float64, copy=True).reshape(-1)

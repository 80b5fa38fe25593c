"""Proof of one folded site on its own, with no model input shape: the math.

A folded site is a producer (conv, transposed conv, linear / Gemm / MatMul) whose output a BN
normalised. Its proof runs the *original* pair (producer, then BN) in float64 and the *folded*
op (the producer with its new weight and bias, as it was written) on the same random input,
and compares them with the error definitions of :mod:`bncheck.numerics.verify`.

The input is built from the producer's own weights and attributes
(:class:`ProducerGeometry`): its input channels (``in_channels = C_in/groups * groups`` for a
conv, ``C_in`` for a transposed one), and for every spatial axis the smallest size the kernel,
dilation and padding accept plus two strides, so that border and interior outputs are both
covered. The backends build the geometry and run the two sides; nothing here imports a model
runtime.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bncheck.numerics.verify import ErrorAccumulator

#: samples in a site proof's random input
PROOF_BATCH = 1
#: producer kinds a site proof knows how to feed
PROOF_KINDS = ("conv", "convtranspose", "linear", "matmul")


def _tuple(values: Sequence[int] | int | None, n: int, default: int) -> tuple[int, ...]:
    if values is None:
        return (default,) * n
    if isinstance(values, int):
        return (int(values),) * n
    out = tuple(int(v) for v in values)
    return out * n if len(out) == 1 and n > 1 else out


@dataclass(frozen=True)
class ProducerGeometry:
    """What a producer's input must look like: kind, input channels and, for a conv, the
    kernel, strides, dilations and padding of every spatial axis."""

    kind: str
    in_channels: int
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    #: total padding per spatial axis (begin + end); ignored when ``same``
    padding: tuple[int, ...] = ()
    #: ``padding="same"`` / ``auto_pad=SAME_*``: any size works
    same: bool = False
    output_padding: tuple[int, ...] = ()

    @classmethod
    def conv(cls, weight_shape: Sequence[int], *, groups: int = 1, transposed: bool = False,
             stride=None, dilation=None, padding=None, same: bool = False, output_padding=None) -> ProducerGeometry:
        """From a conv weight ``(C_out, C_in/g, *k)`` (transposed: ``(C_in, C_out/g, *k)``);
        ``padding``: per axis (``(p, p)`` counted twice) or ONNX ``pads`` (begins, then ends)."""
        shape = tuple(int(d) for d in weight_shape)
        nd = len(shape) - 2
        in_channels = shape[0] if transposed else shape[1] * int(groups)
        if padding is None or isinstance(padding, str):
            pads = (0,) * nd
        else:
            flat = _tuple(padding, nd, 0)
            pads = tuple(flat[i] + flat[i + nd] for i in range(nd)) if len(flat) == 2 * nd else tuple(2 * p for p in flat)
        return cls(
            kind="convtranspose" if transposed else "conv",
            in_channels=in_channels,
            kernel=shape[2:],
            stride=_tuple(stride, nd, 1),
            dilation=_tuple(dilation, nd, 1),
            padding=pads,
            same=same or (isinstance(padding, str) and padding.lower() == "same"),
            output_padding=_tuple(output_padding, nd, 0),
        )

    def input_shape(self, batch: int = PROOF_BATCH) -> tuple[int, ...]:
        """A batch shape the producer accepts (``(N, C_in, *spatial)`` or ``(N, in)``)."""
        if self.kind not in PROOF_KINDS:
            raise ValueError(f"no site proof for a {self.kind} producer")
        return (int(batch), int(self.in_channels), *self.spatial())

    def spatial(self) -> tuple[int, ...]:
        sizes = []
        for i, k in enumerate(self.kernel):
            stride, dilation = self.stride[i], self.dilation[i]
            reach = dilation * (k - 1) + 1
            pad = 0 if self.same else self.padding[i]
            if self.kind == "convtranspose":
                # output (n - 1) * stride - pad + reach + output_padding must be positive
                short = pad - reach - self.output_padding[i]
                sizes.append(max(3, math.ceil(short / stride) + 3))
            else:
                # reflect / replicate padding also needs more input than one side's padding
                sizes.append(max(reach - pad, pad - pad // 2 + 1, 1) + 2 * stride)
        return tuple(sizes)


def random_input(geometry: ProducerGeometry, seed: int = 0, batch: int = PROOF_BATCH) -> np.ndarray:
    """Standard-normal float64 input for ``geometry`` (deterministic for ``seed``)."""
    return np.random.default_rng(seed).standard_normal(geometry.input_shape(batch))


@dataclass
class SiteProof:
    """One folded site checked on its own: original pair (float64) against the folded op."""

    layer: str
    #: the random input's shape (built from the producer's weights and attributes)
    input_shape: tuple[int, ...] | None
    max_abs_err: float | None
    max_rel_err: float | None
    #: True: the folded op matches; False: it does not (the site is kept); None: not proved on
    #: its own (``reason`` says why; whole-model verification covers it)
    passed: bool | None
    #: how the two sides ran (e.g. "torch float64", "onnxruntime vs float64 reference")
    method: str = ""
    #: why the proof failed or could not be run ("" when it passed)
    reason: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape) if self.input_shape is not None else None,
            "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err,
            "passed": self.passed,
            "method": self.method,
            **({"reason": self.reason} if self.reason else {}),
        }

    @classmethod
    def from_dict(cls, layer: str, data: dict[str, Any]) -> SiteProof:
        shape = data.get("input_shape")
        return cls(layer, tuple(shape) if shape is not None else None, data.get("max_abs_err"),
                   data.get("max_rel_err"), data.get("passed"), data.get("method", ""), data.get("reason", ""))


def judge(layer: str, reference: np.ndarray, folded: np.ndarray, *, atol: float, rtol: float,
          input_shape: tuple[int, ...], method: str) -> SiteProof:
    """Compare the original pair's float64 output with the folded op's (``atol + rtol * scale``,
    ``scale = max|reference|``, as whole-model verification does)."""
    acc = ErrorAccumulator()
    acc.add([np.asarray(reference, dtype=np.float64)], [np.asarray(folded, dtype=np.float64)])
    passed = bool(acc.passed(atol, rtol))
    abs_err, rel_err = acc.max_abs(), acc.max_rel()
    reason = ""
    if acc.mismatch:
        reason = acc.mismatch
    elif not passed:
        reason = (
            f"the folded op differs from the original pair on its own (max abs error {abs_err:.3g}, "
            f"max relative error {rel_err:.3g}, above atol {atol:g} + rtol {rtol:g} * scale)"
        )
    return SiteProof(
        layer=layer,
        input_shape=tuple(int(d) for d in input_shape),
        max_abs_err=abs_err if math.isfinite(abs_err) else None,
        max_rel_err=rel_err if math.isfinite(rel_err) else None,
        passed=passed,
        method=method,
        reason=reason,
    )


def unproved(layer: str, reason: str, method: str = "", *, fails: bool = True) -> SiteProof:
    """A site whose proof could not run: it fails (the site is kept) unless ``fails`` is False
    (not provable on its own by construction, e.g. a fold done by the runtime itself)."""
    return SiteProof(layer, None, None, None, False if fails else None, method, reason)


def worst_of(layer: str, parts: list[SiteProof], method: str) -> SiteProof:
    """One proof for a BN folded into several ops (each proved on its own): failed if any
    failed, not proved if any could not run, with the largest errors."""
    failed = [p for p in parts if p.passed is False]
    unknown = [p for p in parts if p.passed is None]
    worst = failed or unknown or parts
    abs_errs = [p.max_abs_err for p in parts if p.max_abs_err is not None]
    rel_errs = [p.max_rel_err for p in parts if p.max_rel_err is not None]
    return SiteProof(
        layer,
        worst[0].input_shape if worst else None,
        max(abs_errs) if abs_errs else None,
        max(rel_errs) if rel_errs else None,
        False if failed else (None if unknown or not parts else True),
        method,
        "; ".join(dict.fromkeys(p.reason for p in worst if p.reason)),
    )

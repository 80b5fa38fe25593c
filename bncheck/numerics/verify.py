"""Comparing a folded model with the original: error figures, the pass criterion, timing.

Pure numpy and the standard library; the backends only hand over output arrays and
callables.

Error figures, per output tensor ``k`` (reference ``a``: the original model; ``b``: the
folded one), accumulated over every verification batch::

    abs_k   = max |a - b|                      (elementwise, over all batches)
    scale_k = max |a|
    rel_k   = abs_k / scale_k                  (0 when both are 0)

``max_abs_err = max_k abs_k`` and ``max_rel_err = max_k rel_k``. The relative error is taken
against the largest reference magnitude of that output, not elementwise: an elementwise
ratio explodes wherever an output happens to be near zero (a ReLU boundary, a logit near
0) although the fold changed nothing there beyond rounding. An output passes when::

    abs_k <= atol + rtol * scale_k

(``numpy.allclose`` with the output's own scale). Defaults: ``atol = rtol = 1e-4`` for
float32/float64 outputs. Folding only reorders float32 rounding (weights change by one
rounding, ~6e-8 relative, and sums are taken in a different order), which in deep
networks accumulates to 1e-7..1e-5 of the output scale; a real folding mistake (wrong
axis, wrong eps, lost bias) moves outputs by a sizeable fraction of their scale. 1e-4
leaves a 10x margin above the first and stays orders of magnitude below the second. For
float16/bfloat16 outputs the defaults are ``1e-2`` (their unit roundoff is ~1e-3).

NaN in the same place of both outputs counts as equal; anywhere else it is an infinite error.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

#: (atol, rtol) by the output's floating-point width.
DEFAULT_TOLERANCES = {"float16": (1e-2, 1e-2), "bfloat16": (1e-2, 1e-2), "float32": (1e-4, 1e-4), "float64": (1e-4, 1e-4)}


def default_tolerances(dtype_name: str) -> tuple[float, float]:
    return DEFAULT_TOLERANCES.get(dtype_name, DEFAULT_TOLERANCES["float32"])


@dataclass
class ErrorAccumulator:
    """Running per-output maxima of ``|a - b|`` and ``|a|`` over verification batches."""

    abs_err: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    mismatch: str | None = None

    def add(self, reference: Sequence[np.ndarray], folded: Sequence[np.ndarray]) -> None:
        if len(reference) != len(folded):
            self.mismatch = f"the folded model returns {len(folded)} outputs, the original {len(reference)}"
            return
        if not self.abs_err:
            self.abs_err = [0.0] * len(reference)
            self.scale = [0.0] * len(reference)
        for k, (a, b) in enumerate(zip(reference, folded, strict=True)):
            a, b = np.asarray(a), np.asarray(b)
            if a.shape != b.shape:
                self.mismatch = f"output {k} has shape {b.shape} after folding, {a.shape} before"
                return
            if a.size == 0:
                continue
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            both_nan = np.isnan(a64) & np.isnan(b64)
            with np.errstate(invalid="ignore"):
                diff = np.abs(a64 - b64)
            diff = np.where(both_nan, 0.0, diff)
            diff = np.where(np.isnan(diff), np.inf, diff)
            finite_a = np.abs(a64[np.isfinite(a64)])
            self.abs_err[k] = max(self.abs_err[k], float(diff.max()))
            if finite_a.size:
                self.scale[k] = max(self.scale[k], float(finite_a.max()))

    def max_abs(self) -> float:
        if self.mismatch:
            return float("inf")
        return max(self.abs_err, default=0.0)

    def max_rel(self) -> float:
        if self.mismatch:
            return float("inf")
        rel = [e / s if s > 0 else (0.0 if e == 0 else float("inf")) for e, s in zip(self.abs_err, self.scale, strict=True)]
        return max(rel, default=0.0)

    def passed(self, atol: float, rtol: float) -> bool:
        if self.mismatch:
            return False
        return all(e <= atol + rtol * s for e, s in zip(self.abs_err, self.scale, strict=True))


def interleaved_timing(
    first: Callable[[], object],
    second: Callable[[], object],
    *,
    budget_s: float = 1.5,
    min_rounds: int = 3,
    max_rounds: int = 50,
) -> dict[str, float]:
    """Median wall time of ``first`` and ``second``, measured alternately (ABBA order, after
    one warm-up call each) so that load from other processes hits both alike.

    Returns ``{"first_ms", "second_ms", "ratio" (first/second), "rounds"}``. Where ``min_rounds``
    rounds would take more than four times ``budget_s`` (a large model on a guessed input
    size), one round is measured: the timing is an extra, it must not cost more than the fold.
    """
    first()
    second()
    t0 = time.perf_counter()
    first()
    second()
    once = max(time.perf_counter() - t0, 1e-6)
    fewest = min_rounds if once * min_rounds <= 4 * budget_s else 1
    rounds = int(min(max_rounds, max(fewest, budget_s / once)))
    a: list[float] = []
    b: list[float] = []
    for r in range(rounds):
        order = ((first, a), (second, b)) if r % 2 == 0 else ((second, b), (first, a))
        for fn, times in order:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    import statistics  # 3 ms a process (decimal, fractions): only when timing

    ma, mb = statistics.median(a), statistics.median(b)
    return {"first_ms": ma * 1e3, "second_ms": mb * 1e3, "ratio": ma / mb if mb > 0 else float("inf"), "rounds": rounds}

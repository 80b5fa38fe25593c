"""Per-sample shapes: whether data fits the model's input, and what to say when it does not.

An expected shape is the model input without the batch axis; ``None`` marks a dynamic axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Shape = tuple[int, ...]
ExpectedShape = tuple[int | None, ...]


def normalize_expected(expected: Sequence[int | str | None] | None) -> ExpectedShape | None:
    """Dynamic axes (None, symbolic names, 0 or negative sizes) become None."""
    if expected is None:
        return None
    out: list[int | None] = []
    for dim in expected:
        out.append(int(dim) if isinstance(dim, (int,)) and not isinstance(dim, bool) and dim > 0 else None)
    return tuple(out)


def fits(shape: Sequence[int], expected: ExpectedShape | None) -> bool:
    """Whether a sample of ``shape`` matches ``expected`` (None axes match anything)."""
    if expected is None:
        return True
    return len(shape) == len(expected) and all(e is None or e == s for s, e in zip(shape, expected, strict=True))


def shape_text(shape: Sequence[int | None] | None) -> str:
    """``(1, 8, 8)``, ``(30,)``, ``(?, 224, 224)``."""
    if shape is None:
        return "(any)"
    dims = ["?" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def mismatch_hint(samples: Shape, expected: ExpectedShape) -> str:
    """A suggestion for data whose per-sample shape ``samples`` does not fit ``expected``:
    a channels-last/channels-first mix-up, a missing or extra axis of size 1, a flattening."""
    n = len(expected)
    if len(samples) == n == 3:
        c, h, w = samples
        if fits((w, c, h), expected):
            return "the data looks channels-last (N, H, W, C) but the model wants channels-first: transpose it, e.g. np.transpose(x, (0, 3, 1, 2))"
        if fits((h, w, c), expected):
            return "the data looks channels-first (N, C, H, W) but the model wants channels-last: transpose it, e.g. np.transpose(x, (0, 2, 3, 1))"
    if len(samples) == n - 1:
        for axis in range(n):
            if expected[axis] in (1, None) and fits(samples[:axis] + (1,) + samples[axis:], expected):
                return f"the data lacks an axis of size 1 at position {axis + 1} of (N, ...): add it, e.g. np.expand_dims(x, {axis + 1})"
    if len(samples) == n + 1:
        for axis in range(len(samples)):
            if samples[axis] == 1 and fits(samples[:axis] + samples[axis + 1 :], expected):
                return f"the data has an extra axis of size 1 at position {axis + 1} of (N, ...): remove it, e.g. np.squeeze(x, {axis + 1})"
    if None not in expected and math.prod(samples) == math.prod(expected):  # type: ignore[arg-type]
        return f"the sizes agree, so reshape it to (N, {', '.join(str(d) for d in expected)})"
    return "give data whose samples have the shape the model expects"

"""How a network splits into the segments of ``recalibrate --method exact``'s layer-by-layer
estimate: the dataflow graph cut just before each *level* of BN layers.

The eval-mode statistics a BN layer sees depend only on the statistics of the BN layers
upstream of it. A layer's *level* is 1 + the highest level among the BN layers its input
depends on (1 for layers that only the data feeds), so the layers of level 1 can be estimated
first, then, with their statistics fixed, those of level 2, and so on: the estimate of every
level is final once it is made (no fixed-point iteration).

Every op gets a *stage*: the highest level its inputs depend on, a BN op of the estimated
layers one more than its input. Segment ``k`` is the ops of stage ``k``; the *frontier*
entering segment ``k`` is every data value of a lower stage that an op of stage ``k`` or
later reads (the inputs of the level-``k`` layers among them). Running segment ``k`` on the
frontier ``k`` gives the frontier ``k + 1``, so a pass over DATA can keep the frontier of
every batch and the next level runs only its own segment. Static values (weights,
constants, ops of nothing but those) belong to no stage: each segment recomputes those it
reads.

Backends describe their graph as :class:`Op` records in topological order; this module
knows nothing of torch or ONNX.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Op:
    """One op of the graph: the values it reads and writes, and the estimated BN layer it is
    (None for every other op, BN layers that are not estimated included)."""

    key: Hashable
    inputs: tuple[Hashable, ...]
    outputs: tuple[Hashable, ...]
    layer: str | None = None


@dataclass
class StagePlan:
    """The cut of a graph into segments (see the module docstring)."""

    #: ``levels[k - 1]``: the estimated layers of level ``k``, in graph order
    levels: list[list[str]]
    #: ``segments[k]``: the keys of the ops of stage ``k`` in graph order, k = 0 .. depth
    segments: list[list[Hashable]]
    #: ``frontiers[k]``: the values entering segment ``k`` (``frontiers[0]``: the data inputs)
    frontiers: list[list[Hashable]]
    #: the ops of no stage (static), in graph order
    static: list[Hashable] = field(default_factory=list)
    #: layer -> the value its BN op normalises (a member of the frontier of its level)
    bn_input: dict[str, Hashable] = field(default_factory=dict)
    #: the graph's outputs that data feeds, when asked for: then ``frontiers[depth + 1]``, which
    #: the last segment (the deepest level and everything after it) computes
    outputs: list[Hashable] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return len(self.levels)

    def produced(self, k: int) -> list[Hashable]:
        """The members of ``frontiers[k + 1]`` that segment ``k`` computes (the others pass
        through from ``frontiers[k]``)."""
        if k + 1 >= len(self.frontiers):
            return []
        passing = set(self.frontiers[k])
        return [v for v in self.frontiers[k + 1] if v not in passing]


def plan_stages(ops: list[Op], data_inputs: list[Hashable], outputs: tuple[Hashable, ...] = ()) -> StagePlan:
    """Stages, levels, segments and frontiers of the graph of ``ops`` (topological order) fed by
    ``data_inputs``. Values no op writes and that are not data inputs are static. ``outputs``:
    the graph's outputs, carried to a last frontier (:attr:`StagePlan.outputs`)."""
    stage: dict[Hashable, int] = dict.fromkeys(data_inputs, 0)
    op_stage: dict[Hashable, int] = {}
    static: list[Hashable] = []
    levels: dict[int, list[str]] = {}
    bn_input: dict[str, Hashable] = {}
    for op in ops:
        data = [stage[v] for v in op.inputs if v in stage]
        if not data and op.layer is None:
            static.append(op.key)
            continue
        s = max(data, default=0)
        if op.layer is not None:
            bn_input[op.layer] = op.inputs[0]
            s += 1
            levels.setdefault(s, []).append(op.layer)
        op_stage[op.key] = s
        for v in op.outputs:
            stage[v] = s
    depth = max(levels, default=0)
    segments: list[list[Hashable]] = [[] for _ in range(depth + 1)]
    for op in ops:
        if op.key in op_stage:
            segments[op_stage[op.key]].append(op.key)
    # the latest stage that reads each data value
    last_read: dict[Hashable, int] = {}
    for op in ops:
        if op.key not in op_stage:
            continue
        for v in op.inputs:
            if v in stage:
                last_read[v] = max(last_read.get(v, -1), op_stage[op.key])
    ends = [v for v in dict.fromkeys(outputs) if v in stage]
    for v in ends:  # read after the last segment: carried to the end
        last_read[v] = depth + 1
    frontiers: list[list[Hashable]] = [list(data_inputs)]
    order = {v: i for i, v in enumerate(stage)}  # first write order: deterministic
    for k in range(1, depth + 1):
        frontiers.append(sorted((v for v, s in stage.items() if s < k and last_read.get(v, -1) >= k), key=order.__getitem__))
    if ends:
        frontiers.append(ends)
    return StagePlan(
        levels=[levels.get(k, []) for k in range(1, depth + 1)], segments=segments, frontiers=frontiers, static=static,
        bn_input=bn_input, outputs=ends,
    )  # fmt: skip

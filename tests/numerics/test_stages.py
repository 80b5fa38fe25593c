"""The cut of a dataflow graph into BN levels: a residual block, a parallel (downsample)
branch, and static ops recomputed per segment."""

from __future__ import annotations

from bncheck.numerics.stages import Op, plan_stages


def _ops():
    # x -> conv1 -> bn1 -> relu -> conv2 -> bn2 -+-> add -> relu2 -> conv3 -> bn3
    # x -> convd -> bnd ---------------------------'            w (static) -'
    return [
        Op("conv1", ("x", "w1"), ("c1",)),
        Op("bn1", ("c1", "s1"), ("b1",), "bn1"),
        Op("relu", ("b1",), ("r1",)),
        Op("conv2", ("r1",), ("c2",)),
        Op("bn2", ("c2",), ("b2",), "bn2"),
        Op("convd", ("x",), ("cd",)),
        Op("bnd", ("cd",), ("bd",), "bnd"),
        Op("add", ("b2", "bd"), ("s",)),
        Op("weight", ("w0",), ("w",)),  # reads only constants: static
        Op("relu2", ("s",), ("r2",)),
        Op("conv3", ("r2", "w"), ("c3",)),
        Op("bn3", ("c3",), ("b3",), "bn3"),
    ]


def test_levels_follow_the_longest_chain_of_bn_layers():
    plan = plan_stages(_ops(), ["x"])
    assert plan.levels == [["bn1", "bnd"], ["bn2"], ["bn3"]]
    assert plan.bn_input == {"bn1": "c1", "bn2": "c2", "bnd": "cd", "bn3": "c3"}
    assert plan.static == ["weight"]


def test_frontiers_carry_every_value_a_later_segment_reads():
    plan = plan_stages(_ops(), ["x"])
    assert plan.segments == [["conv1", "convd"], ["bn1", "relu", "conv2", "bnd"], ["bn2", "add", "relu2", "conv3"], ["bn3"]]
    assert plan.frontiers == [["x"], ["c1", "cd"], ["c2", "bd"], ["c3"]]
    # bd passes nothing through: segment 1 computes both members of the next frontier
    assert plan.produced(1) == ["c2", "bd"] and plan.produced(3) == []


def test_a_value_read_two_levels_later_passes_through():
    ops = [
        Op("bn1", ("x",), ("b1",), "bn1"),
        Op("f", ("b1",), ("y",)),
        Op("bn2", ("y",), ("b2",), "bn2"),
        Op("g", ("b2", "x"), ("z",)),
        Op("bn3", ("z",), ("b3",), "bn3"),
    ]
    plan = plan_stages(ops, ["x"])
    assert plan.levels == [["bn1"], ["bn2"], ["bn3"]]
    assert plan.frontiers == [["x"], ["x"], ["x", "y"], ["z"]]
    assert plan.produced(0) == [] and plan.produced(1) == ["y"]


def test_outputs_are_carried_to_a_last_frontier_the_deepest_segment_computes():
    """With the graph's outputs asked for, the deepest segment (bn3 and what follows) computes
    them into ``frontiers[depth + 1]``; an output made early (r1, read by nothing after level 1)
    is carried through every frontier to it. The other frontiers gain nothing else."""
    ops = [*_ops(), Op("head", ("b3",), ("y",))]
    plan = plan_stages(ops, ["x"], outputs=("y", "r1", "w1"))  # w1: static, no data value
    assert plan.outputs == ["y", "r1"]
    assert plan.frontiers == [["x"], ["c1", "cd"], ["r1", "c2", "bd"], ["r1", "c3"], ["y", "r1"]]
    assert plan.segments[-1] == ["bn3", "head"] and plan.produced(3) == ["y"]
    assert plan_stages(ops, ["x"]).frontiers == [["x"], ["c1", "cd"], ["c2", "bd"], ["c3"]]

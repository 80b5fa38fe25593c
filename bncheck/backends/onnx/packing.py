"""The one packed output of the one-pass layers: the per-sample means of every one-pass layer,
then their mean squares, concatenated into one ``(N, 2 * channels)`` output (one fetch and one
vectorised float64 step per batch instead of two per layer)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bncheck.backends.onnx.naming import NameMaker
from bncheck.backends.onnx.one_pass import one_pass_statistics


@dataclass(frozen=True)
class Packing:
    """Where the one-pass layers' moments sit in the packed output, and their shifts."""

    output: str = ""
    #: layer -> its channels' slice of the packed means (and of the packed squares after them)
    layers: dict[str, slice] = field(default_factory=dict)
    shift: np.ndarray = field(default_factory=lambda: np.zeros(0))
    signs: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def statistics(self, packed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-channel mean and population variance of X and the off-centre flags, for every
        packed channel, from the ``(N, 2 * channels)`` packed output."""
        total = self.shift.size
        m = packed[:, :total].mean(axis=0, dtype=np.float64)
        q = packed[:, total:].mean(axis=0, dtype=np.float64)
        return one_pass_statistics(m, q, self.shift, self.signs)


@dataclass(frozen=True)
class PackedLayer:
    """One layer's part of the packed output."""

    #: its per-sample means and mean squares (the first two of its stats outputs)
    mean: str
    square: str
    channels: int
    shift: np.ndarray
    signs: np.ndarray


def pack(layers: dict[str, PackedLayer], names: NameMaker, inits: list) -> tuple[list[onnx.NodeProto], Packing]:
    """Nodes concatenating the layers' flattened means, then their squares, and the
    :class:`Packing` that reads them back (empty with no layers)."""
    if not layers:
        return [], Packing()
    prefix = names.prefix("packed")
    inits.append(numpy_helper.from_array(np.array([0, -1], np.int64), prefix + "flat"))
    nodes, means, squares, slices, offset = [], [], [], {}, 0
    for name, layer in layers.items():
        for value, into in ((layer.mean, means), (layer.square, squares)):
            nodes.append(helper.make_node("Reshape", [value, prefix + "flat"], [value + "/flat"]))
            into.append(value + "/flat")
        slices[name] = slice(offset, offset + layer.channels)
        offset += layer.channels
    nodes.append(helper.make_node("Concat", means + squares, [prefix + "all"], axis=1))
    packing = Packing(
        output=prefix + "all",
        layers=slices,
        shift=np.concatenate([layer.shift for layer in layers.values()]).astype(np.float64),
        signs=np.concatenate([layer.signs for layer in layers.values()]).astype(np.float64),
    )
    return nodes, packing

"""``Backend.cut_cost``: the multiply-adds of the network up to a few BN layers and of the whole
forward pass, which keep BN103's re-measured layers near the input. Checked against the
multiply-adds counted by hand for a small CNN, the ONNX count (shape inference) against torch's
own ``FlopCounterMode`` on the same model exported, and on PP-OCR's recogniser, whose second BN
node sits at the end of its backbone: the diagnosis there re-measures the first layer only."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from bncheck.backends.load import backend_for
from bncheck.backends.onnx.bn_nodes import bn_node_indices
from bncheck.backends.onnx.cost import multiply_adds
from bncheck.backends.onnx.source import OnnxSource
from bncheck.backends.torch.source import TorchModuleSource
from bncheck.commands import drift_diagnosis
from bncheck.commands.drift import _verify_layers
from tests.support import real_models as rm
from tests.support.fold_fixtures import export_keeping_bn


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    ).eval()  # fmt: skip


#: multiply-adds of one 3x16x16 sample, by hand: each output element of a conv is C_in * k * k
STEM = 8 * 16 * 16 * 3 * 9
SECOND = 16 * 8 * 8 * 8 * 9
THIRD = 16 * 8 * 8 * 16 * 9
LINEAR = 10 * 16 * 8 * 8
WHOLE = STEM + SECOND + THIRD + LINEAR


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    model = _cnn()
    path = export_keeping_bn(model, torch.rand(1, 3, 16, 16), tmp_path_factory.mktemp("cut") / "cnn.onnx")
    proto = onnx.load(str(path))
    return TorchModuleSource(model, path=None, format="module"), OnnxSource(proto, path=None), proto


def test_the_onnx_count_is_the_hand_count(sources):
    proto = sources[2]
    assert multiply_adds(proto, (1, 3, 16, 16)) == WHOLE
    assert multiply_adds(proto, (4, 3, 16, 16)) == 4 * WHOLE


def test_onnx_and_torch_agree_with_the_hand_count_on_every_cut(sources):
    torch_source, onnx_source, proto = sources
    torch_layers = ["1", "4", "7"]
    onnx_layers = list(bn_node_indices(proto.graph))
    assert len(onnx_layers) == 3
    sample = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    for k, expected in ((1, STEM), (2, STEM + SECOND), (3, STEM + SECOND + THIRD)):
        assert backend_for(onnx_source).cut_cost(onnx_source, onnx_layers[:k], sample) == (expected, WHOLE)
        assert backend_for(torch_source).cut_cost(torch_source, torch_layers[:k], sample) == (expected, WHOLE)


def test_the_verified_layers_stop_where_the_cut_gets_costly(sources, monkeypatch):
    torch_source, onnx_source, proto = sources
    sample = np.zeros((1, 3, 16, 16), np.float32)
    names = list(bn_node_indices(proto.graph))
    assert _verify_layers(backend_for(onnx_source), onnx_source, names, sample) == names  # cheap in itself
    monkeypatch.setattr(drift_diagnosis, "CHEAP_VERIFY_MACS", 0)
    assert _verify_layers(backend_for(onnx_source), onnx_source, names, sample) == names[:1]  # 37% up to the second
    monkeypatch.setattr(drift_diagnosis, "MAX_VERIFY_SHARE", 1.0)
    assert _verify_layers(backend_for(onnx_source), onnx_source, names, sample) == names
    monkeypatch.setattr(drift_diagnosis, "MAX_VERIFY_SHARE", (STEM + SECOND) / WHOLE)
    assert _verify_layers(backend_for(onnx_source), onnx_source, names, sample) == names[:2]
    assert _verify_layers(backend_for(torch_source), torch_source, ["1", "4", "7"], sample) == ["1", "4"]
    monkeypatch.setattr(drift_diagnosis, "MAX_VERIFY_SHARE", 0.0)
    assert _verify_layers(backend_for(onnx_source), onnx_source, names, sample) == names[:1]  # the nearest always


def test_ppocr_recogniser_verifies_on_its_first_layer_only():
    try:
        proto = onnx.load(str(rm.model_file(rm.PPOCR_REC)))
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    source = OnnxSource(proto, path=None)
    names = list(bn_node_indices(proto.graph))
    sample = np.zeros((1, 3, 48, 320), np.float32)
    backend = backend_for(source)
    stem, whole = backend.cut_cost(source, names[:1], sample)
    backbone, _ = backend.cut_cost(source, names[:2], sample)
    assert stem < 0.01 * whole and backbone > 0.9 * whole > drift_diagnosis.CHEAP_VERIFY_MACS  # the next BN ends the backbone
    assert _verify_layers(backend, source, names, sample) == names[:1]


def test_where_torch_cannot_count_there_is_no_figure_and_the_layers_stay(sources, monkeypatch):
    torch_source = sources[0]

    class Refusing:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("no counter for this op")

    monkeypatch.setattr("bncheck.backends.torch.backend.FlopCounterMode", Refusing)
    sample = np.zeros((1, 3, 16, 16), np.float32)
    backend = backend_for(torch_source)
    assert backend.cut_cost(torch_source, ["1", "4"], sample) is None
    monkeypatch.setattr(drift_diagnosis, "CHEAP_VERIFY_MACS", 0)
    assert _verify_layers(backend, torch_source, ["1", "4", "7"], sample) == ["1", "4", "7"]

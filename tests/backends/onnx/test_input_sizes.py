"""Dynamic input axes made concrete for verification: the graph's stride and metadata hints,
onnxruntime as the judge, the folded model keeping its dynamic axes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from bncheck.backends.onnx.input_sizes import flatten_sizes, metadata_sizes, total_strides
from bncheck.commands.fold import fold

RNG = np.random.default_rng(0)


def _pyramid(torch):
    """A feature-pyramid-like net: a stride-8 branch upsampled back and added to a stride-1
    one, so that only sides that are multiples of 8 run."""
    nn = torch.nn

    class Pyramid(nn.Module):
        def __init__(self):
            super().__init__()
            self.down = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8))
            self.skip = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8))
            self.up = nn.Upsample(scale_factor=8, mode="nearest")

        def forward(self, x):
            return self.skip(x) + self.up(self.down(x))

    return Pyramid()


def _export_dynamic(torch, model, example, path, *, metadata=None):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17, do_constant_folding=False,
                          training=torch.onnx.TrainingMode.PRESERVE, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n"}})
    if metadata:
        proto = onnx.load(str(path))
        onnx.helper.set_model_props(proto, metadata)
        onnx.save(proto, str(path))
    return path


def _dims(path) -> list:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def test_stride_is_read_from_the_graph(tmp_path, randomize_bn):
    torch = pytest.importorskip("torch")
    path = _export_dynamic(torch, randomize_bn(_pyramid(torch)), torch.randn(1, 3, 32, 32), tmp_path / "p.onnx")
    assert total_strides(onnx.load(str(path))) == [8, 8]


def _why(report) -> str:
    """Why the whole-model verification used the inputs it did (the sizes chosen for dynamic axes)."""
    return report.extras["verification"]["inputs_used"]["why"]


def test_dynamic_axes_fold_without_flags_and_stay_dynamic(tmp_path, randomize_bn, ort_run):
    torch = pytest.importorskip("torch")
    path = _export_dynamic(torch, randomize_bn(_pyramid(torch)), torch.randn(1, 3, 32, 32), tmp_path / "p.onnx")
    out = tmp_path / "f.onnx"
    report = fold(path, out, timing=False)
    assert report.extras["verification"]["passed"] is True
    assert report.extras["fold"]["layers_folded"] == 3
    note = _why(report)  # said once, on the verification-inputs line (not again as a note)
    assert "dynamic input axes" in note and "stride 8x8" in note and "(?, 3, 32, 32)" in note
    assert not any("dynamic input axes" in n for n in report.notes)
    assert _dims(out) == ["n", 3, "h", "w"]
    x = RNG.standard_normal((2, 3, 40, 56)).astype(np.float32)  # another size the model accepts
    (ref,), (got,) = ort_run(path, x), ort_run(out, x)
    assert np.abs(ref - got).max() <= 1e-5 * np.abs(ref).max()


def _flatten_net(torch, side, width=None, *, relu=False):
    """Conv -> BN -> Flatten (-> ReLU) -> Linear: only (side, width) inputs run."""
    nn = torch.nn
    width = side if width is None else width
    tail = [nn.ReLU()] if relu else []
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), *tail, nn.Linear(4 * side * width, 5))


def test_metadata_names_the_size_a_flatten_needs(tmp_path, randomize_bn):
    torch = pytest.importorskip("torch")
    model = randomize_bn(_flatten_net(torch, 40))
    path = _export_dynamic(torch, model, torch.randn(1, 3, 40, 40), tmp_path / "m.onnx", metadata={"input_shape": "1,3,40,40"})
    assert metadata_sizes(onnx.load(str(path))) == [(1, 3, 40, 40)]
    report = fold(path, tmp_path / "f.onnx", timing=False)
    assert report.extras["fold"]["layers_folded"] == 1 and report.extras["verification"]["passed"] is True
    assert "the model metadata" in _why(report) and "(?, 3, 40, 40)" in _why(report)


def test_usual_sizes_are_tried_after_the_stride(tmp_path, randomize_bn):
    torch = pytest.importorskip("torch")
    net = _flatten_net(torch, 224, relu=True)  # a ReLU between Flatten and Gemm hides the width
    path = _export_dynamic(torch, randomize_bn(net), torch.randn(1, 3, 224, 224), tmp_path / "m.onnx")
    report = fold(path, tmp_path / "f.onnx", timing=False)
    assert "the usual image sizes" in _why(report) and "(?, 3, 224, 224)" in _why(report)


def test_a_flatten_into_gemm_names_the_size_it_takes(tmp_path, randomize_bn):
    torch = pytest.importorskip("torch")
    path = _export_dynamic(torch, randomize_bn(_flatten_net(torch, 37)), torch.randn(1, 3, 37, 37), tmp_path / "m.onnx")
    assert flatten_sizes(onnx.load(str(path))) == [(37, 37)]
    report = fold(path, tmp_path / "f.onnx", timing=False)
    assert "Flatten -> Gemm" in _why(report) and "(?, 3, 37, 37)" in _why(report), _why(report)


def test_no_accepted_size_falls_back_to_site_proofs_and_says_what_was_tried(tmp_path, randomize_bn, cli):
    torch = pytest.importorskip("torch")
    path = _export_dynamic(torch, randomize_bn(_flatten_net(torch, 37, 41)), torch.randn(1, 3, 37, 41), tmp_path / "m.onnx")
    result = cli("fold", path, "--out", tmp_path / "f.onnx", "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    why = report["verification"]["inputs_used"]["why"]
    assert "no input size bncheck tried runs the model" in why and "(?, 3, 224, 224)" in why and "--input-shape" in why
    assert report["fold"]["layers_folded"] == 1
    ok = cli("fold", path, "--out", tmp_path / "g.onnx", "--input-shape", "2,3,37,41", "--no-timing")
    assert ok.exit_code == 0, ok.stdout
    assert _dims(tmp_path / "g.onnx") == ["n", 3, "h", "w"]


def test_a_dynamic_channel_axis_takes_the_first_layers_width(tmp_path, randomize_bn):
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = randomize_bn(nn.Sequential(nn.Conv2d(5, 4, 3, stride=2, padding=1, groups=1), nn.BatchNorm2d(4), nn.ReLU()))
    path = tmp_path / "c.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 5, 16, 16),), str(path), dynamo=False, opset_version=17,
                          do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE, input_names=["x"],
                          dynamic_axes={"x": {0: "n", 1: "c", 2: "h", 3: "w"}})
    report = fold(path, tmp_path / "f.onnx", timing=False)
    assert report.extras["fold"]["layers_folded"] == 1
    assert "(?, 5, 32, 32)" in _why(report), _why(report)

"""BN103 on a real trained model from a public wheel (requirements/models.txt): PP-OCR's text-line
direction classifier (rapidocr-onnxruntime, ONNX, 3x48x192 BGR input, trained on
``(pixel / 255 - 0.5) / 0.5``). Text-line PNGs fed with its own preprocessing, then with the
normalisation forgotten (plain 0-1 pixels instead of [-1, 1]): BN103 must name a fix in the
user's options that, applied by running drift again with it, brings the first BN layer's drift
back to the figure of the correct preprocessing. The first layer's figures are checked against
an independent float64 reference: onnxruntime on the graph with the first BN layer's input
added as an output, on the PNGs decoded and normalised here with numpy."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from typer.testing import CliRunner

from bncheck.cli.app import app
from tests.commands.test_drift_real_models import _text_image
from tests.support import real_models as rm

CORRECT = ["--channel-order", "bgr", "--mean", "0.5", "--std", "0.5"]
FORGOTTEN = ["--channel-order", "bgr"]  # 0-1 pixels: the model sees [0, 1] instead of [-1, 1]


@pytest.fixture(scope="module")
def cls_lines(tmp_path_factory) -> tuple[Path, Path]:
    try:
        model = rm.model_file(rm.PPOCR_CLS)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    folder = tmp_path_factory.mktemp("lines")
    rng = np.random.default_rng(7)
    for i in range(40):
        Image.fromarray(_text_image(rng, 48, 192, 1)).save(folder / f"{i:03d}.png")
    return model, folder


def drift(model: Path, data: Path, *extra: str) -> dict:
    result = CliRunner().invoke(app, ["drift", str(model), str(data), "-f", "json", "--mismatch-samples", "0", "-b", "20", *extra])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def _reference(model: Path, folder: Path, mean: np.ndarray, std: np.ndarray) -> tuple[float, float]:
    """(mean |z|, mean |r|) of the first BatchNormalization node's input in float64, from
    onnxruntime on the PNGs read with PIL, turned BGR, / 255, then (x - mean) / std."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(model)))
    bn = next(node for node in graph.graph.node if node.op_type == "BatchNormalization")
    info = next(v for v in graph.graph.value_info if v.name == bn.input[0])
    graph.graph.output.append(info)
    inits = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in graph.graph.initializer}
    for node in graph.graph.node:  # this export stores the statistics as Constant nodes
        if node.op_type == "Constant":
            inits[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t).astype(np.float64)
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    running_mean, running_var = inits[bn.input[3]], inits[bn.input[4]]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"))[:, :, ::-1] for p in sorted(folder.glob("*.png"))])
    x = ((pixels.astype(np.float64) / 255.0 - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run([bn.input[0]], {session.get_inputs()[0].name: x})[0].astype(np.float64)
    mu, var = y.mean(axis=(0, 2, 3)), y.var(axis=(0, 2, 3))
    z = np.abs(mu - running_mean) / np.sqrt(running_var + eps)
    r = np.abs(np.log((var + eps) / (running_var + eps)))
    return float(z.mean()), float(r.mean())


def _figures(report: dict) -> tuple[float, float]:
    d = report["layers"][0]["drift"]
    return d["mean_shift"]["mean"], d["var_log_ratio"]["mean"]


def _floats(options: str, name: str) -> np.ndarray:
    words = shlex.split(options)
    return np.array([float(v) for v in words[words.index(name) + 1].split(",")])


def test_a_forgotten_normalisation_on_ppocr_cls_is_fixed_by_the_suggestion(cls_lines):
    model, folder = cls_lines
    correct = drift(model, folder, *CORRECT)
    assert not [f for f in correct["findings"] if f["rule"] == "BN103"]
    ref = _reference(model, folder, np.full(3, 0.5), np.full(3, 0.5))
    np.testing.assert_allclose(_figures(correct), ref, rtol=1e-3)

    wrong = drift(model, folder, *FORGOTTEN)
    (finding,) = [f for f in wrong["findings"] if f["rule"] == "BN103"]
    diagnosis = wrong["drift"]["input_diagnosis"]
    best = diagnosis["best"]
    assert best["options"] and f"try `{best['options']}`" in finding["message"]
    np.testing.assert_allclose(_figures(wrong), _reference(model, folder, np.zeros(3), np.ones(3)), rtol=1e-3)
    # one quantity before -> after: the first layer's drift score, the headline's figure
    before = wrong["layers"][0]["drift"]["score"]
    assert np.isclose(diagnosis["baseline_first_layer"], before, rtol=1e-3)  # the subsample is all 40 samples
    assert f"goes from {before:.3g} to {best['first_layer_score']:.3g}" in finding["message"]
    assert before > 10 * correct["layers"][0]["drift"]["score"]
    # the [-1, 1] candidate, made in pixel space, is the model's own preprocessing: re-measured
    # by the diagnosis it gives the correct run's first-layer figure
    (half,) = [c for c in diagnosis["candidates"] if c["description"].startswith("pixels scaled to [-1, 1]")]
    assert np.isclose(half["first_layer_score"], correct["layers"][0]["drift"]["score"], rtol=1e-3)

    fixed = drift(model, folder, *FORGOTTEN, *shlex.split(best["options"]))
    assert not [f for f in fixed["findings"] if f["rule"] == "BN103"]
    # the fix brings the first layer back to (or below) the correct preprocessing's drift...
    assert fixed["layers"][0]["drift"]["score"] <= correct["layers"][0]["drift"]["score"] + 0.01
    ref_fixed = _reference(model, folder, _floats(best["options"], "--mean"), _floats(best["options"], "--std"))
    np.testing.assert_allclose(_figures(fixed), ref_fixed, rtol=1e-3, atol=1e-4)
    assert ref_fixed[0] <= ref[0] + 0.05 and ref_fixed[1] <= ref[1] + 0.05
    # ...as the diagnosis said it would
    assert np.isclose(fixed["layers"][0]["drift"]["score"], best["first_layer_score"], rtol=0.05, atol=2e-3)


def test_the_stated_expectation_is_in_pixel_units_and_matches_the_suggestion(cls_lines):
    """What the model expects and what DATA has are said in the units of --mean/--std (pixels
    after --scale): DATA's figure is the pixels' own mean (numpy on the PNGs), and the
    suggested --mean/--std take DATA's pixel mean to the expected one under the current options."""
    model, folder = cls_lines
    wrong = drift(model, folder, "--channel-order", "bgr", "--mean", "0.1", "--std", "2")
    (finding,) = [f for f in wrong["findings"] if f["rule"] == "BN103"]
    pixels = wrong["drift"]["input_diagnosis"]["inference"]["pixels"]
    assert pixels["under"] == {"mean": [0.1] * 3, "std": [2.0] * 3}
    assert "in pixels after --scale (the units of --mean/--std), the model expects mean ≈" in finding["message"]
    assert "under the current `--mean 0.1,0.1,0.1 --std 2,2,2`" in finding["message"]
    q = np.stack([np.asarray(Image.open(p).convert("RGB"))[:, :, ::-1] for p in sorted(folder.glob("*.png"))]) / 255.0
    np.testing.assert_allclose(pixels["data"]["mean"], q.mean(axis=(0, 1, 2)), rtol=1e-3)
    np.testing.assert_allclose(pixels["data"]["std"], q.std(axis=(0, 1, 2)), rtol=1e-3)
    suggested = wrong["drift"]["input_diagnosis"]["inference"]["suggested"]  # the inferred --mean/--std
    expected_input = (np.array(pixels["expected"]["mean"]) - 0.1) / 2.0
    suggested_input = (np.array(pixels["data"]["mean"]) - np.array(suggested["mean"])) / np.array(suggested["std"])
    np.testing.assert_allclose(suggested_input, expected_input, rtol=1e-3, atol=1e-3)

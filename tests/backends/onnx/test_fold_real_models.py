"""The real PP-OCRv4 models (requirements/models.txt): ``bncheck fold`` with no flags folds every
BN, keeps the dynamic axes, and the folded model matches the original on real-size inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from bncheck.commands.fold import fold
from tests.support import real_models as rm

#: (model, the input size its pipeline feeds: rapidocr's det limit, rec and cls sizes)
CASES = [(rm.PPOCR_DET, (1, 3, 640, 640)), (rm.PPOCR_REC, (1, 3, 48, 320)), (rm.PPOCR_CLS, (1, 3, 48, 192))]


@pytest.mark.parametrize(("model", "real_size"), CASES, ids=["det", "rec", "cls"])
def test_ppocr_folds_every_bn_without_flags(tmp_path, model, real_size, ort_run):
    path = rm.model_file(model)
    out = tmp_path / "folded.onnx"
    report = fold(path, out, timing=False)
    assert report.extras["fold"]["layers_kept"] == 0 and report.extras["fold"]["layers_folded"] > 0
    assert report.extras["verification"]["passed"] is True
    assert "dynamic input axes sized" in report.extras["verification"]["inputs_used"]["why"]
    assert not any("dynamic input axes sized" in n for n in report.notes)  # said once, not twice
    folded = onnx.load(str(out))
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    assert folded.graph.input[0].type == onnx.load(str(path)).graph.input[0].type  # still (?, 3, ?, ?)
    # an image-like input (values of a normalised photo) at the size the OCR pipeline uses
    x = ((np.random.default_rng(0).uniform(0, 1, real_size) - 0.5) / 0.5).astype(np.float32)
    (ref,), (got,) = ort_run(path, x), ort_run(out, x)
    assert np.abs(ref - got).max() <= 1e-4 * np.abs(ref).max() + 1e-6

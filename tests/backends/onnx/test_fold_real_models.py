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


def test_a_check_that_passes_on_atol_alone_says_so(tmp_path):
    """PP-OCR's detector maps the random verification inputs to a near-zero probability map:
    its whole-model check passes on atol with a relative error far above rtol. The terminal
    line says the check passed on atol alone and points at the site proofs and --verify DATA;
    the classifier's check (relative error within rtol) says nothing of the kind."""
    from bncheck.formats import get_renderer

    det = fold(rm.model_file(rm.PPOCR_DET), tmp_path / "det.onnx", timing=False)
    v = det.extras["verification"]
    assert v["passed"] is True and v["max_rel_err"] > 1e-4  # rtol's default
    text = get_renderer("table")(det, color=False, width=400)
    line = next(line for line in text.splitlines() if line.startswith("verification: passed"))
    assert "passed on atol alone: the outputs on these inputs are near zero" in line and "--verify DATA" in line
    cls = fold(rm.model_file(rm.PPOCR_CLS), tmp_path / "cls.onnx", timing=False)
    assert cls.extras["verification"]["max_rel_err"] <= 1e-4
    assert "atol alone" not in get_renderer("table")(cls, color=False, width=400)

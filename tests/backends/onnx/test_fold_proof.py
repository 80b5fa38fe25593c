"""ONNX site proofs on real graphs: a correct fold passes, a tampered folded weight fails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from bncheck.backends.onnx.fold_proof import prove_sites
from bncheck.commands.fold import fold

SAMPLES = Path(__file__).resolve().parents[3] / "sample_models"


def test_tampered_fold_fails_its_site_proof(tmp_path):
    src = SAMPLES / "digits_cnn.onnx"
    report = fold(src, tmp_path / "f.onnx", timing=False)
    assert report.extras["fold"]["site_proofs"] == {"passed": 3, "failed": 0, "not_proved": 0}
    original, folded = onnx.load(str(src)), onnx.load(str(tmp_path / "f.onnx"))
    names = ["/bn1/BatchNormalization", "/bn2/BatchNormalization", "/bn3/BatchNormalization"]
    assert all(p.passed for p in prove_sites(original, folded, names, atol=1e-4, rtol=1e-4).values())
    conv2 = next(n for n in folded.graph.node if n.name == "/conv2/Conv")
    init = next(i for i in folded.graph.initializer if i.name == conv2.input[1])
    w = numpy_helper.to_array(init).copy()
    w[3] *= 1.01  # one output channel off by 1%
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    proofs = prove_sites(original, folded, names, atol=1e-4, rtol=1e-4)
    assert proofs["/bn2/BatchNormalization"].passed is False
    assert proofs["/bn1/BatchNormalization"].passed and proofs["/bn3/BatchNormalization"].passed
    assert proofs["/bn2/BatchNormalization"].max_rel_err > 1e-3
    assert np.isfinite(proofs["/bn2/BatchNormalization"].max_abs_err)


def test_the_table_lists_only_the_sites_that_did_not_pass(tmp_path):
    """A passing fold of a 35-BN model printed 35 "passed" lines after the summary line that
    already counts them; the sites that fail are the ones to show."""
    import dataclasses

    report = fold(SAMPLES / "digits_cnn.onnx", tmp_path / "f.onnx", timing=False)
    table = report.render("table", width=120)
    assert "site proofs: 3 passed" in table and ": passed: max abs error" not in table
    proofs = report.result.site_proofs
    proofs["/bn2/BatchNormalization"] = dataclasses.replace(proofs["/bn2/BatchNormalization"], passed=False, reason="differs")
    table = report.render("table", width=120)
    listed = [line.strip() for line in table.splitlines() if line.startswith("  /bn")]
    assert len(listed) == 1 and listed[0].startswith("/bn2/BatchNormalization: FAILED: max abs error")


def test_a_failed_site_proof_refolds_and_the_refold_is_what_is_verified_and_written(tmp_path, monkeypatch):
    """The first fold is verified while its proofs run (``checks_alongside``); when a proof
    fails, the site is kept and the second fold is the one verified and written."""
    from bncheck.backends.onnx import backend as onnx_backend

    real = onnx_backend.fold_onnx
    calls = []

    def tampered_first(source, **kwargs):
        folded = real(source, **kwargs)
        calls.append(kwargs.get("keep"))
        if len(calls) == 1:
            conv2 = next(n for n in folded.model.graph.node if n.name == "/conv2/Conv")
            init = next(i for i in folded.model.graph.initializer if i.name == conv2.input[1])
            w = numpy_helper.to_array(init).copy()
            w[3] *= 1.01
            init.CopyFrom(numpy_helper.from_array(w, init.name))
        return folded

    monkeypatch.setattr(onnx_backend, "fold_onnx", tampered_first)
    out = tmp_path / "f.onnx"
    report = fold(SAMPLES / "digits_cnn.onnx", out, timing=False)
    assert len(calls) == 2 and "/bn2/BatchNormalization" in calls[1]
    assert report.result.site_proofs["/bn2/BatchNormalization"].passed is False
    assert report.result.outcomes["/bn2/BatchNormalization"]["status"] == "kept"
    assert report.result.verification.passed and report.result.verification.max_rel_err < 1e-4
    written = onnx.load(str(out))
    assert [n.name for n in written.graph.node if n.op_type == "BatchNormalization"] == ["/bn2/BatchNormalization"]

"""TorchScript folds (torch.jit.freeze) proved site by site: each folded layer's frozen conv /
linear against its scripted producer and BN in float64."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from bncheck.commands.fold import fold  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[3] / "sample_models"


def test_torchscript_sites_are_proved_on_their_own(tmp_path):
    report = fold(SAMPLES / "digits_cnn.ts", tmp_path / "f.ts", input_shape="4,1,8,8", timing=False)
    assert report.extras["fold"]["layers_folded"] == 3
    assert report.extras["fold"]["site_proofs"] == {"passed": 3, "failed": 0, "not_proved": 0}
    proofs = {name: extra["fold"]["site_proof"] for name, extra in report.layer_extras.items()}
    assert proofs["bn1"]["input_shape"] == [1, 1, 4, 4] and proofs["bn3"]["input_shape"] == [1, 512]
    assert all(0 < p["max_rel_err"] < 1e-6 for p in proofs.values())


def test_torchscript_mlp_needs_no_input_shape(tmp_path):
    report = fold(SAMPLES / "cancer_mlp.ts", tmp_path / "m.ts", timing=False)
    used = report.extras["verification"]["inputs_used"]
    assert used["origin"] == "inferred" and used["shapes"] == [[2, 30]]
    assert report.extras["verification"]["passed"] is True
    assert report.extras["fold"]["site_proofs"]["passed"] == report.extras["fold"]["layers_folded"] == 2

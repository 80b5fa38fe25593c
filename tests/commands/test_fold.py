"""``bncheck fold`` on the command line: exit codes, refusals, the JSON report."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
DIGITS_ONNX = SAMPLES / "digits_cnn.onnx"
DIGITS_ARCH = f"{SAMPLES / 'architectures.py'}:digits_cnn"


@pytest.fixture
def digits(tmp_path) -> Path:
    """A private copy of the digits ONNX model (tests may try to overwrite it)."""
    return Path(shutil.copy(DIGITS_ONNX, tmp_path / "digits.onnx"))


def _json(result) -> dict:
    return json.loads(result.stdout)


def test_fold_writes_out_and_reports_verification(cli, digits, tmp_path):
    out = tmp_path / "folded.onnx"
    result = cli("fold", digits, "--out", out, "--format", "json", "--no-timing")
    assert result.exit_code == 0, result.stderr
    report = _json(result)
    assert report["command"] == "fold"
    assert set(report["verification"]) == {"inputs", "samples", "max_abs_err", "max_rel_err", "passed", "inputs_used"}
    assert report["verification"]["passed"] is True and report["verification"]["inputs"] == "random"
    assert report["verification"]["inputs_used"] == {
        "origin": "graph", "shapes": [[2, 1, 8, 8]], "why": "static input shapes declared by the model"
    }
    assert report["fold"]["site_proofs"] == {"passed": 3, "failed": 0, "not_proved": 0}
    proofs = [layer["fold"]["site_proof"] for layer in report["layers"]]
    assert [p["input_shape"] for p in proofs] == [[1, 1, 4, 4], [1, 16, 4, 4], [1, 512]]
    assert all(p["passed"] and 0 <= p["max_rel_err"] < 1e-5 for p in proofs)
    assert report["fold"]["layers_folded"] == 3 and report["fold"]["layers_kept"] == 0
    assert report["fold"]["nodes"] == {"before": 12, "after": 9}
    assert report["fold"]["file_size"]["after"] == out.stat().st_size
    first = dict(report["layers"][0]["fold"])
    first.pop("site_proof")
    assert first == {
        "status": "folded",
        "into": "/conv1/Conv",
        "reason": "into Conv /conv1/Conv",
    }
    assert out.exists()


def test_verification_failure_exits_1_and_writes_nothing(cli, digits, tmp_path):
    out = tmp_path / "folded.onnx"
    result = cli("fold", digits, "--out", out, "--atol", "0", "--rtol", "0", "-f", "json", "--no-timing")
    assert result.exit_code == 1
    report = _json(result)
    assert report["verification"]["passed"] is False
    assert [f["rule"] for f in report["findings"]] == ["BN401"]
    assert not out.exists()
    assert any("verification failed" in n for n in report["notes"])
    forced = cli("fold", digits, "--out", out, "--atol", "0", "--rtol", "0", "--force", "-q", "--no-timing")
    assert forced.exit_code == 1 and out.exists()


def test_a_wrong_rewrite_outside_the_sites_fails_whole_model_verification(cli, digits, tmp_path, monkeypatch):
    """The site proofs see producer->BN only; a rewrite that breaks the graph elsewhere (here a
    ReLU after a folded BN turned into an Identity) passes every site proof and must still
    fail the default whole-model verification (2 random samples): exit 1, BN401, no OUT."""
    from bncheck.backends.onnx import fold as onnx_fold

    real = onnx_fold.check_model

    def wrong(folded, original):  # the rewrite's last step: the bug lands before the check
        next(n for n in folded.graph.node if n.name == "/relu3/Relu").op_type = "Identity"
        real(folded, original)

    monkeypatch.setattr(onnx_fold, "check_model", wrong)
    out = tmp_path / "folded.onnx"
    result = cli("fold", digits, "--out", out, "-f", "json", "--no-timing")
    assert result.exit_code == 1
    report = _json(result)
    assert report["fold"]["site_proofs"] == {"passed": 3, "failed": 0, "not_proved": 0}
    assert report["verification"]["passed"] is False and report["verification"]["samples"] == 2
    assert report["verification"]["max_rel_err"] > 1e-2
    assert [f["rule"] for f in report["findings"]] == ["BN401"]
    assert not out.exists()


def test_refuses_to_overwrite_model(cli, digits, tmp_path):
    before = digits.read_bytes()
    for target in (digits, tmp_path / "." / "digits.onnx"):
        result = cli("fold", digits, "--out", target, "--force")
        assert result.exit_code == 2
        assert "refusing to overwrite the input model" in result.stderr
    link = tmp_path / "link.onnx"
    os.symlink(digits, link)
    assert cli("fold", digits, "--out", link, "--force").exit_code == 2
    assert digits.read_bytes() == before


def test_existing_out_needs_force(cli, digits, tmp_path):
    out = tmp_path / "folded.onnx"
    out.write_bytes(b"old")
    result = cli("fold", digits, "--out", out, "--no-timing")
    assert result.exit_code == 2 and "--force" in result.stderr
    assert out.read_bytes() == b"old"
    assert cli("fold", digits, "--out", out, "--force", "-q", "--no-timing").exit_code == 0
    assert out.read_bytes() != b"old"


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--out", "x.pt2"], "can only be written as ONNX"),
        (["--out", "x.onnx", "--to", "export"], "contradicts"),
        (["--out", "x.bin"], "cannot tell the output format"),
        (["--out", "x.pt"], "name the output .onnx"),
        (["--out", "x.onnx", "--input-shape", "1,3"], "does not fit"),
        (["--out", "x.onnx", "--input-shape", "a,b"], "positive integers"),
    ],
)
def test_usage_errors(cli, digits, tmp_path, args, needle):
    args = [str(tmp_path / a) if a.startswith("x.") else a for a in args]
    result = cli("fold", digits, *args)
    assert result.exit_code == 2
    assert needle in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(p.name.startswith("x.") for p in tmp_path.iterdir())


def test_state_dict_needs_arch_but_no_input_shape(cli, tmp_path):
    pytest.importorskip("torch")
    result = cli("fold", SAMPLES / "digits_cnn.pt", "--out", tmp_path / "f.pt2")
    assert result.exit_code == 2 and "--arch" in result.stderr
    result = cli("fold", SAMPLES / "digits_cnn.pt", "--arch", DIGITS_ARCH, "--out", tmp_path / "f.pt2", "-f", "json", "--no-timing")
    assert result.exit_code == 0, result.stderr
    report = _json(result)
    used = report["verification"]["inputs_used"]
    assert used["origin"] == "inferred" and used["shapes"] == [[2, 1, 8, 8]], used
    assert "first layer" in used["why"]
    assert report["fold"]["layers_folded"] == 3 and report["fold"]["site_proofs"]["passed"] == 3
    result = cli("fold", SAMPLES / "digits_cnn.ts", "--out", tmp_path / "f.onnx", "--input-shape", "2,1,8,8")
    assert result.exit_code == 2 and "TorchScript" in result.stderr


def test_defective_statistics_are_refused_unless_forced(cli, tmp_path):
    pytest.importorskip("torch")
    nan_model = SAMPLES / "broken" / "digits_cnn_nan.pt"
    out = tmp_path / "f.safetensors"
    result = cli("fold", nan_model, "--arch", DIGITS_ARCH, "--out", out, "--input-shape", "2,1,8,8")
    assert result.exit_code == 2
    assert "BN001" in result.stderr and "--force" in result.stderr and not out.exists()
    forced = cli("fold", nan_model, "--arch", DIGITS_ARCH, "--out", out, "--input-shape", "2,1,8,8", "--force", "-f", "json", "--no-timing")
    report = _json(forced)
    assert forced.exit_code == 1  # the BN001 findings are still errors
    assert {f["rule"] for f in report["findings"]} == {"BN001"}
    status = {layer["name"]: layer["fold"]["status"] for layer in report["layers"]}
    assert status == {"bn1": "kept", "bn2": "kept", "bn3": "folded"}
    assert out.exists()
    negative = cli("fold", SAMPLES / "broken" / "digits_cnn_negative_var.onnx", "--out", tmp_path / "n.onnx")
    assert negative.exit_code == 2 and "BN002" in negative.stderr
    training = cli("fold", SAMPLES / "broken" / "digits_cnn_no_running_stats.onnx", "--out", tmp_path / "t.onnx")
    assert training.exit_code == 2 and "BN004" in training.stderr


def test_nothing_to_fold(cli, tmp_path):
    out = tmp_path / "f.onnx"
    result = cli("fold", SAMPLES / "broken" / "digits_cnn_folded.onnx", "--out", out, "-f", "json")
    assert result.exit_code == 0
    report = _json(result)
    assert report["fold"]["layers_folded"] == 0 and report["fold"]["output"]["written"] is True
    assert out.exists()  # a pipeline that deploys OUT finds it: the model as it is, verified
    assert report["verification"]["passed"] is True and report["verification"]["samples"] > 0
    assert any("nothing to fold" in n for n in report["notes"])
    # BN000's finding says there is no BN layer; the notes do not say it again
    assert [f["rule"] for f in report["findings"]] == ["BN000"]
    assert not any("no batch-norm layers found" in n for n in report["notes"])


def test_kept_layers_only_need_no_whole_model_run(cli, tmp_path, export_onnx, randomize_bn):
    """Every BN kept (fed by a ReLU): OUT is still written, the model as it is, and verified
    like any output; without OUT the model is unchanged, so no verification inputs are built
    or run."""
    import torch
    from torch import nn

    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.BatchNorm2d(8), nn.Flatten(), nn.LazyLinear(4)))
    model(torch.zeros(1, 3, 12, 12))
    path = export_onnx(model.eval(), torch.zeros(1, 3, 12, 12), tmp_path / "kept.onnx")
    from bncheck.commands.fold import fold

    out = tmp_path / "f.onnx"
    report = fold(path, None, timing=False).to_dict()  # no OUT (the API)
    assert report["fold"]["layers_folded"] == 0
    assert report["verification"]["samples"] == 0 and report["verification"]["passed"] is True
    assert report["verification"]["inputs_used"]["origin"] == "none"
    assert "model is unchanged" in report["verification"]["inputs_used"]["why"]
    written = _json(cli("fold", path, "--out", out, "-f", "json"))
    assert out.exists() and written["verification"]["samples"] > 0 and written["verification"]["inputs_used"]["origin"] == "graph"


def test_verify_on_data_and_human_formats(cli, digits, tmp_path):
    out = tmp_path / "f.onnx"
    data = SAMPLES / "data" / "digits" / "reference"
    result = cli("fold", digits, "--out", out, "--verify", data, "--samples", "64", "--no-timing")
    assert result.exit_code == 0, result.stderr
    assert "verification: passed on 64 data sample(s)" in result.stdout
    assert "folded → /conv1/Conv" in result.stdout
    md = cli("fold", digits, "--out", out, "--force", "-f", "markdown", "--no-timing")
    assert "### Fold" in md.stdout and "folded → /fc1/Gemm" in md.stdout


def test_report_to_file_and_torch_speedup(cli, tmp_path):
    pytest.importorskip("torch")
    report_file = tmp_path / "report.json"
    result = cli(
        "fold", SAMPLES / "digits_cnn.safetensors", "--arch", DIGITS_ARCH, "--out", tmp_path / "f.pt2",
        "--input-shape", "8,1,8,8", "--output", report_file,
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(report_file.read_text())
    assert report["fold"]["timing"]["runtime"] == "torch eager"
    assert report["fold"]["speedup"] > 0
    assert report["fold"]["parameters"]["after"] < report["fold"]["parameters"]["before"]


@pytest.mark.parametrize("shape", [None, "1,1,8,8"])
def test_a_torch_model_folded_to_onnx_keeps_a_dynamic_batch_and_says_which_sizes_it_takes(cli, tmp_path, shape):
    """A state dict folded to ONNX: the batch axis stays dynamic, also where --input-shape gives a
    batch of one (torch.export specialised it to 1 and torch warned on stderr), and the report
    says that the other axes are fixed to the verification input's, pointing to --input-shape."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    out = tmp_path / "folded.onnx"
    extra = ["--input-shape", shape] if shape else []
    result = cli("fold", SAMPLES / "digits_cnn.pt", "--arch", DIGITS_ARCH, "--out", out, "-f", "json", "--no-timing", *extra)
    assert result.exit_code == 0, result.stderr
    assert "specialized" not in result.stderr and "Dim.AUTO" not in result.stderr
    dims = [d.dim_param or d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [1, 8, 8]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {session.get_inputs()[0].name: np.zeros((3, 1, 8, 8), np.float32)})[0].shape == (3, 10)
    notes = _json(result)["notes"]
    assert any("takes any batch size but only per-sample inputs of 1x8x8" in n and "--input-shape" in n for n in notes), notes


def test_verify_data_is_read_with_the_image_options_given(cli, digits, tmp_path):
    """``fold --verify DATA`` takes drift's image options (it refused --mean: the whole-model
    check on real data always ran with the default x/255); they need --verify."""
    out = tmp_path / "folded.onnx"
    reference = SAMPLES / "data" / "digits" / "reference"
    result = cli("fold", digits, "--out", out, "-f", "json", "--no-timing", "--verify", reference, "--samples", "16", "--scale", "1", "--mean", "3", "--std", "2")
    assert result.exit_code == 0, result.stderr
    body = _json(result)
    pre = body["data"]["preprocessing"]
    assert pre["scale"] == 1 and pre["mean"] == [3.0] and pre["std"] == [2.0]
    assert body["verification"]["inputs_used"]["origin"] == "data" and body["verification"]["passed"] is True
    alone = cli("fold", digits, "--out", tmp_path / "other.onnx", "--mean", "0.5")
    assert alone.exit_code == 2 and "--mean says how --verify DATA is read" in alone.stderr
    assert not (tmp_path / "other.onnx").exists()

"""Issue 11 item 5: paths that ended in "unexpected X ... please report it" now give exit 2 and
one sentence naming the problem and the fix, raised by the reader that knows what is wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from onnx import helper as h

from security.crafted import payload_torch_save
from tests.support.onnx_graphs import with_nan_first_bn_stats

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"


def bncheck(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "bncheck", *args], capture_output=True, text=True, cwd=cwd, timeout=300, env=env)


def one_sentence(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "unexpected" not in result.stderr and "please report" not in result.stderr, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def real_report(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("report")
    result = bncheck("audit", str(SAMPLES / "broken" / "digits_cnn_negative_var.onnx"), "-f", "json", "-o", "r.json", cwd=folder)
    assert result.returncode in (0, 1), result.stderr
    report = json.loads((folder / "r.json").read_text())
    assert report["findings"], "the attacks below edit a real finding"
    return report


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


JSON_ATTACKS = {
    # json.loads itself recurses too deeply
    "deep-array": lambda report: "[" * 100_000 + "]" * 100_000,
    # parses, then the schema check or the JSON writer would recurse too deeply
    "deep-details": lambda report: json.dumps({**report, "findings": [{**report["findings"][0], "details": {"x": nested(900)}}]}),
    # int("9" * 5000) raises ValueError (sys.get_int_max_str_digits)
    "long-integer": lambda report: json.dumps(report)[:-1] + ', "n": ' + "9" * 5000 + "}",
}


@pytest.mark.parametrize("attack", sorted(JSON_ATTACKS))
@pytest.mark.parametrize("command", ["report", "diff"])
def test_hostile_json_reports_are_one_sentence(tmp_path, real_report, attack, command):
    (tmp_path / "evil.json").write_text(JSON_ATTACKS[attack](real_report))
    args = ["report", "evil.json", "-f", "json"] if command == "report" else ["diff", "evil.json", "evil.json"]
    message = one_sentence(bncheck(*args, cwd=tmp_path))
    assert "evil.json" in message and "pass a report written with --format json" in message


def test_a_schema_problem_does_not_echo_a_huge_value(tmp_path, real_report):
    forged = {**real_report, "findings": [{**real_report["findings"][0], "layer": {"x": "y" * 100_000}}]}
    (tmp_path / "evil.json").write_text(json.dumps(forged))
    message = one_sentence(bncheck("report", "evil.json", cwd=tmp_path))
    assert len(message) < 600 and "findings[0].layer" in message


def bn_graph(path: Path, bn_input: str, inputs=True) -> Path:
    """Conv -> BN when ``bn_input`` is ``c``; any other name is produced by nothing."""
    x = h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    params = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
              (("s", [1, 1]), ("b", [0, 0]), ("m", [0, 0]), ("v", [1, 1]))]  # fmt: skip
    params.append(numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w"))
    if not inputs:
        params.append(numpy_helper.from_array(np.ones((1, 2, 4, 4), np.float32), "x"))
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], name="conv"), h.make_node("BatchNormalization", [bn_input, "s", "b", "m", "v"], ["y"], name="bn")]
    graph = h.make_graph(nodes, "g", [x] if inputs else [], [y], initializer=params)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 15)]), path)
    return path


@pytest.mark.parametrize("inputs", [True, False], ids=["with-inputs", "no-inputs"])
def test_a_bn_whose_input_nothing_produces_is_refused(tmp_path, inputs):
    bn_graph(tmp_path / "m.onnx", "ghost", inputs=inputs)
    for args in (["audit", "m.onnx"], ["fold", "m.onnx", "--out", "f.onnx"]):
        message = one_sentence(bncheck(*args, cwd=tmp_path))
        assert "'ghost'" in message and "'bn'" in message and "re-export" in message
    assert not (tmp_path / "f.onnx").exists()


def test_fold_of_a_model_without_inputs_proves_its_sites(tmp_path):
    """All data constant: nothing to feed; this was an IndexError building random inputs."""
    bn_graph(tmp_path / "m.onnx", "c", inputs=False)
    result = bncheck("fold", "m.onnx", "--out", "f.onnx", "-f", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "the model has no inputs" in result.stdout
    # the Conv reads only constants, so its BN cannot be proved and is kept: OUT is the model as it is
    assert (report["fold"]["layers_folded"], report["fold"]["layers_kept"]) == (0, 1)
    assert (tmp_path / "f.onnx").exists() and report["fold"]["output"]["written"] is True


def test_an_initializer_whose_dims_lie_is_refused(tmp_path):
    bn_graph(tmp_path / "m.onnx", "c")
    model = onnx.load(tmp_path / "m.onnx")
    model.graph.initializer[0].raw_data = np.ones(3, np.float32).tobytes()  # dims say 2
    onnx.save(model, tmp_path / "m.onnx")
    for args in (["audit", "m.onnx"], ["fold", "m.onnx", "--out", "f.onnx"]):
        message = one_sentence(bncheck(*args, cwd=tmp_path))
        assert "'s'" in message and "[2]" in message


def test_a_pickle_named_safetensors_is_read_as_what_it_is(tmp_path):
    """torch.load reads any path ending in .safetensors as safetensors; bncheck sniffed the
    bytes, so it gets the pickle's own refusal (weights-only), and the payload never runs."""
    marker = tmp_path / "marker"
    (tmp_path / "evil.safetensors").write_bytes(payload_torch_save(marker))
    message = one_sentence(bncheck("audit", "evil.safetensors", cwd=tmp_path))
    assert "pickled Python objects" in message and "--trust-pickle" in message
    assert not marker.exists()
    state = torch.load(SAMPLES / "digits_cnn.pt", weights_only=True)
    torch.save(state, tmp_path / "renamed.safetensors")
    plain = bncheck("audit", "renamed.safetensors", cwd=tmp_path)
    assert plain.returncode in (0, 1), plain.stderr
    assert "bn1" in plain.stdout


def test_a_labels_file_pandas_cannot_parse_is_one_line(tmp_path):
    """pandas' ParserError message ends in a newline; it was quoted whole (two lines on stderr)."""
    (tmp_path / "labels.csv").write_text("label\n1\n2\n3,4,5\n")
    data = SAMPLES / "data" / "digits" / "reference.npz"
    message = one_sentence(bncheck("drift", str(SAMPLES / "digits_cnn.onnx"), str(data), "--labels", "labels.csv", cwd=tmp_path))
    assert "labels.csv" in message and "CSV" in message


def test_drift_names_the_layer_whose_stored_statistics_are_nan(tmp_path):
    """An all-NaN running mean/var in bn1 makes bn2 measure NaN: that was blamed on the data
    overflowing (check --scale), which is not the problem."""
    model = onnx.load(with_nan_first_bn_stats(SAMPLES / "digits_cnn.onnx", tmp_path / "m.onnx"))
    bn = next(node for node in model.graph.node if node.op_type == "BatchNormalization")
    data = SAMPLES / "data" / "digits" / "reference.npz"
    message = one_sentence(bncheck("drift", "m.onnx", str(data), cwd=tmp_path))
    assert f"BN layer {bn.name} stores non-finite running statistics" in message and "overflowed" not in message

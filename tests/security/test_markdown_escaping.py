"""Issue 11 item 5: user-controlled strings (layer names from the model file) never reach a
Markdown report as raw HTML or as text that breaks out of its code span or table cell."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx import helper as h

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "<img src=x onerror=alert(1)>`|` **bold** </code>"


def hostile_model(path: Path) -> Path:
    x = h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    params = [numpy_helper.from_array(np.array(v, np.float32), name) for name, v in
              (("s", [1, 1]), ("b", [0, 0]), ("m", [0, 0]), ("v", [-1, 1]))]  # fmt: skip
    node = h.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name=HOSTILE)
    model = h.make_model(h.make_graph([node], "g", [x], [y], initializer=params), opset_imports=[h.make_opsetid("", 15)])
    onnx.save(model, path)
    return path


def test_a_hostile_layer_name_stays_text_in_markdown(tmp_path):
    model = hostile_model(tmp_path / "m.onnx")
    result = subprocess.run(
        [sys.executable, "-m", "bncheck", "audit", str(model), "-f", "markdown"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # the negative variance is an error finding
    text = result.stdout
    outside_code = re.sub(r"(`+) .*? \1|`[^`]*`", "", text)  # code spans render their content as text
    assert "<img" not in outside_code and "&lt;img src=x onerror=alert(1)&gt;" in text
    lines = text.splitlines()
    layer_rows = [i for i, line in enumerate(lines) if line.startswith("| `` ") and "onerror" in line]
    assert layer_rows, text
    for i in layer_rows:
        row = lines[i]
        # the name is one code span fenced by two backticks (it holds single ones), its pipes escaped
        span = re.match(r"\| (``) (.*?) \1 \|", row)
        assert span is not None, row
        assert "\\|" in span.group(2) and re.search(r"(?<!\\)\|", span.group(2)) is None
        # the row keeps its table's column count: the name's pipe broke no cell
        header = next(lines[j] for j in range(i, -1, -1) if lines[j].startswith("| ---") or lines[j].startswith("|---")) if any(
            lines[j].startswith(("| ---", "|---")) for j in range(i)) else None
        assert header is not None
        unescaped = lambda line: len(re.findall(r"(?<!\\)\|", line))  # noqa: E731
        assert unescaped(row) == unescaped(header), (row, header)

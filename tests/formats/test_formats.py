"""Report formats of ``bncheck audit``: JSON against the contract's schema, Markdown, JUnit
XML, the terminal table, ``--output`` and ``--quiet``."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("jsonschema")

from support.contract_schema import validate_report  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_cwd(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def flawed(tmp_path, tiny_cnn, save_model):
    """TorchScript model: bn1 never calibrated (error), bn3 5 updates (warning), bn2 clean."""
    with torch.no_grad():
        tiny_cnn.bn1.reset_running_stats()
        tiny_cnn.bn2.num_batches_tracked.fill_(1000)
        tiny_cnn.bn3.num_batches_tracked.fill_(5)
    return save_model(tiny_cnn, tmp_path, "script")


@pytest.mark.parametrize("fmt", ["state_dict", "safetensors", "script", "trace", "export", "onnx", "pickle"])
def test_json_matches_the_contract_schema(tmp_path, tiny_cnn, save_model, cli, fmt):
    with torch.no_grad():
        tiny_cnn.bn2.running_var[1] = float("nan")  # a non-finite value must still give valid JSON
    path = save_model(tiny_cnn, tmp_path, fmt, torch.rand(2, 1, 8, 8))
    args = ["--trust-pickle"] if fmt == "pickle" else []
    result = cli("audit", path, "--format", "json", *args)
    assert result.exit_code == 1, result.stderr  # BN001 is an error
    report = json.loads(result.stdout)
    validate_report(report)
    assert report["command"] == "audit"
    assert report["model"]["path"] == str(path)
    assert report["model"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert len(report["layers"]) == 3
    assert [f["rule"] for f in report["findings"] if f["rule"] == "BN001"] == ["BN001"]


def test_json_layer_fields(flawed, cli):
    report = json.loads(cli("audit", flawed, "-f", "json").stdout)
    validate_report(report)
    first = report["layers"][0]
    assert {k: first[k] for k in ("name", "kind", "num_features", "eps", "momentum", "producer", "foldable")} == {
        "name": "bn1", "kind": "BatchNorm2d", "num_features": 4, "eps": 1e-05, "momentum": 0.1,
        "producer": "conv1", "foldable": True,
    }  # fmt: skip
    assert report["findings"][0] == {
        "rule": "BN003",
        "severity": "error",
        "layer": "bn1",
        "message": "running statistics were never updated (mean exactly 0, var exactly 1 in every channel)",
        "details": {"num_batches_tracked": 0},
    }


def test_json_for_a_model_without_batch_norm(tmp_path, save_model, cli):
    path = save_model(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path, "state_dict")
    result = cli("audit", path, "-f", "json")
    assert result.exit_code == 0
    report = json.loads(result.stdout)
    validate_report(report)
    assert report["layers"] == [] and report["summary"]["passed"] is True


def test_schema_rejects_a_broken_report(flawed, cli):
    import jsonschema

    report = json.loads(cli("audit", flawed, "-f", "json").stdout)
    del report["layers"][0]["foldable"]
    with pytest.raises(jsonschema.ValidationError):
        validate_report(report)
    report = json.loads(cli("audit", flawed, "-f", "json").stdout)
    report["summary"]["errors"] = 0
    with pytest.raises(AssertionError):
        validate_report(report)


def test_markdown(flawed, cli):
    result = cli("audit", flawed, "--format", "markdown")
    assert result.exit_code == 1
    text = result.stdout
    assert "FAILED (fail-on error)" in text.splitlines()[0]
    assert "| | rule | layer | message |" in text
    assert "| 🔴 error | `BN003` | bn1 | running statistics were never updated" in text
    assert "| 🟠 warning | `BN006` | bn3 |" in text
    assert "`bn2` | BatchNorm2d | 6 |" in text  # the layers table
    passed = cli("audit", flawed, "--format", "markdown", "--fail-on", "never")
    assert passed.exit_code == 0 and "PASSED" in passed.stdout.splitlines()[0]


@pytest.mark.parametrize("fail_on, failing", [("error", ["bn1"]), ("warning", ["bn1", "bn3"]), ("never", [])])
def test_junit(flawed, cli, fail_on, failing):
    result = cli("audit", flawed, "--format", "junit", "--fail-on", fail_on)
    assert result.exit_code == (1 if failing else 0)
    root = ET.fromstring(result.stdout)
    cases = root.findall(".//testcase")
    assert [c.get("name") for c in cases] == ["bn1", "bn2", "bn3"]  # one per layer
    assert [c.get("name") for c in cases if c.find("failure") is not None] == failing
    suite = root.find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == str(len(failing))
    if fail_on == "error":  # the warning is reported, not failed
        bn3 = next(c for c in cases if c.get("name") == "bn3")
        assert "BN006" in bn3.find("system-out").text


def test_junit_model_level_findings_get_their_own_testcase(flawed, cli):
    root = ET.fromstring(cli("audit", flawed, "-f", "junit", "--train-batch-size", "4", "--fail-on", "warning").stdout)
    cases = root.findall(".//testcase")
    assert [c.get("name") for c in cases] == ["(model)", "bn1", "bn2", "bn3"]
    assert "BN010" in cases[0].find("failure").get("message")


def test_table(flawed, cli):
    result = cli("audit", flawed)
    assert result.exit_code == 1
    words = result.stdout.split()  # a long path may wrap the headline
    headline = (
        f"bncheck audit {flawed} (torchscript): 3 BN layer(s), 1 error(s), 1 warning(s), 0 info(s) "
        "— FAILED (fail-on error)"
    )
    assert words[: len(headline.split())] == headline.split()
    for name in ("bn1", "bn2", "bn3", "BN003", "BN006"):
        assert name in result.stdout
    assert "\x1b[" not in result.stdout  # no colour codes when not on a terminal


def test_quiet_table_is_one_line(flawed, cli):
    result = cli("audit", flawed, "--quiet")
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 1 and result.stderr == ""


@pytest.mark.parametrize("fmt, suffix", [("json", ".json"), ("markdown", ".md"), ("junit", ".xml"), ("table", ".txt")])
def test_output_file(tmp_path, flawed, cli, fmt, suffix):
    out = tmp_path / f"report{suffix}"
    result = cli("audit", flawed, "--format", fmt, "--output", out)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert str(out) in result.stderr
    text = out.read_text(encoding="utf-8")
    expected = cli("audit", flawed, "--format", fmt).stdout
    if fmt == "json":  # "run" records each invocation's own command line; the rest is identical
        text, expected = (json.dumps({k: v for k, v in json.loads(t).items() if k != "run"}) for t in (text, expected))
    assert text == expected
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".report")] == []  # no temp left


@pytest.mark.parametrize("suffix, check", [(".json", json.loads), (".xml", ET.fromstring)])
def test_output_format_from_extension(tmp_path, flawed, cli, suffix, check):
    out = tmp_path / f"report{suffix}"
    assert cli("audit", flawed, "-o", out).exit_code == 1
    check(out.read_text(encoding="utf-8"))


def test_output_into_missing_folder(tmp_path, flawed, cli, assert_usage_error):
    out = tmp_path / "nope" / "report.json"
    assert_usage_error(cli("audit", flawed, "-o", out), "does not exist")
    assert not out.parent.exists()


def test_bad_model_writes_no_report(tmp_path, cli, assert_usage_error):
    out = tmp_path / "report.json"
    assert_usage_error(cli("audit", tmp_path / "missing.onnx", "-o", out), "does not exist")
    assert not out.exists()


def test_output_file_permissions_follow_the_umask_or_the_replaced_file(tmp_path, flawed, cli):
    """A report is readable like any file the user writes (0666 less the umask), not 0600 as
    the temporary file it starts as; replacing a report keeps that file's permissions."""
    import os
    import stat

    previous = os.umask(0o022)
    try:
        out = tmp_path / "report.json"
        assert cli("audit", flawed, "-o", out).exit_code == 1
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        out.chmod(0o640)
        assert cli("audit", flawed, "-o", out).exit_code == 1
        assert stat.S_IMODE(out.stat().st_mode) == 0o640
        os.umask(0o077)
        fresh = tmp_path / "private.json"
        assert cli("audit", flawed, "-o", fresh).exit_code == 1
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
    finally:
        os.umask(previous)

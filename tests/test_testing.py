"""bncheck.testing: the assertions' failure message is the findings table, the pytest plugin's
``bncheck`` fixture runs the commands, and the plugin is declared under ``pytest11``. The
plugin is loaded into real pytest runs (pytester) the way its entry point loads it."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import bncheck
from bncheck.testing import assert_finding, assert_no_findings, assert_passes, findings_table

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
BROKEN = SAMPLES / "broken" / "digits_cnn_negative_var.onnx"
GOOD = SAMPLES / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def broken() -> bncheck.Report:
    report = bncheck.audit(BROKEN)
    assert not report.passed and report.findings
    return report


def test_assert_passes_fails_with_the_findings_table(broken):
    with pytest.raises(AssertionError) as caught:
        assert_passes(broken)
    message = str(caught.value)
    assert message.startswith("bncheck gate failed (fail-on error)")
    for f in broken.failing():
        assert f.rule in message and (f.layer or "(model)") in message
    assert "severity" in message and "rule" in message and "layer" in message and "message" in message
    assert_passes(broken, fail_on="never")
    assert_passes(bncheck.audit(GOOD))


def test_assert_no_findings_and_assert_finding(broken):
    worst = max(broken.findings, key=lambda f: f.severity.rank)
    with pytest.raises(AssertionError, match=f"at or above {worst.severity.value} of rule {worst.rule}"):
        assert_no_findings(broken, severity=worst.severity.value, rule=worst.rule)
    assert_no_findings(broken, rule="BN999")
    assert assert_finding(broken, worst.rule, layer=worst.layer) is worst
    with pytest.raises(AssertionError, match="no BN999 finding") as caught:
        assert_finding(broken, "BN999")
    assert findings_table(broken) in str(caught.value)
    with pytest.raises(bncheck.BncheckError, match="severity 'loud' must be one of"):
        assert_no_findings(broken, severity="loud")
    with pytest.raises(TypeError, match="expected a bncheck Report"):
        assert_passes({"passed": False})


def test_the_plugin_is_the_pytest11_entry_point():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    target = pyproject["project"]["entry-points"]["pytest11"]["bncheck"]
    module = importlib.import_module(target)
    assert callable(module.bncheck) and module is bncheck.pytest_plugin


def test_a_failing_user_test_shows_the_findings_table(pytester, broken, monkeypatch):
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # load the plugin once, by name, installed or not
    pytester.makepyfile(
        f"""
        def test_model(bncheck):
            report = bncheck.audit({str(BROKEN)!r})
            bncheck.assert_passes(report)

        def test_good(bncheck):
            bncheck.assert_passes(bncheck.audit({str(GOOD)!r}))

        def test_fold_writes_to_tmp_path(bncheck, tmp_path):
            report = bncheck.fold({str(GOOD)!r}, timing=False)
            assert (tmp_path / "digits_cnn_folded.onnx").is_file()
        """
    )
    result = pytester.runpytest_subprocess("-p", "bncheck.pytest_plugin", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=1)
    text = result.stdout.str()
    assert "assert False" not in text
    result.stdout.fnmatch_lines(["*AssertionError: bncheck gate failed (fail-on error):*finding(s)*", "*bncheck audit*"])
    for f in broken.failing():
        assert f.rule in text
    assert "┃ severity" in text or "severity" in text


def test_the_plugin_every_pytest_session_imports_is_light():
    # every pytest session of a project with bncheck installed imports the plugin: it must not
    # pull in the commands (torch, onnx, onnxruntime...) until a test asks for the fixture
    import subprocess
    import sys

    code = (
        "import sys, bncheck.pytest_plugin; "
        "heavy = sorted(m for m in sys.modules if m.startswith(('bncheck.commands', 'onnx', 'torch', 'bncheck.testing'))); "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"

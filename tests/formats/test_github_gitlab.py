"""--format github (workflow-command annotations) and --format gitlab (Code Quality JSON)
through the real CLI on the broken sample models, plus hostile layer names and messages: the
escaping of GitHub's toolkit round-trips and nothing can start a second command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import bncheck
from bncheck.cli.app import app
from bncheck.formats import github, gitlab
from bncheck.rules import REGISTRY
from bncheck.rules.finding import Finding, Severity

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
UNCALIBRATED = ["audit", str(SAMPLES / "broken" / "digits_cnn_uncalibrated.pt"), "--arch", f"{SAMPLES / 'architectures.py'}:digits_cnn"]
NEGATIVE = ["audit", str(SAMPLES / "broken" / "digits_cnn_negative_var.onnx")]
COMMAND = re.compile(r"^::(error|warning|notice) ((?:[a-z]+=[^,:]*)(?:,[a-z]+=[^,:]*)*)::(.*)$")


def cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code in (0, 1), result.output
    return result


def unescape(text: str) -> str:
    """What the runner does to a command's values (the toolkit's escaping, reversed)."""
    return text.replace("%0D", "\r").replace("%0A", "\n").replace("%3A", ":").replace("%2C", ",").replace("%25", "%")


def parse(line: str) -> tuple[str, dict[str, str], str]:
    match = COMMAND.match(line)
    assert match, line
    props = dict(item.split("=", 1) for item in match.group(2).split(","))
    return match.group(1), {k: unescape(v) for k, v in props.items()}, unescape(match.group(3))


def test_github_annotations_one_per_finding():
    result = cli(*UNCALIBRATED, "--format", "github")
    assert result.exit_code == 1
    headline, *lines = result.stdout.splitlines()
    assert headline.startswith("bncheck audit") and "FAILED" in headline
    assert len(lines) == 3
    for line, layer in zip(lines, ["bn1", "bn2", "bn3"], strict=True):
        level, props, message = parse(line)
        assert level == "error" and props["line"] == "1" and props["file"].endswith("digits_cnn_uncalibrated.pt")
        assert props["title"] == f"bncheck BN003 uncalibrated-statistics ({layer})" and "never updated" in message


def test_github_escaping_round_trips_hostile_text():
    report = bncheck.audit(SAMPLES / "broken" / "digits_cnn_negative_var.onnx")
    nasty_layer = "features.0:bn,1 %41"
    nasty_message = "50% of channels\r\n::error title=injected::gotcha, see: this"
    report.findings = [Finding("BN002", Severity.WARNING, nasty_layer, nasty_message), Finding("BN004", Severity.INFO, None, "fine")]
    headline, first, second = github.render(report).splitlines()
    level, props, message = parse(first)
    assert level == "warning" and props["title"] == f"bncheck BN002 {REGISTRY['BN002'].name} ({nasty_layer})"
    assert message == f"{nasty_message} [layer {nasty_layer}]"
    assert first.endswith("::" + github.escape_data(f"{nasty_message} [layer {nasty_layer}]"))  # CR LF escaped: the injection stays data
    assert parse(second)[0] == "notice" and parse(second)[2] == "fine"
    assert github.escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A" and github.escape_data("a:b,c%\n") == "a:b,c%25%0A"


def test_gitlab_code_quality_fields_and_stable_fingerprints(tmp_path):
    out = tmp_path / "gl-code-quality-report.json"
    first = cli(*UNCALIBRATED, "--format", "gitlab", "--output", str(out))
    assert first.exit_code == 1
    issues = json.loads(out.read_text())
    assert len(issues) == 3
    for issue in issues:
        assert issue["check_name"] == "BN003" and issue["severity"] in {"info", "minor", "major", "critical", "blocker"}
        assert issue["severity"] == "critical" and issue["description"].startswith("BN003 bn")
        assert issue["location"]["path"].endswith("digits_cnn_uncalibrated.pt") and issue["location"]["lines"]["begin"] == 1
        assert re.fullmatch(r"[0-9a-f]{64}", issue["fingerprint"])
    assert len({i["fingerprint"] for i in issues}) == 3
    again = json.loads(cli(*UNCALIBRATED, "--format", "gitlab").stdout)
    assert [i["fingerprint"] for i in again] == [i["fingerprint"] for i in issues]


def test_gitlab_without_findings_is_an_empty_array_and_several_models_one_array():
    assert json.loads(cli("audit", str(SAMPLES / "digits_cnn.onnx"), "--format", "gitlab").stdout) == []
    both = json.loads(cli(*NEGATIVE, str(SAMPLES / "broken" / "digits_cnn_no_running_stats.onnx"), "--format", "gitlab").stdout)
    assert [i["check_name"] for i in both][0] == "BN002" and len(both) >= 2
    assert {i["location"]["path"] for i in both} == {NEGATIVE[1], str(SAMPLES / "broken" / "digits_cnn_no_running_stats.onnx")}
    assert len({i["fingerprint"] for i in both}) == len(both)


@pytest.mark.parametrize("fmt", ["github", "gitlab"])
def test_the_formats_render_a_saved_drift_report(tmp_path, fmt):
    saved = tmp_path / "drift.json"
    cli("drift", str(SAMPLES / "digits_cnn.onnx"), str(SAMPLES / "data" / "digits" / "shifted"), "-f", "json", "-o", str(saved), "--mismatch-samples", "0")
    rendered = cli("report", str(saved), "--format", fmt, "--exit-zero").stdout
    codes = {f.rule for f in bncheck.load_report(saved).findings}
    assert codes and all(code in rendered for code in codes)
    assert gitlab.SEVERITIES.keys() == github.COMMANDS.keys()

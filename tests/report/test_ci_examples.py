"""The CI recipes in examples/ run as a user's pipeline would run them: every shell step of the
GitHub Actions workflow and of the GitLab job (through bash, with the workflow's variables, on
the bundled sample model and data), and the pre-deploy script. The job summary, the SARIF
files, the JUnit report and the artifacts they promise must exist and be valid, and the gate
must fail on drifting data and pass on the reference data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from support.reports_support import ROOT

yaml = pytest.importorskip("yaml")
pytest.importorskip("matplotlib")

EXAMPLES = ROOT / "examples"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A checkout-like folder: the sample models where the recipes expect them."""
    (tmp_path / "sample_models").symlink_to(ROOT / "sample_models", target_is_directory=True)
    return tmp_path


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the installed `bncheck`
    env.pop("NO_COLOR", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    # GitHub's default shell for `run:` steps: bash --noprofile --norc -eo pipefail {0}
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _installs(script: str) -> bool:
    return "pip install" in script


# ---------------------------------------------------------------------------- GitHub Actions


def _workflow() -> dict:
    return yaml.safe_load((EXAMPLES / "github-actions.yml").read_text(encoding="utf-8"))


def _run_workflow(cwd: Path, overrides: dict[str, str] | None = None) -> dict[str, subprocess.CompletedProcess]:
    flow = _workflow()
    (job,) = flow["jobs"].values()
    summary = cwd / "step_summary.md"
    summary.touch()
    env = _env({**flow["env"], **(overrides or {}), "GITHUB_STEP_SUMMARY": summary, "CI": "true"})
    results = {}
    for step in job["steps"]:
        if "run" not in step or _installs(step["run"]):
            continue  # actions (checkout, upload...) and the install: done for us
        results[step["name"]] = _bash(step["run"], cwd, env)
    return results


def test_github_workflow_shape():
    flow = _workflow()
    assert flow["permissions"]["security-events"] == "write"
    (job,) = flow["jobs"].values()
    uses = [step.get("uses", "") for step in job["steps"]]
    assert sum(u.startswith("github/codeql-action/upload-sarif@") for u in uses) == 2
    assert any(u.startswith("actions/upload-artifact@") for u in uses)
    runs = [step["run"] for step in job["steps"] if "run" in step]
    assert any("$GITHUB_STEP_SUMMARY" in r and "--format markdown" in r for r in runs)
    assert job["steps"][-1]["name"].startswith("Gate") and "if" not in job["steps"][-1]
    assert all(step.get("if") == "always()" for step in job["steps"] if step.get("uses", "").startswith(("github/codeql", "actions/upload")))


def test_github_workflow_runs_and_gates_drifting_data(workdir):
    results = _run_workflow(workdir)
    gate = [name for name in results if name.startswith("Gate")]
    for name, result in results.items():
        expected = 1 if name in gate else 0
        assert result.returncode == expected, (name, result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    assert "FAILED" in results[gate[0]].stdout and "baseline:" in results[gate[0]].stdout
    summary = (workdir / "step_summary.md").read_text(encoding="utf-8")
    assert "## bncheck audit: ✅ PASSED" in summary and "## bncheck drift: ❌ FAILED" in summary
    assert "| new |" in summary or " new |" in summary  # baseline states in the summary table
    flow = _workflow()
    (job,) = flow["jobs"].values()
    for step in job["steps"]:
        given = step.get("with", {})
        if "sarif_file" in given:
            sarif = json.loads((workdir / given["sarif_file"]).read_text(encoding="utf-8"))
            assert sarif["version"] == "2.1.0" and sarif["runs"][0]["tool"]["driver"]["name"] == "bncheck"
        if "path" in given:
            for line in given["path"].split():
                assert (workdir / line).stat().st_size > 0, line
    drift_sarif = json.loads((workdir / "sarif" / "drift.sarif").read_text(encoding="utf-8"))
    assert {r.get("baselineState") for r in drift_sarif["runs"][0]["results"]} >= {"new"}
    html = (workdir / "bncheck-report.html").read_text(encoding="utf-8")
    assert 'id="channel-chart"' in html  # the JSON was made with --channels


def test_github_workflow_passes_on_the_reference_data(workdir):
    flow = _workflow()
    results = _run_workflow(workdir, {"DATA": flow["env"]["REFERENCE"]})
    for name, result in results.items():
        assert result.returncode == 0, (name, result.stdout[-2000:], result.stderr[-2000:])


# ---------------------------------------------------------------------------- GitLab


def test_gitlab_job_runs_and_writes_its_junit_report(workdir):
    job = yaml.safe_load((EXAMPLES / "gitlab-ci.yml").read_text(encoding="utf-8"))["bncheck"]
    env = _env({**job["variables"], "CI": "true"})
    lines = [line for line in job["script"] if not _installs(line)]
    for i, line in enumerate(lines):
        result = _bash(line, workdir, env)
        expected = 1 if i == len(lines) - 1 else 0  # the last line is the gate; the data drifts
        assert result.returncode == expected, (line, result.stdout[-2000:], result.stderr[-2000:])
    junit = workdir / job["artifacts"]["reports"]["junit"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert int(suite.get("failures")) > 0 and int(suite.get("tests")) >= 3
    for path in job["artifacts"]["paths"]:
        assert (workdir / path).stat().st_size > 0
    assert job["artifacts"]["when"] == "always"


# ---------------------------------------------------------------------------- pre-deploy script


def test_pre_deploy_script(workdir):
    script = EXAMPLES / "pre-deploy.sh"
    assert os.access(script, os.X_OK)
    env = _env({})
    model, shifted = "sample_models/digits_cnn.onnx", "sample_models/data/digits/shifted"
    blocked = subprocess.run([str(script), model, shifted, "", "out1"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert blocked.returncode == 1, blocked.stderr
    assert "DO NOT SHIP" in blocked.stderr and "FAILED" in blocked.stdout
    for name in ("audit.json", "drift.json", "audit.md", "drift.md", "drift.html"):
        assert (workdir / "out1" / name).stat().st_size > 0, name
    # the release's drift report as baseline: nothing new, it may ship
    ok = subprocess.run([str(script), model, shifted, "out1/drift.json", "out2"], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "may ship" in ok.stdout
    broken = subprocess.run([str(script), "missing.onnx", shifted], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert broken.returncode == 2
    assert "error: model file missing.onnx does not exist" in broken.stderr and "could not run" in broken.stderr
    usage = subprocess.run([str(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert usage.returncode != 0 and "usage: pre-deploy.sh MODEL DATA" in usage.stderr

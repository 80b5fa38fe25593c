"""The CI integrations at the repository root, run the way their hosts run them:
``.pre-commit-hooks.yaml`` (the hook's entry, its args and the staged files its ``files:``
regex selects, as pre-commit builds the command line) and the composite ``action.yml`` (each
``run:`` step in bash with its ``env:`` expressions evaluated, a fake ``GITHUB_STEP_SUMMARY`` /
``GITHUB_OUTPUT``, and pip replaced by a recorder: the install needs the network)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
GOOD = "sample_models/digits_cnn.onnx"
BROKEN = "sample_models/broken/digits_cnn_negative_var.onnx"


def _env(tmp_path: Path) -> dict[str, str]:
    """PATH with a ``bncheck`` that is this tree's (and a ``python`` that records pip calls)."""
    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    (shims / "bncheck").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m bncheck "$@"\n')
    (shims / "python").write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(tmp_path / "pip.log"))}\n')
    for shim in shims.iterdir():
        shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{shims}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(ROOT), NO_COLOR="1", COLUMNS="120")
    env.pop("GITHUB_ACTIONS", None)
    return env


# pre-commit ---------------------------------------------------------------------------------


def _hook() -> dict:
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    (hook,) = [h for h in hooks if h["id"] == "bncheck-audit"]
    return hook


def _precommit(tmp_path: Path, staged: list[str], args: list[str] = ()) -> subprocess.CompletedProcess:
    """What pre-commit runs: shlex.split(entry) + args + the staged files ``files`` selects."""
    hook = _hook()
    chosen = [f for f in staged if re.search(hook["files"], f) and not re.search(hook.get("exclude", "^$"), f)]
    command = [*shlex.split(hook["entry"]), *hook.get("args", []), *args, *chosen]
    return subprocess.run(command, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)


def test_the_hook_selects_model_files_only():
    hook = _hook()
    assert hook["language"] == "python" and hook["entry"] == "bncheck audit"
    picked = [f for f in ["a.onnx", "m.pt", "m.pth", "m.pt2", "m.ts", "w.safetensors", "README.md", "x.py", "data.npz", "x.onnx.json"] if re.search(hook["files"], f)]
    assert picked == ["a.onnx", "m.pt", "m.pth", "m.pt2", "m.ts", "w.safetensors"]


def test_the_hook_passes_good_models_and_fails_on_a_broken_one(tmp_path):
    staged = [GOOD, "sample_models/digits_cnn.pt2", "sample_models/README.md", "sample_models/architectures.py"]
    good = _precommit(tmp_path, staged, ["--quiet"])
    assert good.returncode == 0, good.stderr
    assert good.stdout.count("PASSED") == 2 and "README" not in good.stdout
    bad = _precommit(tmp_path, [*staged, BROKEN])
    assert bad.returncode == 1, bad.stderr
    assert BROKEN in bad.stdout and "BN002" in bad.stdout and GOOD in bad.stdout


def test_several_models_in_one_audit_give_one_document_per_format(tmp_path):
    run = lambda *a: subprocess.run(["bncheck", "audit", GOOD, BROKEN, *a], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)  # noqa: E731
    body = json.loads(run("-f", "json").stdout)
    assert body["passed"] is False and [r["model"]["path"] for r in body["reports"]] == [GOOD, BROKEN]
    assert [r["summary"]["passed"] for r in body["reports"]] == [True, False]
    assert body["kind"] == "reports" and body["tool"]["name"] == "bncheck" and isinstance(body["schema_version"], int)
    # the readers of one report say what the document is and how to take one out
    (tmp_path / "multi.json").write_text(json.dumps(body))
    for command in (["report", str(tmp_path / "multi.json")], ["audit", GOOD, "--baseline", str(tmp_path / "multi.json")]):
        refused = subprocess.run(["bncheck", *command], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2 and "holds 2 reports" in refused.stderr and "jq '.reports[0]'" in refused.stderr, refused.stderr
    sarif = json.loads(run("-f", "sarif").stdout)
    (only,) = sarif["runs"]
    assert [a["location"]["uri"] for a in only["artifacts"]] == [GOOD, BROKEN]
    assert {r["locations"][0]["physicalLocation"]["artifactLocation"]["index"] for r in only["results"]} == {1}
    junit = run("-f", "junit").stdout
    assert f'name="bncheck.audit {GOOD}"' in junit and f'name="bncheck.audit {BROKEN}"' in junit and 'failures="1"' in junit.split("\n")[1]
    html = run("-f", "html")
    assert html.returncode == 2 and "html shows one model" in html.stderr
    baseline = run("--baseline", "x.json")
    assert baseline.returncode == 2


def test_arch_of_a_hook_applies_to_the_state_dicts_among_several_models(tmp_path):
    """A pre-commit hook passes the same args (`--arch pkg:net`) with every staged file: the
    ONNX and TorchScript files among them carry their own graph and must not be refused for it."""
    arch = "sample_models/architectures.py:digits_cnn"
    files = [GOOD, "sample_models/digits_cnn.pt", "sample_models/digits_cnn.ts"]
    run = subprocess.run(["bncheck", "audit", *files, "--arch", arch, "-f", "json"], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    reports = json.loads(run.stdout)["reports"]
    assert [r["model"]["format"] for r in reports] == ["onnx", "state_dict", "torchscript"]
    assert reports[1]["layers"][0]["producer"] == "conv1"  # the state dict got the architecture
    alone = subprocess.run(["bncheck", "audit", GOOD, "--arch", arch], cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert alone.returncode == 2 and "--arch is only for PyTorch state dicts" in alone.stderr  # one model: still a mistake


# GitHub composite action --------------------------------------------------------------------


def _action() -> dict:
    return yaml.safe_load((ROOT / "action.yml").read_text(encoding="utf-8"))


def _evaluate(text: str, context: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        expression = match.group(1).strip()
        if expression not in context:
            raise AssertionError(f"action.yml uses ${{{{ {expression} }}}}, which this test does not provide")
        return context[expression]

    return re.sub(r"\$\{\{(.*?)\}\}", value, str(text))


def _run_action(tmp_path: Path, **given: str) -> tuple[dict[str, str], str, int, list[dict]]:
    """Run every ``run:`` step in order: (outputs of the bncheck step, step summary, exit code
    of the last step, the ``uses:`` steps)."""
    action = _action()
    inputs = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()}
    inputs.update({k.replace("_", "-"): v for k, v in given.items()})
    tmp_path.mkdir(parents=True, exist_ok=True)
    summary, outputs_file = tmp_path / "summary.md", tmp_path / "outputs.txt"
    summary.write_text("")
    outputs: dict[str, str] = {}
    uses, code = [], 0
    for step in action["runs"]["steps"]:
        context = {f"inputs.{k}": v for k, v in inputs.items()}
        context.update({"github.action_path": str(ROOT), "runner.temp": str(tmp_path / "runner-temp")})
        context.update({f"steps.bncheck.outputs.{k}": v for k, v in outputs.items()})
        if "uses" in step:
            uses.append({**step, "with": {k: _evaluate(v, context) for k, v in step.get("with", {}).items()}})
            continue
        assert step["shell"] == "bash"
        env = _env(tmp_path)
        env.update({k: _evaluate(v, context) for k, v in step.get("env", {}).items()})
        env.update(GITHUB_STEP_SUMMARY=str(summary), GITHUB_OUTPUT=str(outputs_file))
        outputs_file.write_text("")
        # GitHub runs a bash step as `bash --noprofile --norc -eo pipefail {0}`
        script = tmp_path / "step.sh"
        script.write_text(_evaluate(step["run"], context))
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        code = done.returncode
        for line in outputs_file.read_text().splitlines():
            key, _, value = line.partition("=")
            outputs[key] = value
        if step.get("id") != "bncheck" and code != 0 and step["name"] != "Gate":
            raise AssertionError(f"step {step['name']!r} failed: {done.stderr}")
    return outputs, summary.read_text(), code, uses


def test_the_action_audits_several_models_uploads_sarif_and_gates(tmp_path):
    outputs, summary, code, uses = _run_action(tmp_path, model=f"{GOOD} {BROKEN}")
    assert (tmp_path / "pip.log").read_text().split() == ["-m", "pip", "install", "--disable-pip-version-check", str(ROOT)]
    assert outputs["exit-code"] == "1" and outputs["passed"] == "false" and code == 1
    assert GOOD in summary and BROKEN in summary and "BN002" in summary and summary.lstrip().startswith("#")
    sarif = json.loads(Path(outputs["sarif"]).read_text())
    assert len(sarif["runs"]) == 1 and [r["ruleId"] for r in sarif["runs"][0]["results"]] == ["BN002"]
    (upload,) = uses
    assert upload["uses"].startswith("github/codeql-action/upload-sarif@") and upload["with"]["sarif_file"] == outputs["sarif"]
    assert "always()" in upload["if"] and "inputs.sarif == 'true'" in upload["if"]


def test_the_action_runs_drift_on_data_with_extras_and_args(tmp_path):
    outputs, summary, code, _ = _run_action(
        tmp_path, model=GOOD, data="sample_models/data/digits/reference", args="--batch-size 64 --mismatch-samples 0", extras="torch"
    )
    assert (tmp_path / "pip.log").read_text().split()[-1] == f"{ROOT}[torch]"
    assert outputs["exit-code"] == "0" and outputs["passed"] == "true" and code == 0
    assert "drift" in summary and "PASSED" in summary
    assert json.loads(Path(outputs["sarif"]).read_text())["runs"][0]["results"] == []


def test_the_action_says_why_it_could_not_run(tmp_path):
    outputs, summary, code, _ = _run_action(tmp_path, model=f"{GOOD} {BROKEN}", data="sample_models/data/digits/reference")
    assert outputs["exit-code"] == "2" and outputs["sarif"] == "" and code == 2
    assert "could not run (exit 2)" in summary
    missing, summary, code, _ = _run_action(tmp_path / "m", model="no/such/model.onnx")
    assert missing["exit-code"] == "2" and code == 2


@pytest.mark.parametrize("name", ["model", "data", "args", "fail-on", "sarif"])
def test_the_action_declares_its_inputs(name):
    assert name in _action()["inputs"] and _action()["runs"]["using"] == "composite"

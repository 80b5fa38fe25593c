"""A process pays only for the command it runs (issues 13 and 14: fixed per-process costs).

Each check runs the real CLI in a fresh interpreter and reads ``sys.modules`` at exit: what
was imported, not how long it took, so the checks hold on a loaded machine. And the registry
that lets the group import one command's module (:data:`bncheck.cli.app.COMMANDS`) says the
same as the modules it names."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from bncheck.cli.app import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
REFERENCE = SAMPLES / "data" / "digits" / "reference"

#: runs ``bncheck ARGS`` (argv[2:]) in this process and writes the names in sys.modules to argv[1]
PROBE = """
import atexit, json, runpy, sys
out, args = sys.argv[1], sys.argv[2:]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["bncheck", *args]
runpy.run_module("bncheck", run_name="__main__")
"""

#: optional or heavy packages that only some paths need
HEAVY = {"torch", "pandas", "pyarrow", "matplotlib", "jinja2", "safetensors", "ray", "fsspec", "scipy"}
#: the modules of each command's work (bncheck.commands.*), by command
WORK = {
    "audit": {"bncheck.commands.audit"},
    "drift": {"bncheck.commands.drift", "bncheck.commands.drift_analyses", "bncheck.commands.drift_diagnosis"},
    "fold": {"bncheck.commands.fold", "bncheck.commands.fold_inputs"},
    "recalibrate": {"bncheck.commands.recalibrate", "bncheck.commands.recalibrate_estimate", "bncheck.commands.recalibrate_guard"},
}
# (recalibrate_staged is shared: drift's BN301 estimates the data's own statistics with it)
#: commands built on another one's work (recalibrate's before/after figures are drift reports)
BUILT_ON = {"recalibrate": {"drift"}}


def imported(tmp_path: Path, *args: str, cwd: Path = ROOT) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run ``bncheck ARGS`` in a fresh interpreter (in folder ``cwd``): the process and every
    module it imported."""
    out = tmp_path / "modules.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    return proc, set(json.loads(out.read_text()))


def tops(modules: set[str]) -> set[str]:
    return {name.split(".")[0] for name in modules}


def others(command: str) -> set[str]:
    """The work modules and the CLI modules of every command but ``command``."""
    mine = COMMANDS[command].module
    cli = {entry.module for entry in COMMANDS.values() if entry.module != mine and entry.module != "bncheck.cli.engines"}
    mine_too = {command, *BUILT_ON.get(command, ())}
    return cli | set().union(*(mods for name, mods in WORK.items() if name not in mine_too))


def test_the_top_level_help_imports_no_command(tmp_path):
    proc, modules = imported(tmp_path, "--help")
    assert proc.returncode == 0 and "drift" in proc.stdout and "recalibrate" in proc.stdout, proc.stderr
    ours = {m for m in modules if m.split(".")[0] == "bncheck"}
    assert ours <= {"bncheck", "bncheck._version", "bncheck.cli", "bncheck.cli.app", "bncheck.cli.group", "bncheck.cli.quiet"}, sorted(ours)
    assert not tops(modules) & {"numpy", "pydantic", "onnx", "onnxruntime", "PIL", *HEAVY}


@pytest.mark.parametrize("command", ["drift", "fold", "audit", "recalibrate"])
def test_a_command_s_help_imports_only_that_command(tmp_path, command):
    proc, modules = imported(tmp_path, command, "--help")
    assert proc.returncode == 0 and f"bncheck {command}" in proc.stdout, proc.stderr
    assert COMMANDS[command].module in modules  # the probe sees the command's own module
    assert not modules & others(command), sorted(modules & others(command))
    assert not tops(modules) & {"onnx", "onnxruntime", *HEAVY}


def test_an_onnx_drift_run_imports_no_torch_and_no_other_command(tmp_path):
    proc, modules = imported(
        tmp_path, "drift", SAMPLES / "digits_cnn.onnx", REFERENCE, "-f", "json", "--mismatch-samples", "0"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["data"]["samples"] == 540
    assert {"bncheck.commands.drift", "onnxruntime", "onnx"} <= modules
    assert not modules & others("drift"), sorted(modules & others("drift"))
    assert not tops(modules) & HEAVY, sorted(tops(modules) & HEAVY)


def test_a_torch_fold_imports_no_onnx_and_no_other_command(tmp_path):
    proc, modules = imported(
        tmp_path, "fold", SAMPLES / "digits_cnn.pt2", "--out", tmp_path / "f.pt2", "-f", "json", "--no-timing"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["command"] == "fold"
    assert "torch" in modules and "bncheck.commands.fold" in modules
    assert not tops(modules) & {"onnx", "onnxruntime"}, sorted(m for m in modules if m.startswith("onnx"))
    assert not modules & others("fold"), sorted(modules & others("fold"))


#: what measuring DATA needs and folding never does: the readers and loader, the measuring
#: engines, the stats-file reader (for --baseline), drift's ONNX runner and staged model
DRIFT_MACHINERY = {
    "bncheck.data.dataset", "bncheck.data.loader", "bncheck.data.images", "bncheck.engines", "bncheck.engines.local",
    "bncheck.report.stats_file", "bncheck.backends.onnx.runner", "bncheck.backends.onnx.staged",
    "bncheck.backends.onnx.statistics",
}


def test_an_onnx_fold_imports_none_of_drift_s_machinery(tmp_path):
    """Issue 14: ``bncheck fold`` pays only for folding and verifying (a fixed cost of every
    process, measured in bench/results/fold_peers.md)."""
    proc, modules = imported(tmp_path, "fold", SAMPLES / "digits_cnn.onnx", "--out", tmp_path / "f.onnx", "-f", "json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["verification"]["passed"] is True and report["fold"]["layers_folded"] == 3
    assert {"bncheck.commands.fold", "onnxruntime", "onnx.reference"} <= modules  # it did fold, prove and verify
    assert not modules & DRIFT_MACHINERY, sorted(modules & DRIFT_MACHINERY)
    assert not modules & others("fold"), sorted(modules & others("fold"))
    assert not tops(modules) & HEAVY, sorted(tops(modules) & HEAVY)


def test_a_torch_drift_imports_no_onnx(tmp_path):
    proc, modules = imported(
        tmp_path, "drift", SAMPLES / "digits_cnn.ts", REFERENCE, "-f", "json", "--mismatch-samples", "0"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["data"]["samples"] == 540
    assert "torch" in modules and "bncheck.commands.drift" in modules
    assert not tops(modules) & {"onnx", "onnxruntime"}, sorted(m for m in modules if m.startswith("onnx"))
    assert not modules & others("drift"), sorted(modules & others("drift"))


def test_the_registry_names_each_command_s_module_and_summary():
    """Every command a listed module declares is listed with that module, and its summary is
    the first paragraph of its help, as ``bncheck --help`` showed it before the registry."""
    declared = {}
    for module in sorted({entry.module for entry in COMMANDS.values()}):
        group = typer.main.get_group(importlib.import_module(module).app)
        for name, command in group.commands.items():
            declared[name] = module
            assert COMMANDS[name].summary == command.help.split("\n\n")[0], name
    assert declared == {name: entry.module for name, entry in COMMANDS.items()}


def test_the_group_resolves_a_listed_command_to_its_real_declaration(cli):
    """``bncheck fold --help`` goes through the registry to the command itself (its options)."""
    result = cli("fold", "--help")
    assert result.exit_code == 0 and "--input-shape" in result.stdout and "--affine" in result.stdout


#: what a report needs only when it is drawn or read for a table, Markdown or HTML, a chart, a
#: ranking or a progress line: a ``-f json`` run loads none of it (the sections are imported by
#: :func:`bncheck.formats.section.section_for`, rich.progress when a line is drawn)
DRAWING = {
    "bncheck.formats.drift_section", "bncheck.formats.fold_section", "bncheck.formats.recalibrate_section",
    "bncheck.formats.plot", "bncheck.formats.svg", "bncheck.formats.html_parts", "bncheck.formats.ranking",
    "bncheck.report.ranking", "bncheck.commands.progress_line", "rich.console", "rich.progress", "rich.table",
    "html",  # Markdown cells' escaping
}


def test_a_json_fold_to_a_file_loads_no_section_chart_ranking_or_progress_line(tmp_path):
    report = tmp_path / "r.json"
    proc, modules = imported(tmp_path, "fold", SAMPLES / "digits_cnn.onnx", "--out", tmp_path / "f.onnx", "-f", "json", "-o", report)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(report.read_text())["fold"]["layers_folded"] == 3
    assert "bncheck.formats.json" in modules
    assert not modules & DRAWING, sorted(modules & DRAWING)


def test_a_run_outside_a_project_reads_no_toml(tmp_path):
    """No pyproject.toml or bncheck.toml above the working folder: the TOML reader is not loaded
    (in the project's folder, whose pyproject.toml is read, it is)."""
    args = ("fold", SAMPLES / "digits_cnn.onnx", "--out", "f.onnx", "-f", "json", "-o", "r.json")
    proc, outside = imported(tmp_path, *args, cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "r.json").is_file(), proc.stderr[-3000:]
    assert "tomllib" not in outside and "tomli" not in outside
    inside = tmp_path / "project"
    inside.mkdir()
    (inside / "pyproject.toml").write_text("[project]\nname = 'x'\n", encoding="utf-8")
    proc, modules = imported(tmp_path, *args, cwd=inside)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tomllib" in modules or "tomli" in modules


def test_a_json_drift_loads_no_section_chart_ranking_or_progress_line(tmp_path):
    proc, modules = imported(tmp_path, "drift", SAMPLES / "digits_cnn.onnx", REFERENCE, "-f", "json", "--mismatch-samples", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["data"]["samples"] == 540
    assert not modules & DRAWING, sorted(modules & DRAWING)
    assert "numpy.ma" not in modules  # np.median's NaN check imports it: 20 ms a run


def test_a_table_fold_loads_its_own_section_only(tmp_path):
    """The lazy lookup still finds the section: the table of a fold shows fold's part."""
    proc, modules = imported(tmp_path, "fold", SAMPLES / "digits_cnn.onnx", "--out", tmp_path / "f.onnx")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bncheck.formats.fold_section" in modules and "rich.table" in modules
    assert not modules & {"bncheck.formats.drift_section", "bncheck.formats.recalibrate_section"}

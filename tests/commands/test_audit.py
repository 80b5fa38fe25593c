"""``bncheck audit`` from the command line: --fail-on and exit codes, --select/--ignore,
--threshold, config files (pyproject.toml, bncheck.toml, --config), option errors, --version
and ``bncheck rules``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from bncheck import __version__  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_cwd(tmp_path, monkeypatch):
    """Run every test from an empty folder so no config file of the repository is found."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def mixed(tmp_path, tiny_cnn, save_model):
    """A TorchScript model with exactly one error, one warning and two infos:
    bn1 never calibrated (BN003), bn3 updated 5 times (BN006), bn2 eps 1e-3 (BN009, twice:
    the layer and the model's mixed eps values)."""
    with torch.no_grad():
        tiny_cnn.bn1.reset_running_stats()
        tiny_cnn.bn2.num_batches_tracked.fill_(1000)
        tiny_cnn.bn3.num_batches_tracked.fill_(5)
    tiny_cnn.bn2.eps = 1e-3
    return save_model(tiny_cnn, tmp_path, "script")


def rules_of(result) -> list[tuple[str, str | None]]:
    return [(f["rule"], f["layer"]) for f in json.loads(result.stdout)["findings"]]


def test_mixed_model_findings(mixed, cli):
    result = cli("audit", mixed, "--format", "json")
    assert result.exit_code == 1, result.stderr
    assert rules_of(result) == [("BN009", None), ("BN003", "bn1"), ("BN009", "bn2"), ("BN006", "bn3")]
    assert json.loads(result.stdout)["summary"] == {
        "layers": 3, "errors": 1, "warnings": 1, "infos": 2, "fail_on": "error", "passed": False,
    }  # fmt: skip


@pytest.mark.parametrize(
    "args, code",
    [
        ([], 1),
        (["--fail-on", "error"], 1),
        (["--fail-on", "never"], 0),
        (["--ignore", "BN003"], 0),
        (["--ignore", "BN003", "--fail-on", "warning"], 1),
        (["--ignore", "BN003,BN006", "--fail-on", "warning"], 0),
        (["--ignore", "BN003", "--ignore", "BN006", "--fail-on", "warning"], 0),
        (["--ignore", "BN003,BN006", "--fail-on", "info"], 1),
        (["--ignore", "BN00", "--fail-on", "info"], 0),  # prefix: BN001..BN009
        (["--select", "BN009", "--fail-on", "info"], 1),
        (["--select", "BN009", "--fail-on", "warning"], 0),
        (["--select", "bn006", "--fail-on", "warning"], 1),  # case-insensitive
        (["--select", "BN0", "--ignore", "BN003"], 0),
        (["--threshold", "BN006.max_initial_weight=0.9", "--ignore", "BN003", "--fail-on", "warning"], 0),
    ],
)
def test_exit_codes(mixed, cli, args, code):
    result = cli("audit", mixed, "--format", "json", *args)
    assert result.exit_code == code, (result.stdout, result.stderr)
    assert json.loads(result.stdout)["summary"]["passed"] is (code == 0)


def test_select_and_ignore_prefixes(mixed, cli):
    assert rules_of(cli("audit", mixed, "-f", "json", "--select", "BN00")) == [
        ("BN009", None), ("BN003", "bn1"), ("BN009", "bn2"), ("BN006", "bn3"),
    ]  # fmt: skip
    assert rules_of(cli("audit", mixed, "-f", "json", "--select", "BN003,BN006")) == [("BN003", "bn1"), ("BN006", "bn3")]
    assert rules_of(cli("audit", mixed, "-f", "json", "--ignore", "BN009")) == [("BN003", "bn1"), ("BN006", "bn3")]
    assert rules_of(cli("audit", mixed, "-f", "json", "--select", "BN00", "--ignore", "BN003,BN009")) == [("BN006", "bn3")]


def test_threshold_changes_the_finding(mixed, cli):
    result = cli("audit", mixed, "-f", "json", "--select", "BN006", "--threshold", "BN006.max_initial_weight=0.5")
    assert rules_of(result) == [("BN006", "bn3")]  # 0.9**5 = 0.59 > 0.5
    result = cli("audit", mixed, "-f", "json", "--select", "BN006", "-t", "BN006.max-initial-weight=0.6")
    assert rules_of(result) == []


# --------------------------------------------------------------------------------- config


def test_pyproject_tool_bncheck(mixed, cli, isolated_cwd):
    (isolated_cwd / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.bncheck]\nfail-on = "warning"\nignore = ["BN003"]\n'
        "[tool.bncheck.thresholds]\nBN006 = { max_initial_weight = 0.5 }\n"
    )
    result = cli("audit", mixed, "-f", "json")
    assert result.exit_code == 1
    assert rules_of(result) == [("BN009", None), ("BN009", "bn2"), ("BN006", "bn3")]
    assert json.loads(result.stdout)["summary"]["fail_on"] == "warning"
    (isolated_cwd / "pyproject.toml").write_text(
        '[tool.bncheck]\nfail-on = "warning"\nignore = ["BN003"]\nthresholds = { "BN006.max_initial_weight" = 0.9 }\n'
    )
    assert cli("audit", mixed, "-f", "json").exit_code == 0


def test_config_found_from_a_subfolder(mixed, cli, isolated_cwd, monkeypatch):
    (isolated_cwd / "pyproject.toml").write_text('[tool.bncheck]\nfail-on = "never"\n')
    sub = isolated_cwd / "src" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert cli("audit", mixed, "-f", "json").exit_code == 0


def test_bncheck_toml(mixed, cli, isolated_cwd):
    (isolated_cwd / "bncheck.toml").write_text('fail-on = "never"\n')
    assert cli("audit", mixed, "-f", "json").exit_code == 0
    (isolated_cwd / "bncheck.toml").write_text('[tool.bncheck]\nselect = ["BN006"]\nfail-on = "warning"\n')
    result = cli("audit", mixed, "-f", "json")
    assert result.exit_code == 1 and rules_of(result) == [("BN006", "bn3")]


def test_pyproject_without_table_falls_back_to_bncheck_toml(mixed, cli, isolated_cwd):
    (isolated_cwd / "pyproject.toml").write_text('[project]\nname = "x"\n')
    (isolated_cwd / "bncheck.toml").write_text('fail-on = "never"\n')
    assert cli("audit", mixed, "-f", "json").exit_code == 0
    (isolated_cwd / "pyproject.toml").write_text('[tool.bncheck]\nfail-on = "error"\n')  # wins over bncheck.toml
    assert cli("audit", mixed, "-f", "json").exit_code == 1


def test_explicit_config_and_cli_override(mixed, cli, tmp_path, isolated_cwd):
    (isolated_cwd / "pyproject.toml").write_text('[tool.bncheck]\nfail-on = "error"\n')
    custom = tmp_path / "ci.toml"
    custom.write_text('fail-on = "never"\ntrain-batch-size = 4\n')
    result = cli("audit", mixed, "-f", "json", "--config", custom)
    assert result.exit_code == 0
    assert ("BN010", None) in rules_of(result)  # train-batch-size from the config
    assert cli("audit", mixed, "-f", "json", "--config", custom, "--fail-on", "error").exit_code == 1
    assert ("BN010", None) not in rules_of(cli("audit", mixed, "-f", "json", "--config", custom, "--train-batch-size", "64"))


def test_config_format_option(mixed, cli, isolated_cwd):
    (isolated_cwd / "bncheck.toml").write_text('format = "json"\nfail-on = "never"\n')
    result = cli("audit", mixed)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["command"] == "audit"


# ------------------------------------------------------------------------- option errors


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--fail-on", "fatal"], ["fail-on", "'fatal'", "'error', 'warning', 'info', 'never'"]),
        (["--select", "BN999"], ["BN999", "matches no rule"]),
        (["--ignore", "XYZ"], ["XYZ", "matches no rule"]),
        (["--threshold", "BN006=0.5"], ["CODE.NAME=VALUE"]),
        (["--threshold", "BN006.max_initial_weight"], ["CODE.NAME=VALUE"]),
        (["--threshold", "BN006.max_initial_weight=lots"], ["CODE.NAME=VALUE"]),
        (["--threshold", "BN006.speed=3"], ["BN006", "'speed'", "max_initial_weight"]),
        (["--threshold", "BN999.x=3"], ["unknown rule BN999"]),
        (["--threshold", "BN011.x=3"], ["BN011", "it has: none"]),
        (["--format", "yaml"], ["'yaml'", "'table', 'json', 'markdown'"]),
        (["--train-batch-size", "0"], ["--train-batch-size"]),
        (["--config", "missing.toml"], ["missing.toml", "does not exist"]),
    ],
)
def test_bad_options(mixed, cli, assert_usage_error, args, needles):
    assert_usage_error(cli("audit", mixed, *args), *needles)


@pytest.mark.parametrize(
    "text, needles",
    [
        ("[tool.bncheck\nfail-on = 1", ["not valid TOML"]),
        ('[tool.bncheck]\nfail-on = "sometimes"\n', ["'sometimes'"]),
        ('[tool.bncheck]\nthresholds = { BN006 = { max_initial_weight = "big" } }\n', ["BN006.max_initial_weight", "number"]),
        ('[tool.bncheck]\nthresholds = { BN006 = { nope = 1 } }\n', ["'nope'"]),
        ('[tool.bncheck]\nthresholds = 3\n', ["thresholds must be a table"]),
        ('[tool.bncheck]\nselect = ["BN777"]\n', ["BN777"]),
    ],
)
def test_bad_config_files(mixed, cli, assert_usage_error, isolated_cwd, text, needles):
    (isolated_cwd / "pyproject.toml").write_text(text)
    assert_usage_error(cli("audit", mixed), *needles)


# ------------------------------------------------------------------------ version, rules


def test_python_m_bncheck_version():
    done = subprocess.run([sys.executable, "-m", "bncheck", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"bncheck {__version__}"


def test_version_in_process(cli):
    result = cli("--version")
    assert (result.exit_code, result.stdout.strip()) == (0, f"bncheck {__version__}")


def test_rules_lists_every_audit_rule(cli):
    result = cli("rules")
    assert result.exit_code == 0
    for code in [f"BN0{i:02d}" for i in range(1, 12)]:
        assert code in result.stdout
    assert "uncalibrated-statistics" in result.stdout


@pytest.mark.parametrize("width", [60, 100, 160])
def test_rules_list_takes_the_terminal_width_and_cuts_no_name(width):
    """The list was drawn 140 wide whatever the terminal (and names cut with "…" when narrow)."""
    from typer.testing import CliRunner

    from bncheck.cli.app import app
    from bncheck.rules.docs import rule_rows

    out = CliRunner().invoke(app, ["rules"], env={"COLUMNS": str(width)}).stdout
    assert max(len(line) for line in out.splitlines()) <= width and "…" not in out
    names = "".join(line.split("│")[2].strip() for line in out.splitlines() if line.startswith("│"))
    for row in rule_rows():
        assert row["name"] in names


@pytest.mark.parametrize("fmt", ["json", "markdown"])
def test_rules_machine_formats(cli, fmt):
    result = cli("rules", "--format", fmt)
    assert result.exit_code == 0
    if fmt == "json":
        rows = {row["code"]: row for row in json.loads(result.stdout)}
        assert rows["BN003"]["severity"] == "error" and rows["BN006"]["thresholds"] == {"max_initial_weight": 0.01}
    else:
        assert "| BN003 | uncalibrated-statistics | error |" in result.stdout


def test_rules_explains_one_rule(cli):
    result = cli("rules", "BN003")
    assert result.exit_code == 0
    text = result.stdout
    assert text.startswith("BN003 (uncalibrated-statistics) — default severity: error")
    positions = [text.index(part) for part in ("What it does", "Why is this bad?", "Example", "How to fix")]
    assert positions == sorted(positions)
    assert "num_batches_tracked" in text and "bncheck recalibrate" in text
    assert cli("rules", "bn006").stdout.count("BN006.max_initial_weight = 0.01") == 1


def test_terminal_report_ends_with_how_to_fix_each_rule(tmp_path, tiny_cnn, save_model, arch_module):
    """A new user reading "running statistics were never updated" needs the next command."""
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    for bn in (tiny_cnn.bn1, tiny_cnn.bn2):
        bn.reset_running_stats()
    path = save_model(tiny_cnn, tmp_path, "state_dict")
    result = CliRunner().invoke(app, ["audit", str(path), "--arch", arch_module.spec()], env={"COLUMNS": "100"})
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    fixes = lines[lines.index(next(x for x in lines if x.startswith("How to fix"))) + 1 :]
    assert fixes[0].split()[0] == "BN003" and "bncheck recalibrate MODEL DATA --out OUT" in " ".join(fixes)
    assert sum(line.lstrip().startswith("BN003") for line in fixes) == 1  # once per rule, not per layer


def test_no_rule_documents_the_old_meaning_of_o():
    """`--out` names the written model whatever OUT's extension; `-o` does only with a model
    file's extension, so the fix texts use `--out`."""
    from bncheck.rules import REGISTRY

    for rule in REGISTRY.values():
        assert "-o OUT" not in rule.fix and "-o\n" not in rule.fix, rule.code


def test_rules_unknown_code(cli, assert_usage_error):
    assert_usage_error(cli("rules", "BN999"), "unknown rule BN999")

"""The commands of bncheck/cli/app.py through the real CLI: one meaning for ``-o`` (the
report, in every command), with the old ``-o MODEL`` of fold/recalibrate/merge still read,
with a one-sentence warning."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "sample_models" / "digits_cnn.onnx"


def test_fold_writes_the_model_to_out_and_the_report_to_o(cli, tmp_path):
    model, run = tmp_path / "f.onnx", tmp_path / "run.json"
    result = cli("fold", DIGITS, "--out", model, "-o", run, "--no-timing", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    onnx.checker.check_model(onnx.load(str(model)))
    assert json.loads(run.read_text())["command"] == "fold"


def test_the_contract_s_o_out_writes_the_model_without_a_warning(cli, tmp_path):
    model = tmp_path / "f.onnx"
    result = cli("fold", DIGITS, "-o", model, "--no-timing", "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert model.is_file() and json.loads(result.stdout)["command"] == "fold"
    assert "warning" not in result.stderr, result.stderr


def test_fold_without_out_says_what_to_give(cli, assert_usage_error, tmp_path):
    assert_usage_error(cli("fold", DIGITS, "-o", tmp_path / "run.json"), "--out FILE")


def test_merge_reads_the_old_o_with_a_warning(cli, tmp_path):
    result = cli("merge", tmp_path / "missing.npz", "-o", tmp_path / "stats.npz")
    lines = result.stderr.splitlines()
    assert result.exit_code == 2
    assert lines[0].startswith("warning: -o is deprecated in bncheck merge") and "--out" in lines[0]
    assert lines[1].startswith("error: ") and "missing.npz" in lines[1]
    assert len(lines) == 2


def _bncheck(*args, env=None, stderr=None):
    import os
    import subprocess
    import sys

    full = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "bncheck", *map(str, args)], capture_output=stderr is None, stderr=stderr, text=True, env=full, cwd=ROOT, timeout=300)


def test_enumerated_options_list_their_values_and_accept_any_case(cli):
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    text = " ".join(CliRunner().invoke(app, ["recalibrate", "--help"], env={"COLUMNS": "250"}).stdout.split())
    assert "exact|cumulative|ema" in text and "onnx|export|torchscript|state-dict" in text and "exclude|fail|keep" in text
    upper = cli("audit", DIGITS, "-f", "JSON")
    assert upper.exit_code == 0 and json.loads(upper.stdout)["command"] == "audit"
    bad = cli("audit", DIGITS, "-f", "yaml")
    assert bad.exit_code == 2 and "yaml" in bad.stderr and "table" in bad.stderr


def test_shell_completion_offers_the_values():
    import os
    import shlex
    import subprocess
    import sys

    # typer finds the shell among the process's ancestors: run from bash, as a user does (a
    # test process with no shell above it, started in the background, got "Shell not supported";
    # the "exit" keeps bash from replacing itself by the command)
    command = f"{shlex.quote(sys.executable)} -m bncheck --show-completion"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = subprocess.run(["bash", "-c", command + "; exit $?"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert script.returncode == 0 and "_BNCHECK_COMPLETE" in script.stdout, script.stderr
    words = _bncheck(env={"_BNCHECK_COMPLETE": "complete_bash", "COMP_WORDS": "bncheck drift m.onnx --fail-on ", "COMP_CWORD": "4"})
    assert words.stdout.split() == ["error", "warning", "info", "never"]


def test_debug_and_verbose_are_read_anywhere_on_the_line(cli, tmp_path):
    missing = tmp_path / "missing.onnx"
    plain = cli("audit", missing)
    after = cli("audit", missing, "--debug")
    before = cli("--debug", "audit", missing)
    assert plain.exit_code == after.exit_code == before.exit_code == 2
    assert "Traceback" not in plain.stderr
    assert "Traceback" in after.stderr and "Traceback" in before.stderr
    assert cli("audit", DIGITS, "--verbose", "-q").exit_code == 0


def _long_named_model(tmp_path: Path, name: str) -> Path:
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import _onnx_bn

    model, _ = _onnx_bn(3)
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            node.name = name
    path = tmp_path / "long.onnx"
    onnx.save(model, str(path))
    return path


def test_tables_fit_the_width_and_fold_long_layer_names(tmp_path):
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    name = "backbone.stage4.block17.residual_branch.conv_bn_activation.batch_norm_with_a_long_name"
    model = _long_named_model(tmp_path, name)
    for width in (80, 100, 160):
        out = CliRunner().invoke(app, ["audit", str(model)], env={"COLUMNS": str(width), "NO_COLOR": "1"}).stdout
        headline, *lines = out.splitlines()
        assert headline.startswith("bncheck audit ") and headline.endswith(")"), out  # one line, never wrapped
        assert max(len(line) for line in lines) <= width, (width, out)
        assert "…" not in out  # nothing cut
        cells = "".join(line.split("│")[2].strip() for line in lines if line.startswith("│"))
        assert name in cells, out  # the name, folded over rows, is whole
    drift = CliRunner().invoke(
        app, ["drift", str(DIGITS), str(ROOT / "sample_models/data/digits/shifted"), "--mismatch-samples", "0"], env={"COLUMNS": "80"}
    ).stdout
    assert max(len(line) for line in drift.splitlines()[1:]) <= 80 and "not shown at 80 columns" in drift


def _layer_rows(out: str) -> list[str]:
    """The body rows of the BN layers table (between its heading rule and its bottom rule)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("┡"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("└"))
    return lines[start + 1 : end]


def test_narrow_tables_keep_every_number_whole_and_one_row_per_layer(tmp_path):
    """At 60 and 100 columns static columns give way, so that no figure, heading or short layer
    name is broken over two lines (`0.035` / `3` was shown for a score of 0.0353)."""
    from typer.testing import CliRunner

    from bncheck.cli.app import app
    from bncheck.formats.common import fmt_num

    run = tmp_path / "run.json"
    data = str(ROOT / "sample_models/data/digits/shifted")
    CliRunner().invoke(app, ["drift", str(DIGITS), data, "--mismatch-samples", "0", "-f", "json", "-o", str(run)])
    layers = json.loads(run.read_text())["layers"]
    for width in (60, 80, 100):
        out = CliRunner().invoke(app, ["report", str(run)], env={"COLUMNS": str(width), "NO_COLOR": "1"}).stdout
        rows = _layer_rows(out)
        assert len(rows) == len(layers), (width, out)  # one line per layer: nothing wrapped
        for row, layer in zip(rows, layers, strict=True):
            cells = [cell.strip() for cell in row.split("│")[1:-1]]
            assert layer["name"] in cells and fmt_num(layer["drift"]["score"]) in cells, (width, out)
        assert max(len(line) for line in out.splitlines()[1:]) <= width


def test_unknown_columns_are_left_out(tmp_path, save_model, tiny_cnn):
    """A state dict without --arch has no producers; a saved audit report has no statistics:
    columns of "?" (and "none", which means BN004) are not drawn."""
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    path = save_model(tiny_cnn, tmp_path, "state_dict")
    out = CliRunner().invoke(app, ["audit", str(path)], env={"COLUMNS": "100", "NO_COLOR": "1"}).stdout
    heading = next(line for line in out.splitlines() if line.startswith("┃"))
    assert "producer" not in heading and "fold" not in heading and "running stats" in heading
    assert "μ∈[" in out
    run = tmp_path / "audit.json"
    CliRunner().invoke(app, ["audit", str(DIGITS), "-f", "json", "-o", str(run)])
    out = CliRunner().invoke(app, ["report", str(run)], env={"COLUMNS": "160", "NO_COLOR": "1"}).stdout
    assert "running stats" not in out and "none" not in out and "producer" in out


def test_fold_shows_its_steps_on_a_terminal_and_nothing_in_a_pipe(tmp_path):
    import os
    import pty
    import select
    import subprocess
    import sys

    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "bncheck", "fold", str(DIGITS), "--out", str(tmp_path / "f.onnx"), "-f", "json"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=ROOT)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=300)
    os.close(master)
    assert proc.returncode == 0
    assert b"fold" in seen and (b"writing OUT" in seen or b"verifying" in seen), seen[-500:]
    piped = _bncheck("fold", DIGITS, "--out", tmp_path / "g.onnx", "-f", "json")
    assert piped.returncode == 0 and piped.stderr == ""


def test_help_shows_no_value_type_for_flags():
    """typer printed `--trust-pickle <bool>`, as if the flag wanted true/false after it."""
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    for args in ([], ["audit"], ["drift"], ["fold"], ["recalibrate"], ["report"], ["config"]):
        out = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "120", "NO_COLOR": "1"}).stdout
        assert "<bool>" not in out and "--help" in out, args
    out = CliRunner().invoke(app, ["audit", "--help"], env={"COLUMNS": "120", "NO_COLOR": "1"}).stdout
    assert "<error|warning|info|never>" in out  # options that take a value still say which


def _renamed_digits(tmp_path: Path) -> tuple[Path, list[str]]:
    """The digits model with its BN nodes named as paddle2onnx names them (24 characters)."""
    model = onnx.load(str(DIGITS))
    names = []
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            node.name = f"p2o.BatchNormalization.{len(names)}"
            names.append(node.name)
    path = tmp_path / "p2o.onnx"
    onnx.save(model, str(path))
    return path, names


def test_layer_names_that_fit_are_never_broken_and_fold_keeps_its_outcome(tmp_path):
    """rich narrowed the layer column together with the running statistics: at 100 columns
    PP-OCR's `p2o.BatchNormalization.0` showed as `p2o.BatchNormalization` / `.0` while a
    narrower terminal showed it whole. A fold report at 60 columns gave up its fold column (the
    command's outcome) before the running statistics; a column with no finding on any row is
    not drawn."""
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    model, names = _renamed_digits(tmp_path)
    for width in (60, 70, 80, 90, 100, 120):
        for args in (["audit", model], ["fold", model, "--out", tmp_path / f"f{width}.onnx", "--no-timing"]):
            result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": str(width), "NO_COLOR": "1"})
            assert result.exit_code == 0, result.output
            out = result.stdout
            rows = _layer_rows(out)
            cells = [[cell.strip() for cell in row.split("│")[1:-1]] for row in rows]
            assert [c[1] for c in cells if c[1]] == names, (width, out)  # each name whole, on one line
            heading = next(line for line in out.splitlines() if line.startswith("┃"))
            assert "findings" not in heading, out
            if args[0] == "fold":
                assert "fold" in heading and out.count("folded →") == len(names), (width, out)


def test_data_help_says_where_layout_and_arrays_defaults_come_from():
    """--help said "--layout ... (default: nchw)" while the layout comes from the model's input
    shape (README), and "--arrays auto (default)" without saying what auto does."""
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    for command in ("drift", "recalibrate"):
        text = " ".join(CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"}).stdout.split())
        assert "(default: from the model's input shape, else nchw)" in text and "(default: nchw)" not in text
        assert "a batch where the model declares none" in text


def test_findings_keep_long_layer_names_whole_on_a_narrow_terminal():
    """At 60 columns the findings table gave layer names a quarter of the width and broke
    them (`/bn1/BatchNorma` / `lization`); a name that does not fit goes whole on the first
    line of the message cell."""
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    data = str(ROOT / "sample_models/data/digits/shifted")
    for width, inline in ((60, True), (160, False)):
        result = CliRunner().invoke(app, ["drift", str(DIGITS), data, "--mismatch-samples", "0"], env={"COLUMNS": str(width), "NO_COLOR": "1"})
        assert result.exit_code == 1, result.output
        lines = result.stdout.splitlines()
        table = lines[lines.index(next(x for x in lines if x.startswith("Findings"))) :]
        table = table[: table.index(next(x for x in table if x.startswith("└")))]
        cells = [cell.strip() for line in table if line.startswith("│") for cell in line.split("│")[1:-1]]
        for name in ("/bn1/BatchNormalization", "/bn2/BatchNormalization", "/bn3/BatchNormalization"):
            assert (f"{name}:" in cells) is inline and (name in cells) is not inline, (width, result.stdout)
        assert max(len(line) for line in lines[1:]) <= width


def test_bn103_fix_covers_a_finding_that_suggests_no_option(cli):
    """PP-OCRv4's recogniser on grayscale text lines: BN103 said "check scale (0-1 vs 0-255),
    mean/std, ..." and suggested no option, while its "How to fix" said "Apply the suggested
    options"."""
    out = " ".join(cli("rules", "BN103").stdout.split())
    assert "Apply the options the finding suggests" in out and "where it suggests none, compare the scale" in out


def test_o_help_of_fold_and_recalibrate_says_it_can_name_the_model():
    """`bncheck fold --help` said "-o: Write the report to FILE instead of stdout." while the
    contract's `bncheck fold MODEL -o OUT` writes the model there; audit and drift keep it."""
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    for command, models in (("fold", True), ("recalibrate", True), ("drift", False), ("audit", False)):
        out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "250", "NO_COLOR": "1"}).stdout
        text = " ".join(out.replace("│", " ").split())
        assert ("is the model to write instead, as --out" in text) is models, command
        assert "Write the report to FILE instead of stdout" in text


def test_usage_line_names_the_arguments_as_the_help_text_does(cli):
    """fold and recalibrate printed `Usage: bncheck recalibrate [OPTIONS] {model} {data}` (and
    "Missing argument 'data'") while their help text speaks of MODEL, DATA and OUT."""
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    env = {"COLUMNS": "120", "NO_COLOR": "1"}
    usage = {
        name: next(line for line in CliRunner().invoke(app, [name, "--help"], env=env).stdout.splitlines() if "Usage:" in line)
        for name in ("fold", "recalibrate")
    }
    assert "[OPTIONS] {MODEL}" in usage["fold"] and "[OPTIONS] {MODEL} {DATA}" in usage["recalibrate"], usage
    missing = cli("recalibrate", DIGITS)
    assert missing.exit_code == 2 and "Missing argument 'DATA'" in missing.stderr, missing.stderr
    assert "Missing argument 'MODEL'" in cli("fold").stderr


def test_nan_samples_kept_on_purpose_are_named_as_the_cause(cli, tmp_path):
    """``--nan keep`` with a NaN sample: drift and recalibrate exit 2 naming the kept samples
    (not "the data overflowed inside the model"), and recalibrate writes nothing."""
    import numpy as np

    data = tmp_path / "mixed"
    data.mkdir()
    x = np.random.default_rng(0).random((20, 1, 8, 8)).astype(np.float32)
    x[3, 0, 2, 2] = np.nan
    np.save(data / "x.npy", x)
    out = tmp_path / "recalibrated.onnx"
    for args in (("drift", DIGITS, data, "--nan", "keep"), ("recalibrate", DIGITS, data, "--nan", "keep", "--out", out)):
        result = cli(*args)
        assert result.exit_code == 2 and "Traceback" not in result.stderr, result.stderr
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith("error: DATA has 1 sample(s) with NaN or Inf values") and "row 3 of" in error, error
        assert "--nan keep" in error and "overflowed" not in error
    assert not out.exists()
    assert cli("drift", DIGITS, data).exit_code in (0, 1)  # the default excludes the sample


def test_the_text_report_prints_the_preprocessing_used(cli):
    """The contract: image preprocessing comes from options or defaults, and the report prints
    it; the data line ends with the pipeline the samples went through."""
    shifted = ROOT / "sample_models/data/digits/shifted"
    default = cli("drift", DIGITS, shifted, "--mismatch-samples", "0").stdout
    assert "batch size 32; preprocessing: grayscale -> x * 0.00392157 -> (C, H, W)" in default.replace("\n", "")
    chosen = cli("drift", DIGITS, shifted, "--mismatch-samples", "0", "--mean", "0.5", "--std", "0.25", "-f", "markdown").stdout
    line = next(line for line in chosen.splitlines() if line.startswith("**Data**"))
    assert "preprocessing: `" in line and "0.5" in line and "0.25" in line, line


@pytest.mark.parametrize(
    ("out", "fmt", "ok"),
    [("r.json", "markdown", False), ("r.json", "table", False), ("r.md", "json", False), ("r.xml", "json", False),
     ("r.json", "sarif", True), ("r.json", "gitlab", True), ("r.md", "github", True), ("r.json", "json", True)],
)  # fmt: skip
def test_a_format_that_contradicts_the_output_extension_is_refused(tmp_path, out, fmt, ok):
    """``-o r.json -f markdown`` wrote Markdown into a .json file; a format the extension cannot
    hold is refused before any work (exit 2, nothing written), JSON dialects into .json and
    GitHub's Markdown summary into .md still go."""
    from typer.testing import CliRunner

    from bncheck.cli.app import app

    model = Path(__file__).resolve().parents[2] / "sample_models" / "digits_cnn.onnx"
    result = CliRunner().invoke(app, ["audit", str(model), "-o", str(tmp_path / out), "-f", fmt])
    if ok:
        assert result.exit_code == 0 and (tmp_path / out).exists(), result.output
    else:
        assert result.exit_code == 2 and not (tmp_path / out).exists()
        assert f"is a {Path(out).suffix} file but the format is {fmt}" in " ".join(result.output.split())

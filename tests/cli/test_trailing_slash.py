"""A file to write typed with a trailing slash (``--out dir/x.onnx/``, ``-o report.json/``) names
a directory: pathlib drops the slash, and bncheck wrote ``dir/x.onnx`` as if it had been asked to."""

from __future__ import annotations

from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
MODEL = SAMPLES / "digits_cnn.onnx"
DATA = SAMPLES / "data" / "digits" / "shifted"


@pytest.mark.parametrize(
    ("args", "typed", "option"),
    [
        (["fold", MODEL, "--out"], "x.onnx/", "'--out'"),
        (["fold", MODEL, "-o"], "x.onnx/", "'-o'"),
        (["fold", MODEL, "--out", "{tmp}/y.onnx", "-o"], "r.json/", "'-o'"),
        (["recalibrate", MODEL, DATA, "--out"], "x.onnx/", "'--out'"),
        (["audit", MODEL, "-o"], "report.json/", "'-o'"),
        (["audit", MODEL, "--output"], "report.json/", "'--output'"),
        (["drift", MODEL, DATA, "--save-stats"], "stats.npz/", "'--save-stats'"),
        (["drift", MODEL, DATA, "--plot"], "drift.png/", "'--plot'"),
        (["merge", SAMPLES / "missing.npz", "--out"], "merged.npz/", "'--out'"),
    ],
)
def test_a_trailing_slash_names_a_directory_and_is_refused(cli, assert_usage_error, tmp_path, args, typed, option):
    args = [str(a).format(tmp=tmp_path) for a in args]
    result = cli(*args, f"{tmp_path}/{typed}")
    line = assert_usage_error(result, option, f"{tmp_path}/{typed} ends in a slash, so it names a directory", "name the file to write")
    assert "Traceback" not in result.stderr and line.count("error:") == 1
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the file without the slash


def test_the_same_file_without_the_slash_is_written(cli, tmp_path):
    result = cli("audit", MODEL, "-o", f"{tmp_path}/report.json")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "report.json").is_file()


def test_the_python_api_refuses_a_trailing_slash_too(tmp_path):
    """``bncheck.fold(model, "dir/x.onnx/")`` (and recalibrate) said nothing and wrote dir/x.onnx."""
    from bncheck.commands.fold import fold
    from bncheck.commands.recalibrate import recalibrate
    from bncheck.errors import UsageError

    samples = Path(__file__).resolve().parents[2] / "sample_models"
    target = f"{tmp_path}/x.onnx/"
    with pytest.raises(UsageError, match="ends in a slash"):
        fold(samples / "digits_cnn.onnx", target)
    with pytest.raises(UsageError, match="ends in a slash"):
        recalibrate(samples / "digits_cnn.onnx", samples / "data" / "digits" / "reference", target)
    assert not (tmp_path / "x.onnx").exists()

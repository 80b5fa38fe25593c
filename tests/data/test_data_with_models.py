"""The data pipeline feeds the sample models exactly what they were trained on: accuracies
through onnxruntime match the ones recorded when the samples were made (summary.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bncheck.data import DataOptions, open_data

ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
SUMMARY = json.loads((SAMPLES / "summary.json").read_text())


def accuracy(model: str, data: Path, labels: Path | None = None, **options) -> float:
    session = ort.InferenceSession(str(SAMPLES / f"{model}.onnx"), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    dataset = open_data(data, DataOptions(labels=labels, **options), expected_shape=spec.shape[1:])
    assert dataset.has_labels
    correct = 0
    for batch in dataset.batches():
        logits = session.run(None, {spec.name: batch.x})[0]
        correct += int(np.sum(logits.argmax(axis=1) == batch.y))
    return correct / dataset.num_samples


@pytest.mark.parametrize("split", ["reference", "shifted"])
def test_digits_png_folders(split):
    got = accuracy("digits_cnn", SAMPLES / "data" / "digits" / split, workers=2)
    assert got == pytest.approx(SUMMARY["digits_cnn"]["accuracy"][split], abs=1e-4)


def test_digits_npz():
    got = accuracy("digits_cnn", SAMPLES / "data" / "digits" / "reference.npz", batch_size=100)
    assert got == pytest.approx(SUMMARY["digits_cnn"]["accuracy"]["reference"], abs=1e-4)


@pytest.mark.parametrize("split", ["reference", "shifted"])
def test_cancer_csv_with_labels_file(split):
    data = SAMPLES / "data" / "cancer"
    got = accuracy("cancer_mlp", data / f"{split}.csv", data / f"{split}_labels.csv", batch_size=16)
    assert got == pytest.approx(SUMMARY["cancer_mlp"]["accuracy"][split], abs=1e-4)

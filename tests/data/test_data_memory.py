"""DATA as Python objects through the API (bncheck.drift / bncheck.recalibrate): numpy arrays,
tensors, (x, y) pairs, torch DataLoaders and Datasets, iterables, PIL images with a transform.
Every form gives the report the CLI gives on the same data on disk, and bad objects give one
sentence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, TensorDataset
from typer.testing import CliRunner

import bncheck
from bncheck.cli.app import app
from bncheck.data import DataOptions
from bncheck.errors import DataError, UsageError
from bncheck.report.io import report_from_dict

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
DIGITS = SAMPLES / "data" / "digits"
MODELS = [SAMPLES / "digits_cnn.onnx", SAMPLES / "digits_cnn.pt2"]


def cli_report(*args) -> bncheck.Report:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code in (0, 1), result.output
    return _parse(result.stdout)


def _parse(text: str) -> bncheck.Report:
    return report_from_dict(json.loads(text))


def numbers(figures: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in figures.items():
        if isinstance(value, dict):
            out.update(numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)):
            out[prefix + key] = value
    return out


def same_figures(api: bncheck.Report, cli: bncheck.Report) -> None:
    assert list(api.result.layers) == list(cli.result.layers)
    for name, figures in cli.result.layers.items():
        got = numbers(api.result.layers[name])
        for key, value in numbers(figures).items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, key)
    assert [(f.rule, f.layer) for f in api.findings] == [(f.rule, f.layer) for f in cli.findings]
    assert api.result.accuracy == cli.result.accuracy
    assert api.passed == cli.passed


@pytest.fixture(scope="module")
def reference():
    with np.load(DIGITS / "reference.npz") as archive:
        return archive["x"], archive["y"]


@pytest.fixture(scope="module", params=MODELS, ids=lambda p: p.suffix)
def model_and_cli(request):
    return request.param, cli_report("drift", request.param, DIGITS / "reference.npz", "-f", "json")


def _forms(x: np.ndarray, y: np.ndarray):
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    return {
        "ndarray": (x, False),
        "tensor": (tx, False),
        "pair": ((x, y), True),
        "dataset": (TensorDataset(tx, ty), True),
        "loader": (DataLoader(TensorDataset(tx, ty), batch_size=50), True),
        "shuffled loader": (DataLoader(TensorDataset(tx, ty), batch_size=64, shuffle=True), True),
        "list of batches": ([x[:100], x[100:]], False),
        "iterator of pairs": (iter([(tx[:10], ty[:10]), (tx[10:], ty[10:])]), True),
    }


@pytest.mark.parametrize("form", list(_forms(np.zeros((1, 1, 8, 8)), np.zeros(1))))
def test_every_form_gives_the_cli_figures(model_and_cli, reference, form):
    model, cli = model_and_cli
    data, labelled = _forms(*reference)[form]
    api = bncheck.drift(model, data, options=bncheck.DriftOptions(mismatch_samples=256 if form != "shuffled loader" else 0))
    assert api.result.data["samples"] == 540 and api.result.data["kind"] == "memory"
    if labelled:
        assert api.result.accuracy == pytest.approx(0.9981481, abs=1e-6)
        if form != "shuffled loader":  # the subsample of a shuffled pass differs (BN201/BN301 figures)
            same_figures(api, cli)
    else:
        assert api.result.accuracy is None
    # the statistics do not depend on the order, up to the float32 sums of other batches
    for name, figures in cli.result.layers.items():
        assert api.result.layers[name]["mean_shift"] == pytest.approx(figures["mean_shift"], rel=1e-5)


def test_a_transform_on_an_image_folder_matches_the_cli_pipeline():
    def to_tensor(image):  # what torchvision's ToTensor does to an 8-bit L image
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]

    cli = cli_report("drift", MODELS[0], DIGITS / "shifted", "-f", "json")
    api = bncheck.drift(MODELS[0], DIGITS / "shifted", transform=to_tensor)
    same_figures(api, cli)
    assert api.result.accuracy == pytest.approx(0.85)
    assert "transform" in api.result.data["preprocessing"]["pipeline"]
    seen = []
    bncheck.drift(MODELS[0], DIGITS / "inverted", transform=lambda im: seen.append(im.mode) or to_tensor(im))
    assert set(seen) == {"L"} and len(seen) >= 100  # the model has one channel: L images


def test_pil_images_in_a_dataset_with_and_without_a_transform():
    files = sorted((DIGITS / "shifted").glob("*/*.png"))
    pairs = [(Image.open(f), int(f.parent.name)) for f in files]
    cli = cli_report("drift", MODELS[0], DIGITS / "shifted", "-f", "json")
    same_figures(bncheck.drift(MODELS[0], pairs), cli)  # bncheck's own image pipeline
    scaled = bncheck.drift(MODELS[0], pairs, transform=lambda im: np.asarray(im, dtype=np.float32)[None] / 255)
    same_figures(scaled, cli)


def test_recalibrate_from_a_dataloader_matches_the_cli(tmp_path):
    files = sorted((DIGITS / "shifted").glob("*/*.png"))
    x = np.stack([np.asarray(Image.open(f), dtype=np.float32)[None] / 255 for f in files])
    y = np.array([int(f.parent.name) for f in files])
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=32)
    api = bncheck.recalibrate(MODELS[0], loader, tmp_path / "api.onnx")
    result = CliRunner().invoke(app, ["recalibrate", str(MODELS[0]), str(DIGITS / "shifted"), "--out", str(tmp_path / "cli.onnx"), "-f", "json"])
    cli = _parse(result.stdout)
    assert api.result.summary["accuracy"] == cli.result.summary["accuracy"]
    assert api.result.summary["accuracy"]["after"] > 0.98
    a, b = onnx.load(tmp_path / "api.onnx"), onnx.load(tmp_path / "cli.onnx")
    got = {i.name: onnx.numpy_helper.to_array(i) for i in a.graph.initializer}
    for init in b.graph.initializer:
        np.testing.assert_allclose(got[init.name], onnx.numpy_helper.to_array(init), rtol=1e-6, atol=1e-7)


class _Stream(IterableDataset):
    def __init__(self, x):
        self.x = x

    def __iter__(self):
        return iter(torch.from_numpy(self.x))


def test_an_iterable_dataset_of_samples_and_a_torch_module(reference):
    x, _ = reference
    got = bncheck.drift(MODELS[0], _Stream(x), options=bncheck.DriftOptions(batch_size=8))
    assert got.result.data["samples"] == 540 and got.result.data["preprocessing"]["read_as"] == "sample"
    assert got.result.data["batch_size"] == 8  # the pass's batch size, not DataOptions' default


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        ([], DataError, "is empty"),
        (iter(()), DataError, "is empty"),
        ([np.zeros((3, 1, 9, 8), np.float32)], DataError, "expects (1, 8, 8)"),
        ([np.zeros((3, 8, 8, 1), np.float32)], DataError, "channels-last"),
        (np.zeros((5,), np.float32), DataError, "neither one sample nor a batch"),
        (["not an array"], DataError, "is a str, not an array or tensor"),
        ([{"x": 1}], DataError, "is a dict, not an array or tensor"),
        ([np.zeros((2, 1, 8, 8), dtype=object)], DataError, "not real numbers"),
        ([np.zeros((3, 1, 8, 8)), np.zeros((2, 1, 8, 9))], DataError, "every sample must have one shape"),
        ([(np.zeros((3, 1, 8, 8)), np.zeros((3, 10)))], DataError, "one class index per sample"),
        ([(np.zeros((3, 1, 8, 8)), np.zeros(3)), np.zeros((3, 1, 8, 8))], DataError, "has no labels"),
        ([np.full((4, 1, 8, 8), np.nan)], DataError, "4 sample(s) with NaN or Inf were excluded"),
        ({"x": np.zeros((2, 1, 8, 8))}, UsageError, "DATA is a dict"),
        (5, UsageError, "DATA is an int"),
    ],
)
def test_bad_objects_give_one_sentence(data, error, words):
    with pytest.raises(error) as caught:
        bncheck.drift(MODELS[0], data)
    message = str(caught.value)
    assert words in message and "\n" not in message and message.endswith(".")


def test_nan_fail_names_the_sample_and_an_iterator_cannot_be_read_twice(tmp_path):
    with pytest.raises(DataError, match=r"sample 1 \(row 1 of batch 0 of DATA <list>\) contains NaN"):
        x = np.zeros((4, 1, 8, 8), np.float32)
        x[1, 0, 2, 2] = np.nan
        bncheck.drift(MODELS[0], [x], options=bncheck.DriftOptions(data_options=DataOptions(nan="fail")))
    with pytest.raises(DataError, match="an iterator, which can be read once"):
        bncheck.recalibrate(MODELS[0], iter([np.random.default_rng(0).random((8, 1, 8, 8), np.float32)]), tmp_path / "out.onnx")


def test_transform_errors_are_one_sentence():
    with pytest.raises(DataError, match=r"transform= gives samples of shape \(2, 2\)"):
        bncheck.drift(MODELS[0], DIGITS / "shifted", transform=lambda im: np.zeros((2, 2)))
    with pytest.raises(DataError, match="transform= failed on .*png with ZeroDivisionError"):
        bncheck.drift(MODELS[0], DIGITS / "shifted", transform=lambda im: 1 / 0)
    with pytest.raises(UsageError, match="size would be ignored"):
        options = bncheck.DriftOptions(data_options=DataOptions(images={"size": 8}))
        bncheck.drift(MODELS[0], DIGITS / "shifted", options=options, transform=lambda im: im)
    with pytest.raises(UsageError, match="must be a callable"):
        bncheck.drift(MODELS[0], DIGITS / "shifted", transform="ToTensor")
    with pytest.raises(UsageError, match="read in this process only"):
        bncheck.drift(MODELS[0], [np.zeros((2, 1, 8, 8))], options=bncheck.DriftOptions(shard=(0, 2)))

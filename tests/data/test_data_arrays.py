""".npy / .npz / .pt files -> samples: batches and single samples, label arrays, dtypes,
shape checks against the model input, and broken files."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bncheck.data import DataOptions, open_data
from bncheck.errors import DataError

ROOT = Path(__file__).resolve().parents[2]


def collect(path, expected=None, **options):
    options.setdefault("workers", 0)
    dataset = open_data(path, DataOptions(**options), expected_shape=expected)
    return dataset, *dataset.collect()


def test_npy_batch_is_read_exactly(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 2, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    dataset, got, y = collect(tmp_path / "x.npy", batch_size=7)
    assert dataset.kind == "arrays" and dataset.sample_shape == (2, 3) and y is None
    np.testing.assert_array_equal(got, x)


def test_npy_single_samples_in_a_folder_with_the_model_shape(tmp_path):
    rng = np.random.default_rng(1)
    samples = [rng.normal(size=(1, 4, 4)) for _ in range(5)]
    for i, s in enumerate(samples):
        np.save(tmp_path / f"s{i}.npy", s)
    dataset, got, _ = collect(tmp_path, expected=(1, 4, 4))
    assert dataset.num_samples == 5 and got.shape == (5, 1, 4, 4)
    np.testing.assert_allclose(got, np.stack(samples).astype(np.float32))
    # without the model's shape each file is a batch (of 1 sample of (4, 4)) unless told
    assert open_data(tmp_path, DataOptions()).sample_shape == (4, 4)
    assert open_data(tmp_path, DataOptions(arrays="sample")).sample_shape == (1, 4, 4)


def test_dtypes_are_cast_to_float32(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.int16).reshape(4, 3))
    np.save(tmp_path / "b.npy", np.array([[True, False, True]]))
    np.save(tmp_path / "c.npy", np.full((2, 3), 0.1, dtype=np.float64))
    _, got, _ = collect(tmp_path)
    assert got.dtype == np.float32 and got.shape == (7, 3)
    np.testing.assert_array_equal(got[:4], np.arange(12).reshape(4, 3))
    np.testing.assert_array_equal(got[4], [1, 0, 1])
    np.testing.assert_array_equal(got[5:], np.float32(0.1))


def test_fortran_order_npy(tmp_path):
    x = np.asfortranarray(np.random.default_rng(2).normal(size=(9, 5)))
    np.save(tmp_path / "f.npy", x)
    _, got, _ = collect(tmp_path / "f.npy", batch_size=4)
    np.testing.assert_array_equal(got, x.astype(np.float32))


def test_npz_every_array_with_labels(tmp_path):
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(2, 3))
    np.savez_compressed(tmp_path / "d.npz", a=a, b=b, labels=np.array([0, 1, 2, 3, 4, 5]))
    dataset, got, y = collect(tmp_path / "d.npz", batch_size=5)
    np.testing.assert_allclose(got, np.concatenate([a, b]).astype(np.float32))
    assert y.tolist() == [0, 1, 2, 3, 4, 5]
    assert dataset.describe()["labels"] == {"source": "arrays"}


def test_sample_npz_matches_the_image_folder():
    ref = np.load(ROOT / "sample_models/data/digits/reference.npz")
    dataset, got, y = collect(ROOT / "sample_models/data/digits/reference.npz", expected=(1, 8, 8), batch_size=64)
    np.testing.assert_array_equal(got, ref["x"])
    np.testing.assert_array_equal(y, ref["y"])


def test_npz_labels_of_the_wrong_length(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3)), y=np.zeros(3, dtype=int))
    with pytest.raises(DataError, match=r"\[y\] has shape \(3,\) but the file holds 4 samples"):
        open_data(tmp_path / "d.npz", DataOptions())


def test_pt_tensor_dict_and_list(tmp_path):
    torch = pytest.importorskip("torch")
    t = torch.arange(24, dtype=torch.float64).reshape(6, 4)
    torch.save(t, tmp_path / "a.pt")
    torch.save({"x": t[:2].to(torch.bfloat16), "targets": torch.tensor([7, 8])}, tmp_path / "b.pt")
    torch.save([t[:1].int(), t[1:3]], tmp_path / "c.pt")
    _, got, y = collect(tmp_path / "a.pt", batch_size=4)
    np.testing.assert_array_equal(got, t.numpy().astype(np.float32))
    assert y is None
    _, got, y = collect(tmp_path / "b.pt")
    np.testing.assert_array_equal(got, t[:2].numpy())
    assert y.tolist() == [7, 8]
    _, got, _ = collect(tmp_path / "c.pt")
    np.testing.assert_array_equal(got, t[:3].numpy())
    # a folder mixing .pt and .npy files is one kind: arrays
    np.save(tmp_path / "d.npy", np.ones((1, 4)))
    dataset, got, y = collect(tmp_path)
    assert len(got) == 6 + 2 + 3 + 1 and y is None  # not every file has labels: none


class PickledThing:
    """Not a tensor: torch.load(weights_only=True) refuses to unpickle it."""


def test_pt_that_is_not_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"x": torch.zeros(2, 3), "epoch": 3}, tmp_path / "a.pt")
    with pytest.raises(DataError, match=r"a\.pt\[epoch\] is a int, not a tensor"):
        open_data(tmp_path / "a.pt", DataOptions())

    torch.save(PickledThing(), tmp_path / "b.pt")
    with pytest.raises(DataError, match="weights_only=True"):
        open_data(tmp_path / "b.pt", DataOptions())


def test_channels_last_arrays_are_refused_with_the_fix(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 8, 8, 3), np.float32))
    with pytest.raises(DataError, match=r"channels-last .*np\.transpose\(x, \(0, 3, 1, 2\)\)"):
        open_data(tmp_path / "x.npy", DataOptions(), expected_shape=(3, 8, 8))


def test_missing_channel_axis_and_other_shapes(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 8, 8), np.float32))
    # rank 3 = one sample of the model's rank, but (10, 8, 8) is not (1, 8, 8)
    with pytest.raises(DataError, match=r"expects \(1, 8, 8\) per sample"):
        open_data(tmp_path / "x.npy", DataOptions(), expected_shape=(1, 8, 8))
    with pytest.raises(DataError, match=r"lacks an axis of size 1 .*np\.expand_dims\(x, 1\)"):
        open_data(tmp_path / "x.npy", DataOptions(arrays="batch"), expected_shape=(1, 8, 8))
    np.save(tmp_path / "x.npy", np.zeros((10, 64), np.float32))
    with pytest.raises(DataError, match=r"reshape it to \(N, 1, 8, 8\)"):
        open_data(tmp_path / "x.npy", DataOptions(arrays="batch"), expected_shape=(1, 8, 8))
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 4, 5, 6), np.float32))
    with pytest.raises(DataError, match=r"neither one sample nor a batch"):
        open_data(tmp_path / "x.npy", DataOptions(), expected_shape=(4,))


def test_arrays_with_different_sample_shapes(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 4)))
    np.save(tmp_path / "b.npy", np.zeros((3, 5)))
    with pytest.raises(DataError, match=r"a\.npy has samples of shape \(4,\) but .*b\.npy has \(5,\)"):
        open_data(tmp_path, DataOptions())


def test_non_numeric_and_broken_arrays(tmp_path):
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(DataError, match="<U1 values, not real numbers"):
        open_data(tmp_path / "s.npy", DataOptions())
    (tmp_path / "bad.npy").write_bytes(b"not an array at all")
    with pytest.raises(DataError, match=r"bad\.npy is not a valid \.npy array"):
        open_data(tmp_path / "bad.npy", DataOptions())
    (tmp_path / "bad.npz").write_bytes(b"PK not a zip")
    with pytest.raises(DataError, match=r"bad\.npz is not a valid \.npz archive"):
        open_data(tmp_path / "bad.npz", DataOptions())
    np.save(tmp_path / "t.npy", np.zeros((100, 4), np.float32))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[: len(data) // 2])
    dataset = open_data(tmp_path / "t.npy", DataOptions(workers=0))
    with pytest.raises(DataError, match="truncated"):
        dataset.collect()
    np.savez(tmp_path / "only_labels.npz", y=np.arange(3))
    with pytest.raises(DataError, match="no sample arrays"):
        open_data(tmp_path / "only_labels.npz", DataOptions())


def test_npz_stored_and_deflated_members_stream_the_same(tmp_path):
    x = np.random.default_rng(4).normal(size=(33, 5)).astype(np.float32)
    np.savez(tmp_path / "stored.npz", x=x)
    np.savez_compressed(tmp_path / "deflated.npz", x=x)
    with zipfile.ZipFile(tmp_path / "deflated.npz") as archive:
        assert archive.getinfo("x.npy").compress_type == zipfile.ZIP_DEFLATED
    for name in ("stored.npz", "deflated.npz"):
        _, got, _ = collect(tmp_path / name, batch_size=4)
        np.testing.assert_array_equal(got, x)


def test_overflowing_float64_becomes_inf_and_is_excluded(tmp_path):
    x = np.ones((4, 2))
    x[2, 1] = 1e300
    np.save(tmp_path / "x.npy", x)
    dataset, got, _ = collect(tmp_path / "x.npy")
    assert len(got) == 3 and dataset.describe()["nonfinite_samples"] == 1


def test_one_dimensional_arrays_without_the_model_shape_ask_for_arrays_sample(tmp_path, cli, assert_usage_error):
    """Audio frames saved one per .npy, shape (1024,), for a torch model that declares no input
    shape (torchcrepe's CREPE): auto read each file as a batch of 1024 numbers and the run died
    with "the model cannot run on a batch of shape (32,)", the fix (--arrays sample) unnamed."""
    for i in range(3):
        np.save(tmp_path / f"f{i}.npy", np.zeros(1024, np.float32))
    with pytest.raises(DataError, match=r"f0\.npy of shape \(1024,\) would be read as a batch of 1024 single numbers.*--arrays sample"):
        open_data(tmp_path, DataOptions())
    assert open_data(tmp_path, DataOptions(arrays="sample")).sample_shape == (1024,)
    assert open_data(tmp_path, DataOptions(arrays="batch")).sample_shape == ()  # asked for: kept
    assert open_data(tmp_path, DataOptions(), expected_shape=(1024,)).sample_shape == (1024,)  # the model says so
    torch = pytest.importorskip("torch")
    arch = ROOT / "tests" / "support" / "real_arch" / "crepe.py"
    spec = importlib.util.spec_from_file_location("bncheck_test_arrays_crepe", arch)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = tmp_path.parent / f"{tmp_path.name}_crepe.pt"
    torch.save(module.tiny().state_dict(), model)  # CREPE declares no input shape (its first op pads)
    result = cli("drift", model, tmp_path, "--arch", f"{arch}:tiny", "--mismatch-samples", "0")
    assert_usage_error(result, "would be read as a batch of 1024 single numbers", "--arrays sample")

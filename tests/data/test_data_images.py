"""Image files -> samples: every preprocessing step checked against a direct PIL + numpy
computation, grayscale/layout decisions, class-folder labels, and bad images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bncheck.data import DataOptions, ImageOptions, open_data
from bncheck.errors import DataError, UsageError

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "sample_models" / "data" / "digits"


def rgb_image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def write(path: Path, pixels: np.ndarray, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save)
    return path


def load_all(path, expected=None, **image_options) -> np.ndarray:
    options = DataOptions(images=ImageOptions(**image_options), workers=0)
    return open_data(path, options, expected_shape=expected).collect()[0]


def reference(path: Path, *, size=None, crop=None, scale=1 / 255, mean=None, std=None, bgr=False, gray=False, nchw=True):
    """The preprocessing written out directly with PIL and numpy (float64)."""
    image = Image.open(path)
    image = image.convert("L" if gray else "RGB")
    if size is not None:
        image = image.resize((size[1], size[0]), resample=Image.Resampling.BILINEAR)
    if crop is not None:
        w, h = image.size
        top, left = int(round((h - crop[0]) / 2)), int(round((w - crop[1]) / 2))
        image = image.crop((left, top, left + crop[1], top + crop[0]))
    x = np.asarray(image, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, :, None]
    if bgr:
        x = x[:, :, ::-1]
    x = x * scale
    if mean is not None:
        x = x - np.asarray(mean)
    if std is not None:
        x = x / np.asarray(std)
    return x.transpose(2, 0, 1) if nchw else x


def test_defaults_divide_by_255_and_give_chw(tmp_path):
    path = write(tmp_path / "a.png", rgb_image(5, 7, 0))
    x = load_all(path)
    assert x.shape == (1, 3, 5, 7) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[0], reference(path), rtol=0, atol=1e-7)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_resize_crop_bgr_mean_std_against_numpy(tmp_path):
    path = write(tmp_path / "a.png", rgb_image(20, 30, 1))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = load_all(path, size=(16, 24), crop=(10, 12), mean=mean, std=std, channel_order="bgr")
    want = reference(path, size=(16, 24), crop=(10, 12), mean=mean, std=std, bgr=True)
    assert x.shape == (1, 3, 10, 12)
    np.testing.assert_allclose(x[0], want, rtol=0, atol=1e-5)
    # BGR really swaps: channel 0 of the BGR sample is the blue channel of the RGB one
    rgb = load_all(path, size=(16, 24), crop=(10, 12))
    np.testing.assert_allclose(x[0, 0] * std[0] + mean[0], rgb[0, 2], atol=1e-5)


def test_shorter_side_resize_keeps_aspect_like_torchvision(tmp_path):
    path = write(tmp_path / "a.png", rgb_image(30, 45, 2))
    x = load_all(path, size=20, crop=16)
    # shorter side 30 -> 20, longer 45 -> int(20 * 45 / 30) = 30; then center crop 16x16
    want = reference(path, size=(20, 30), crop=(16, 16))
    assert x.shape == (1, 3, 16, 16)
    np.testing.assert_allclose(x[0], want, rtol=0, atol=1e-6)


def test_scale_other_than_255_and_nhwc_layout(tmp_path):
    path = write(tmp_path / "a.png", rgb_image(6, 4, 3))
    x = load_all(path, scale="1/127.5", mean=1.0, layout="nhwc")
    want = reference(path, scale=1 / 127.5, mean=(1.0,), nchw=False)
    assert x.shape == (1, 6, 4, 3)
    np.testing.assert_allclose(x[0], want, rtol=0, atol=1e-6)
    assert x.min() >= -1.0 - 1e-6 and x.max() <= 1.0 + 1e-6


def test_rgb_file_read_as_grayscale_when_the_model_has_one_channel(tmp_path):
    path = write(tmp_path / "a.png", rgb_image(8, 8, 4))
    dataset = open_data(path, DataOptions(workers=0), expected_shape=(1, 8, 8))
    x = dataset.collect()[0]
    np.testing.assert_allclose(x[0], reference(path, gray=True), rtol=0, atol=1e-7)
    prep = dataset.describe()["preprocessing"]
    assert prep["grayscale"] is True and prep["grayscale_from"] == "model"
    assert prep["layout"] == "nchw" and prep["layout_from"] == "model"


def test_grayscale_file_read_as_rgb_when_the_model_has_three_channels(tmp_path):
    gray = np.random.default_rng(5).integers(0, 256, size=(6, 6), dtype=np.uint8)
    path = write(tmp_path / "g.png", gray)
    x = load_all(path, expected=(3, 6, 6))
    assert x.shape == (1, 3, 6, 6)
    for c in range(3):
        np.testing.assert_array_equal(x[0, c], gray / np.float32(255))


def test_channel_count_follows_the_first_image_without_a_model_shape(tmp_path):
    write(tmp_path / "a" / "1.png", np.zeros((4, 4), np.uint8))
    write(tmp_path / "a" / "2.png", rgb_image(4, 4, 6))  # converted to grayscale like the first
    dataset = open_data(tmp_path / "a", DataOptions(workers=0))
    assert dataset.sample_shape == (1, 4, 4)
    assert dataset.describe()["preprocessing"]["grayscale_from"] == "images"
    x = dataset.collect()[0]
    np.testing.assert_allclose(x[1], reference(tmp_path / "a" / "2.png", gray=True), atol=1e-7)


def test_layout_follows_a_channels_last_model(tmp_path):
    path = write(tmp_path / "a.png", rgb_image(5, 6, 7))
    dataset = open_data(path, DataOptions(workers=0), expected_shape=(5, 6, 3))
    assert dataset.sample_shape == (5, 6, 3)
    assert dataset.describe()["preprocessing"]["layout_from"] == "model"
    np.testing.assert_allclose(dataset.collect()[0][0], reference(path, nchw=False), atol=1e-7)


def test_rgba_and_palette_images_become_rgb(tmp_path):
    rgba = np.dstack([rgb_image(4, 4, 8), np.full((4, 4), 17, np.uint8)])
    write(tmp_path / "a.png", rgba)
    palette = Image.fromarray(rgb_image(4, 4, 9)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.save(tmp_path / "b.png")
    x = load_all(tmp_path)
    np.testing.assert_allclose(x[0], rgba[:, :, :3].transpose(2, 0, 1) / 255.0, atol=1e-7)
    np.testing.assert_allclose(x[1], reference(tmp_path / "b.png"), atol=1e-7)


def test_sixteen_bit_grayscale_maps_to_0_255(tmp_path):
    values = np.array([[0, 257, 65535], [32896, 1028, 514]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    x = load_all(path)
    np.testing.assert_allclose(x[0, 0], values / 257.0 / 255.0, rtol=1e-6)


def test_jpeg_bmp_webp_tiff_are_read(tmp_path):
    pixels = rgb_image(8, 8, 10)
    for ext in ("jpg", "jpeg", "bmp", "webp", "tif", "tiff"):
        write(tmp_path / f"img.{ext}", pixels)
    dataset = open_data(tmp_path, DataOptions(workers=0))
    assert dataset.kind == "images" and len(dataset.files) == 6
    x = dataset.collect()[0]
    for i, file in enumerate(dataset.files):
        np.testing.assert_allclose(x[i], reference(file), atol=1e-7)
    # lossless formats round-trip exactly
    lossless = [i for i, f in enumerate(dataset.files) if f.endswith((".bmp", ".tif", ".tiff"))]
    for i in lossless:
        np.testing.assert_array_equal(x[i], pixels.transpose(2, 0, 1) / np.float32(255))


def test_digits_folder_matches_the_reference_arrays():
    dataset = open_data(DIGITS / "reference", DataOptions(), expected_shape=(1, 8, 8))
    x, y = dataset.collect()
    ref = np.load(DIGITS / "reference.npz")
    assert x.shape == ref["x"].shape
    np.testing.assert_array_equal(x, ref["x"])  # bit for bit: x / 255 like the generator
    np.testing.assert_array_equal(y, ref["y"])
    assert dataset.describe()["labels"]["source"] == "folders"


def test_class_folder_names_map_to_sorted_indices(tmp_path):
    for name in ("dog", "cat", "bird"):
        write(tmp_path / name / "x.png", rgb_image(3, 3, 0))
    dataset = open_data(tmp_path, DataOptions(workers=0))
    _, y = dataset.collect()
    # files come in sorted order: bird, cat, dog -> indices 0, 1, 2
    assert y.tolist() == [0, 1, 2]
    assert dataset.describe()["labels"]["class_indices"] == {"bird": 0, "cat": 1, "dog": 2}


def test_numeric_class_folders_keep_their_number(tmp_path):
    for name in ("3", "10", "7"):
        write(tmp_path / name / "x.png", rgb_image(3, 3, 0))
    _, y = open_data(tmp_path, DataOptions(workers=0)).collect()
    assert y.tolist() == [10, 3, 7]  # sorted file order: 10/, 3/, 7/


def test_images_directly_in_data_have_no_labels(tmp_path):
    write(tmp_path / "a.png", rgb_image(3, 3, 0))
    write(tmp_path / "sub" / "b.png", rgb_image(3, 3, 1))
    dataset = open_data(tmp_path, DataOptions(workers=0))
    assert not dataset.has_labels and dataset.collect()[1] is None
    with pytest.raises(DataError, match="class folders"):
        open_data(tmp_path, DataOptions(labels="folders"))
    assert not open_data(DIGITS / "reference", DataOptions(labels="none")).has_labels


def test_mixed_sizes_without_resize_name_the_fix(tmp_path):
    write(tmp_path / "a.png", rgb_image(8, 8, 0))
    write(tmp_path / "b.png", rgb_image(9, 8, 1))
    dataset = open_data(tmp_path, DataOptions(workers=0))
    with pytest.raises(DataError, match=r"b\.png is 9x8 .*a\.png is 8x8.*--size H,W"):
        dataset.collect()
    x = open_data(tmp_path, DataOptions(images=ImageOptions(size=(8, 8)), workers=0)).collect()[0]
    assert x.shape == (2, 3, 8, 8)


def test_images_of_another_size_than_the_model_wants(tmp_path):
    write(tmp_path / "a.png", rgb_image(10, 12, 0))
    with pytest.raises(DataError, match=r"images are 10x12 .*\(3, 8, 8\).*--size 8,8"):
        open_data(tmp_path, DataOptions(), expected_shape=(3, 8, 8))
    # a dynamic model axis takes the data's size
    assert open_data(tmp_path, DataOptions(), expected_shape=(3, None, None)).sample_shape == (3, 10, 12)


def test_channel_and_option_conflicts(tmp_path):
    write(tmp_path / "a.png", rgb_image(4, 4, 0))
    with pytest.raises(DataError, match="--grayscale gives 1 channel but the model expects 3"):
        open_data(tmp_path, DataOptions(images=ImageOptions(grayscale=True)), expected_shape=(3, 4, 4))
    with pytest.raises(DataError, match="expects 4 channels"):
        open_data(tmp_path, DataOptions(), expected_shape=(4, 4, 4))
    with pytest.raises(UsageError, match="--mean has 2 values but the images have 3"):
        open_data(tmp_path, DataOptions(images=ImageOptions(mean=(0.5, 0.5))))
    with pytest.raises(DataError, match=r"--crop 5x5 is larger than .*a\.png \(4x4\)"):
        open_data(tmp_path, DataOptions(images=ImageOptions(crop=5)))
    with pytest.raises(DataError, match="images give"):
        open_data(tmp_path, DataOptions(), expected_shape=(48,))


def test_corrupt_image_is_skipped_with_a_count_or_fails_with_strict(tmp_path, caplog):
    write(tmp_path / "a.png", rgb_image(4, 4, 0))
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    good = write(tmp_path / "c.jpg", rgb_image(4, 4, 1))
    truncated = (tmp_path / "d.jpg")
    truncated.write_bytes(good.read_bytes()[:60])
    dataset = open_data(tmp_path, DataOptions(workers=2))
    with caplog.at_level(logging.WARNING, logger="bncheck.data"):
        x, _ = dataset.collect()
    assert len(x) == 2
    described = dataset.describe()
    assert described["skipped_files"] == 2 and described["samples"] == 2
    assert "b.png" in described["skipped_examples"][0]
    assert "skipped 2 unreadable file(s)" in caplog.text
    with pytest.raises(DataError, match=r"cannot decode .*b\.png.*drop --strict"):
        open_data(tmp_path, DataOptions(strict=True, workers=0)).collect()


def test_first_image_corrupt_is_skipped_at_open_and_strict_fails_at_open(tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    write(tmp_path / "b.png", rgb_image(4, 4, 0))
    assert open_data(tmp_path, DataOptions()).sample_shape == (3, 4, 4)
    with pytest.raises(DataError, match=r"cannot decode .*a\.png"):
        open_data(tmp_path, DataOptions(strict=True))


def test_every_image_corrupt(tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    (tmp_path / "b.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"none of the 2 image file\(s\) can be decoded"):
        open_data(tmp_path, DataOptions())


def test_unreadable_image_is_an_error_not_a_skip(tmp_path, monkeypatch):
    write(tmp_path / "a.png", rgb_image(4, 4, 0))
    locked = write(tmp_path / "b.png", rgb_image(4, 4, 1))
    dataset = open_data(tmp_path, DataOptions(workers=0))
    import builtins

    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if str(file) == str(locked):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    with pytest.raises(DataError, match=r"cannot read .*b\.png: permission denied"):
        dataset.collect()


def test_describe_spells_out_every_default(tmp_path):
    write(tmp_path / "a.png", rgb_image(4, 4, 0))
    prep = open_data(tmp_path, DataOptions()).describe()["preprocessing"]
    assert prep["size"] is None and prep["crop"] is None and prep["mean"] is None and prep["std"] is None
    assert prep["scale"] == pytest.approx(1 / 255) and prep["resample"] == "bilinear"
    assert prep["channel_order"] == "rgb" and prep["grayscale"] is False and prep["layout"] == "nchw"
    assert prep["pipeline"] == "RGB -> x * 0.00392157 -> (C, H, W)"

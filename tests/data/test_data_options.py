"""Data options from the command line (strings) and config files (TOML values), and the
``--preprocess module:fn`` escape hatch."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bncheck.config import load_settings
from bncheck.data import DataOptions, ImageOptions, build_options, open_data
from bncheck.errors import DataError, UsageError


def test_string_values_are_parsed():
    options = ImageOptions(size="224", crop="200x180", scale="1/255", mean="0.485, 0.456,0.406", std=[0.2, 0.2, 0.2],
                           channel_order="BGR", grayscale="false", layout="NHWC", resample="Lanczos")
    assert options.size == 224 and options.crop == (200, 180)
    assert options.scale == pytest.approx(1 / 255)
    assert options.mean == (0.485, 0.456, 0.406) and options.std == (0.2, 0.2, 0.2)
    assert options.channel_order == "bgr" and options.grayscale is False and options.layout == "nhwc"
    assert options.resample == "lanczos"
    assert ImageOptions(size="224,160").size == (224, 160) and ImageOptions(crop=7).crop == (7, 7)
    assert ImageOptions(grayscale="auto").grayscale is None and ImageOptions(layout="auto").layout is None
    data = DataOptions(columns="a, b", limit="10", workers="0", batch_size="8", nan="FAIL", strict="yes", labels="auto")
    assert data.columns == ["a", "b"] and data.limit == 10 and data.workers == 0 and data.batch_size == 8
    assert data.nan == "fail" and data.strict is True and data.labels is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": "big"}, r"--size 'big' must be N or H,W"),
        ({"size": "0"}, r"positive integers"),
        ({"size": "1,2,3"}, r"must be N or H,W"),
        ({"scale": "a/b"}, r"--scale 'a/b' must be a number"),
        ({"scale": 0}, r"finite non-zero"),
        ({"std": "1,0,1"}, r"--std values must be finite and non-zero"),
        ({"channel_order": "rbg"}, r"--channel-order 'rbg' must be one of: rgb, bgr"),
        ({"grayscale": "maybe"}, r"--grayscale must be true, false or auto"),
        ({"resample": "cubic"}, r"--resample 'cubic' must be one of"),
    ],
)
def test_bad_image_option_values(kwargs, message):
    with pytest.raises(UsageError, match=message):
        ImageOptions(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": 0}, r"--limit must be at least 1, not 0"),
        ({"batch_size": "x"}, r"--batch-size must be an integer"),
        ({"workers": -1}, r"--workers must be at least 0"),
        ({"nan": "drop"}, r"--nan 'drop' must be one of: exclude, fail, keep"),
        ({"arrays": "rows"}, r"--arrays 'rows' must be one of: auto, batch, sample"),
        ({"columns": " , "}, r"--columns needs at least one column name"),
    ],
)
def test_bad_data_option_values(kwargs, message):
    with pytest.raises(UsageError, match=message):
        DataOptions(**kwargs)


def test_config_table_then_command_line(tmp_path):
    (tmp_path / "bncheck.toml").write_text(
        textwrap.dedent(
            """
            fail-on = "warning"
            batch-size = 64
            channel-order = "bgr"
            [data]
            size = [32, 48]
            mean = [0.5, 0.5, 0.5]
            workers = 1
            """
        )
    )
    settings = load_settings(tmp_path / "bncheck.toml")
    options = build_options(settings.options, {"workers": 3, "limit": None, "crop": "16"})
    assert options.batch_size == 64 and options.workers == 3 and options.limit is None
    assert options.images.channel_order == "bgr" and options.images.size == (32, 48)
    assert options.images.mean == (0.5, 0.5, 0.5) and options.images.crop == (16, 16)
    again = options.with_overrides(batch_size=8, size=None)
    assert again.batch_size == 8 and again.images.size == (32, 48) and again.workers == 3


def _image_folder(root: Path) -> Path:
    for label in ("a", "b"):
        for i in range(3):
            folder = root / label
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4), i * 50, np.uint8)).save(folder / f"{i}.png")
    (root / "a" / "notes.txt").write_text("not an image")
    return root


def test_preprocess_from_a_file(tmp_path):
    data = _image_folder(tmp_path / "data")
    (tmp_path / "prep.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            from PIL import Image

            def read(path):
                if path.suffix != ".png":
                    return None  # skip anything else
                return np.asarray(Image.open(path), dtype=np.float64)[None] * 2.0
            """
        )
    )
    spec = f"{tmp_path / 'prep.py'}:read"
    dataset = open_data(data, DataOptions(preprocess=spec, workers=2), expected_shape=(1, 4, 4))
    x, y = dataset.collect()
    assert dataset.kind == "files" and len(dataset.files) == 7
    assert x.shape == (6, 1, 4, 4) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0, 0, 0], [0, 100, 200, 0, 100, 200])
    assert y.tolist() == [0, 0, 0, 1, 1, 1]
    described = dataset.describe()
    assert described["preprocessing"]["preprocess"] == spec
    assert described["skipped_files"] == 1 and "skipped by --preprocess" in described["skipped_examples"][0]


def test_preprocess_from_a_module(tmp_path, monkeypatch):
    data = _image_folder(tmp_path / "data")
    (tmp_path / "my_prep_module_xyz.py").write_text(
        "import numpy as np\n\ndef flat(path):\n    return np.zeros(5) if path.suffix == '.png' else None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        x, _ = open_data(data, DataOptions(preprocess="my_prep_module_xyz:flat")).collect()
        assert x.shape == (6, 5)
    finally:
        sys.modules.pop("my_prep_module_xyz", None)


def test_preprocess_problems(tmp_path):
    data = _image_folder(tmp_path / "data")
    (tmp_path / "p.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            def boom(path):
                raise ValueError("cannot parse " + path.name)

            def ragged(path):
                return np.zeros(3 if path.name == "1.png" else 2)

            def text(path):
                return np.array(["x"])

            def nothing(path):
                return None

            def sample(path):
                return np.zeros((4, 4, 1))

            value = 3
            """
        )
    )
    p = tmp_path / "p.py"
    with pytest.raises(UsageError, match=r"must look like package\.module:fn"):
        open_data(data, DataOptions(preprocess="no_colon"))
    with pytest.raises(UsageError, match=r"file .*missing\.py does not exist"):
        open_data(data, DataOptions(preprocess=f"{tmp_path / 'missing.py'}:f"))
    with pytest.raises(UsageError, match=r"has no attribute 'absent'"):
        open_data(data, DataOptions(preprocess=f"{p}:absent"))
    with pytest.raises(UsageError, match=r"value is not callable"):
        open_data(data, DataOptions(preprocess=f"{p}:value"))
    with pytest.raises(UsageError, match=r"cannot import module no_such_module_abc"):
        open_data(data, DataOptions(preprocess="no_such_module_abc:f"))
    with pytest.raises(DataError, match=r"failed on .*0\.png with ValueError: cannot parse 0\.png"):
        open_data(data, DataOptions(preprocess=f"{p}:boom"))
    with pytest.raises(DataError, match=r"returned shape \(3,\) for .*1\.png but \(2,\) for .*0\.png"):
        open_data(data, DataOptions(preprocess=f"{p}:ragged", workers=0)).collect()
    with pytest.raises(DataError, match=r"not a numeric array"):
        open_data(data, DataOptions(preprocess=f"{p}:text"))
    with pytest.raises(DataError, match=r"returned None for every one of the 7 file"):
        open_data(data, DataOptions(preprocess=f"{p}:nothing"))
    with pytest.raises(DataError, match=r"returned shape \(4, 4, 1\) .* expects \(1, 4, 4\).*channels-last"):
        open_data(data, DataOptions(preprocess=f"{p}:sample"), expected_shape=(1, 4, 4))

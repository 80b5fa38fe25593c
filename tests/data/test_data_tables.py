""".csv / .parquet -> samples (one row each), column choice, non-numeric data, and the
labels file option."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bncheck.data import DataOptions, open_data
from bncheck.data import tables as tables_module
from bncheck.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
CANCER = ROOT / "sample_models" / "data" / "cancer"


def collect(path, expected=None, **options):
    options.setdefault("workers", 0)
    dataset = open_data(path, DataOptions(**options), expected_shape=expected)
    return dataset, *dataset.collect()


def test_cancer_csv_with_its_labels_file():
    dataset, x, y = collect(CANCER / "reference.csv", expected=(30,), labels=CANCER / "reference_labels.csv", batch_size=16)
    want = pd.read_csv(CANCER / "reference.csv").to_numpy(np.float32)
    np.testing.assert_array_equal(x, want)
    np.testing.assert_array_equal(y, pd.read_csv(CANCER / "reference_labels.csv")["label"].to_numpy())
    assert dataset.kind == "table" and dataset.sample_shape == (30,)
    described = dataset.describe()
    assert described["labels"]["source"] == "file" and described["samples"] == len(want)


def test_non_numeric_columns_are_dropped_and_named(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b", "c"], "f1": [1.0, 2.0, 3.0], "flag": [True, False, True], "f2": [4, 5, 6]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    dataset, x, _ = collect(tmp_path / "t.csv")
    np.testing.assert_array_equal(x, [[1, 1, 4], [2, 0, 5], [3, 1, 6]])
    assert dataset.describe()["preprocessing"]["columns"] == ["f1", "flag", "f2"]
    assert dataset.describe()["preprocessing"]["dropped_columns"] == ["id"]


def test_columns_option_picks_and_orders(tmp_path):
    pd.DataFrame({"a": [1, 2], "b": [3, 4], "c": ["x", "y"]}).to_csv(tmp_path / "t.csv", index=False)
    _, x, _ = collect(tmp_path / "t.csv", columns="b,a")
    np.testing.assert_array_equal(x, [[3, 1], [4, 2]])
    with pytest.raises(DataError, match=r"--columns names 'zz', not in .*t\.csv \(it has: a, b, c\)"):
        open_data(tmp_path / "t.csv", DataOptions(columns=["a", "zz"]))
    with pytest.raises(DataError, match=r"column 'c' of .*t\.csv is not numeric \('x' on row 1\)"):
        open_data(tmp_path / "t.csv", DataOptions(columns="a,c"))


def test_no_numeric_columns_and_wrong_feature_count(tmp_path):
    pd.DataFrame({"a": ["x"], "b": ["y"]}).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match="has no numeric columns"):
        open_data(tmp_path / "t.csv", DataOptions())
    pd.DataFrame({"a": [1.0], "b": [2.0], "name": ["n"]}).to_csv(tmp_path / "u.csv", index=False)
    with pytest.raises(DataError, match=r"has 2 numeric column\(s\) \(a, b\) but the model expects 3 features.*--columns.*left out: name"):
        open_data(tmp_path / "u.csv", DataOptions(), expected_shape=(3,))
    with pytest.raises(DataError, match=r"expects \(1, 8, 8\) per sample; save arrays"):
        open_data(tmp_path / "u.csv", DataOptions(), expected_shape=(1, 8, 8))


def test_a_non_number_after_the_sniffed_rows_stops_with_its_row(tmp_path, monkeypatch):
    monkeypatch.setattr(tables_module, "SNIFF_ROWS", 10)
    values = [str(i) for i in range(200)]
    values[150] = "oops"
    (tmp_path / "t.csv").write_text("a,b\n" + "\n".join(f"{v},1" for v in values) + "\n")
    dataset = open_data(tmp_path / "t.csv", DataOptions(workers=2, batch_size=8))
    with pytest.raises(DataError, match=r"column 'a' of .*t\.csv holds 'oops' on row 151"):
        dataset.collect()


def test_empty_cells_are_nan_and_excluded(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n3,\n5,6\n")
    dataset, x, _ = collect(tmp_path / "t.csv")
    np.testing.assert_array_equal(x, [[1, 2], [5, 6]])
    described = dataset.describe()
    assert described["nonfinite_samples"] == 1 and "sample 1" in described["nonfinite_examples"][0]


def test_parquet_and_csv_in_one_folder(tmp_path):
    pytest.importorskip("pyarrow")
    a = pd.DataFrame({"x": [1.0, 2.0], "y": [3, 4]})
    b = pd.DataFrame({"x": [5.0, None], "y": [7, 8]})
    a.to_csv(tmp_path / "a.csv", index=False)
    b.to_parquet(tmp_path / "b.parquet")
    dataset, x, _ = collect(tmp_path, nan="keep")
    np.testing.assert_array_equal(x, [[1, 3], [2, 4], [5, 7], [np.nan, 8]])
    assert dataset.total_samples == 4 and dataset.describe()["nonfinite_samples"] == 1


def test_parquet_non_numeric_column(tmp_path):
    pytest.importorskip("pyarrow")
    pd.DataFrame({"x": [1.0], "s": ["q"]}).to_parquet(tmp_path / "t.parquet")
    _, x, _ = collect(tmp_path / "t.parquet")
    assert x.tolist() == [[1.0]]
    with pytest.raises(DataError, match="column 's' .* is not numeric"):
        open_data(tmp_path / "t.parquet", DataOptions(columns="x,s"))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"cannot read .*bad\.parquet as Parquet"):
        open_data(tmp_path / "bad.parquet", DataOptions())


def test_files_with_different_columns(tmp_path):
    pd.DataFrame({"a": [1], "b": [2]}).to_csv(tmp_path / "1.csv", index=False)
    pd.DataFrame({"a": [1], "c": [2]}).to_csv(tmp_path / "2.csv", index=False)
    with pytest.raises(DataError, match=r"2\.csv has numeric columns a, c but .*1\.csv has a, b"):
        open_data(tmp_path, DataOptions())


def test_empty_and_garbage_csv(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match=r"e\.csv is empty"):
        open_data(tmp_path / "e.csv", DataOptions())
    (tmp_path / "h.csv").write_text("a,b\n")
    dataset = open_data(tmp_path / "h.csv", DataOptions())
    with pytest.raises(DataError, match="no usable samples"):
        dataset.collect()
    (tmp_path / "g.csv").write_bytes(b'a,b\n1,"2\n3,4\n')  # unterminated quote
    with pytest.raises(DataError, match=r"cannot read .*g\.csv as CSV"):
        open_data(tmp_path / "g.csv", DataOptions()).collect()


def test_big_csv_streams_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(tables_module, "chunk_rows", lambda columns: 64)
    x = np.random.default_rng(0).normal(size=(1000, 3)).astype(np.float32)
    pd.DataFrame(x, columns=list("abc")).to_csv(tmp_path / "t.csv", index=False, float_format="%.9g")
    dataset = open_data(tmp_path / "t.csv", DataOptions(workers=2, batch_size=10))
    got = dataset.collect()[0]
    np.testing.assert_array_equal(got, x)
    assert dataset.total_samples == 1000
    # chunks of 64 rows: never the whole file in flight
    assert dataset.stream_stats.max_live_samples <= 64 + 2 * 10 + (2 + 2) * 10 + 64


# ----------------------------------------------------------------------------- labels file


def _images(folder: Path, n: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((2, 2), i, np.uint8)).save(folder / f"{i:02d}.png")


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("label\n3\n1\n2\n", [3, 1, 2]),  # header
        ("3\n1\n2\n", [3, 1, 2]),  # no header
        ("class\n3\n1\n2\n", [3, 1, 2]),  # another header word over integers
        ("cat\ndog\ncat\n", [0, 1, 0]),  # names: sorted -> indices
        ("id,target\n9,3\n8,1\n7,2\n", [3, 1, 2]),  # the labelled column of several
    ],
)
def test_labels_file_forms(tmp_path, text, want):
    _images(tmp_path / "data", 3)
    (tmp_path / "labels.csv").write_text(text)
    _, _, y = collect(tmp_path / "data", labels=tmp_path / "labels.csv")
    assert y.tolist() == want


def test_labels_file_inside_data_is_left_out_and_overrides_folders(tmp_path):
    _images(tmp_path / "data" / "7", 3)
    (tmp_path / "data" / "labels.csv").write_text("label\n0\n1\n2\n")
    dataset, x, y = collect(tmp_path / "data", labels=tmp_path / "data" / "labels.csv")
    assert len(x) == 3 and y.tolist() == [0, 1, 2]


def test_labels_file_problems(tmp_path):
    _images(tmp_path / "data", 3)
    (tmp_path / "short.csv").write_text("label\n1\n2\n")
    with pytest.raises(DataError, match=r"has 2 labels but DATA has 3 samples"):
        open_data(tmp_path / "data", DataOptions(labels=tmp_path / "short.csv"))
    with pytest.raises(DataError, match="labels file .*missing.csv does not exist"):
        open_data(tmp_path / "data", DataOptions(labels=tmp_path / "missing.csv"))
    (tmp_path / "two.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="has 2 columns; give one column"):
        open_data(tmp_path / "data", DataOptions(labels=tmp_path / "two.csv"))
    (tmp_path / "gap.csv").write_text("label\n1\n\n2\n")  # a blank line is skipped, then 2 labels
    with pytest.raises(DataError, match="has 2 labels"):
        open_data(tmp_path / "data", DataOptions(labels=tmp_path / "gap.csv"))


def test_labels_stay_aligned_when_samples_are_dropped(tmp_path):
    (tmp_path / "t.csv").write_text("a\n1\nnan\n3\n4\n")
    (tmp_path / "y.csv").write_text("10\n11\n12\n13\n")
    _, x, y = collect(tmp_path / "t.csv", labels=tmp_path / "y.csv", batch_size=2)
    assert x[:, 0].tolist() == [1, 3, 4] and y.tolist() == [10, 12, 13]

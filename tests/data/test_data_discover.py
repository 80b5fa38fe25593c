"""Which files DATA consists of, in which order, and the errors for unusable folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bncheck.data import DataOptions, open_data
from bncheck.data.discover import discover, scan
from bncheck.errors import DataError


def touch_image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((2, 2), value, np.uint8)).save(path)
    return path


def test_recursive_sorted_order_interleaves_folders_and_files(tmp_path):
    for rel in ["c.png", "a.png", "b/z.png", "b/a/y.png", "B.png", "b/x.png", "a/q.png"]:
        touch_image(tmp_path / rel)
    got = [Path(p).relative_to(tmp_path).as_posix() for p in scan(tmp_path)]
    assert got == ["B.png", "a/q.png", "a.png", "b/a/y.png", "b/x.png", "b/z.png", "c.png"]
    # and the samples come in that order
    for i, rel in enumerate(got):
        touch_image(tmp_path / rel, value=i * 10)
    x, _ = open_data(tmp_path, DataOptions(workers=2, labels="none")).collect(batch_size=3)
    np.testing.assert_array_equal(np.round(x[:, 0, 0, 0] * 255), np.arange(len(got)) * 10)


def test_hidden_files_and_other_extensions_are_left_out(tmp_path):
    touch_image(tmp_path / "a.png")
    touch_image(tmp_path / ".hidden.png")
    touch_image(tmp_path / ".cache" / "b.png")
    (tmp_path / "README.txt").write_text("notes")
    (tmp_path / "._a.png").write_bytes(b"AppleDouble junk")
    found = discover(tmp_path)
    assert [Path(f).name for f in found.files] == ["a.png"] and found.ignored == {".txt": 1}
    assert open_data(tmp_path, DataOptions()).describe()["ignored_files"] == {".txt": 1}


def test_extensions_are_case_insensitive(tmp_path):
    touch_image(tmp_path / "A.PNG")
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "b.JPG", format="JPEG")
    assert discover(tmp_path).kind == "images" and len(discover(tmp_path).files) == 2


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match=r"DATA .*nope does not exist; check the path"):
        open_data(tmp_path / "nope", DataOptions())


def test_empty_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".DS_Store").write_bytes(b"x")
    with pytest.raises(DataError, match=r"DATA folder .* is empty \(hidden files are ignored\)"):
        open_data(tmp_path, DataOptions())


def test_no_supported_files_names_what_was_found(tmp_path):
    for name in ("a.txt", "b.txt", "c.json", "d"):
        (tmp_path / name).write_text("x")
    with pytest.raises(DataError, match=r"no supported data files \(found 4 file\(s\): \.txt x2, .*\.json x1.*supported: \.png"):
        open_data(tmp_path, DataOptions())


def test_single_file_with_an_unsupported_extension(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"x")
    with pytest.raises(DataError, match=r"unsupported extension '\.h5'.*--preprocess"):
        open_data(tmp_path / "x.h5", DataOptions())


def test_mixed_kinds_are_an_error_that_names_both(tmp_path):
    touch_image(tmp_path / "img" / "a.png")
    (tmp_path / "meta.csv").write_text("a\n1\n")
    with pytest.raises(DataError, match=r"mixes images \(1 file\(s\), e\.g\. img/a\.png\) and table \(1 file\(s\), e\.g\. meta\.csv\)"):
        open_data(tmp_path, DataOptions())
    # pointing at one kind works; so does naming the csv as the labels file
    assert open_data(tmp_path / "img", DataOptions()).kind == "images"
    dataset = open_data(tmp_path, DataOptions(labels=tmp_path / "meta.csv"))
    assert dataset.kind == "images" and dataset.collect()[1].tolist() == [1]


def test_unreadable_folder_is_a_clear_error(tmp_path, monkeypatch):
    touch_image(tmp_path / "locked" / "a.png")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError, match=r"cannot read folder .*locked: permission denied"):
        open_data(tmp_path, DataOptions())


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_for_real(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 2)))
    os.chmod(tmp_path / "x.npy", 0)
    try:
        with pytest.raises(DataError, match="permission denied"):
            open_data(tmp_path / "x.npy", DataOptions())
    finally:
        os.chmod(tmp_path / "x.npy", 0o644)


def test_unreadable_array_and_table_files(tmp_path, monkeypatch):
    import builtins

    np.save(tmp_path / "x.npy", np.zeros((2, 2)))
    (tmp_path / "t.csv").write_text("a\n1\n")
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if str(file).endswith(("x.npy", "t.csv")):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    with pytest.raises(DataError, match=r"cannot read .*x\.npy: permission denied"):
        open_data(tmp_path / "x.npy", DataOptions())
    with pytest.raises(DataError, match=r"cannot read .*t\.csv: permission denied"):
        open_data(tmp_path / "t.csv", DataOptions())


def test_symlinked_folder_loops_are_followed_once(tmp_path):
    touch_image(tmp_path / "a" / "x.png")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    assert [Path(p).relative_to(tmp_path).as_posix() for p in scan(tmp_path)] == ["a/x.png"]

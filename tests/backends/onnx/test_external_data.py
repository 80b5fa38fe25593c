"""The external-data files an ONNX file names (protected from every output): found in the main
graph and in an If branch, and a file that cannot name any is not parsed for them (the guard
asks before the loader parses the model: a second parse of a 45 MB model otherwise)."""

from __future__ import annotations

import onnx
import pytest

from bncheck.backends.onnx import external_data


def _saved(model: onnx.ModelProto, path, **kwargs):
    onnx.save_model(model, str(path), **kwargs)
    return path


def test_the_files_of_external_initializers_are_found(onnx_bn, tmp_path):
    model, _ = onnx_bn(8)
    path = _saved(model, tmp_path / "m.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    assert external_data.external_data_files(path) == [tmp_path / "weights.bin"]
    assert external_data.uses_external_data(path)


def test_external_initializers_of_an_if_branch_are_found(onnx_bn, tmp_path):
    model, _ = onnx_bn(8, in_if=True)
    path = _saved(model, tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin", size_threshold=0)
    reference = onnx.load(str(path), load_external_data=False)
    external = [t for g in [reference.graph, *(a.g for n in reference.graph.node for a in n.attribute if a.g.name)] for t in g.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external, "the fixture should keep initializers outside the file"
    assert external_data.external_data_files(path) == [tmp_path / "w.bin"]


def test_a_file_without_external_data_is_not_parsed_for_it(onnx_bn, tmp_path, monkeypatch):
    model, _ = onnx_bn(8)
    path = _saved(model, tmp_path / "m.onnx")

    parsed = []
    load = onnx.load
    monkeypatch.setattr(onnx, "load", lambda *a, **k: parsed.append(a) or load(*a, **k))
    assert external_data.external_data_files(path) == []
    assert not external_data.uses_external_data(path)
    assert parsed == []
    model.metadata_props.append(onnx.StringStringEntryProto(key="location", value="x"))
    _saved(model, path)  # the same check parses a file that might name some (the check can fail)
    assert external_data.external_data_files(path) == [] and len(parsed) == 1


def test_the_bytes_of_the_key_elsewhere_fall_back_to_the_parse(onnx_bn, tmp_path):
    """A metadata entry keyed "location" serialises like an external-data entry: the file is
    parsed, and names no external file."""
    model, _ = onnx_bn(8)
    model.metadata_props.append(onnx.StringStringEntryProto(key="location", value="nowhere.bin"))
    path = _saved(model, tmp_path / "m.onnx")
    assert external_data._may_keep_external_data(str(path))
    assert external_data.external_data_files(path) == []


@pytest.mark.parametrize("content", [b"", b"not a model"])
def test_an_empty_or_foreign_file_names_no_external_data(tmp_path, content):
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    assert external_data.external_data_files(path) == []


@pytest.mark.parametrize("cut", range(1, 11))
def test_the_key_is_found_across_a_block_boundary(tmp_path, monkeypatch, cut):
    """The file is scanned in blocks: a key split ``cut`` bytes into it by a boundary is found."""
    key = external_data._LOCATION_KEY
    monkeypatch.setattr(external_data, "SCAN_BLOCK", 64)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x00" * (128 - cut) + key + b"\x00" * 50)
    assert external_data._may_keep_external_data(str(path))
    path.write_bytes(b"\x00" * (128 - cut) + key[:-1] + b"\x01" + b"\x00" * 50)
    assert not external_data._may_keep_external_data(str(path))

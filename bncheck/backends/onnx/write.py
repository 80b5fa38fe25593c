"""Writing ONNX models: one file, or the model plus ``OUT.data`` for external tensors."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import onnx

from bncheck.backends.onnx.external_data import fits_in_one_message
from bncheck.backends.onnx.serialized import serialized
from bncheck.backends.output import write_atomically
from bncheck.errors import OutputError

#: ONNX protobufs cannot exceed 2 GiB; bigger models keep their tensors in a side file.
PROTOBUF_LIMIT = 2**31 - 1


def onnx_data_path(out: Path) -> Path:
    """The external-data file written next to an ONNX OUT (``OUT.data``)."""
    out = Path(out)
    return out.with_name(out.name + ".data")


def write_onnx(model, out: Path, *, external_data: bool = False) -> list[Path]:
    """Write an ``onnx.ModelProto``; with ``external_data`` (or above 2 GiB) the tensors go to
    ``OUT.data`` next to it. Returns the files written. ``model`` is not modified."""
    out = Path(out)
    if not external_data and fits_in_one_message(model):
        data = serialized(model)
        write_atomically(out, lambda tmp: Path(tmp).write_bytes(data))
        return [out]
    data = onnx_data_path(out)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    folder = out.resolve().parent
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=folder))
    try:
        onnx.save_model(
            copy,
            str(tmpdir / out.name),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
        if (tmpdir / data.name).exists():
            os.replace(tmpdir / data.name, data)
        os.replace(tmpdir / out.name, out)
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}.") from exc
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return [out, data] if data.exists() else [out]

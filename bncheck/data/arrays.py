"""Array files -> samples: ``.npy``, ``.npz`` (every array in it) and ``.pt`` (a tensor, or a
dict/list of tensors, loaded with ``torch.load(weights_only=True)``).

Each array is a batch (first axis = samples) or one sample, decided by the ``arrays`` option:
``batch``, ``sample``, or ``auto`` (by rank against the model's input shape; a batch when the
model does not say). Arrays named ``y``, ``label``, ``labels``, ``target`` or ``targets`` inside
an ``.npz``/``.pt`` are the labels of that file's samples, not samples.

Nothing is loaded whole: ``.npy`` chunks are read at their byte offset (by the worker threads),
``.npz`` members are decompressed as a stream, ``.pt`` files are memory-mapped.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.data.loader import Task
from bncheck.data.reader import ManySamplesPerFile
from bncheck.data.shapes import ExpectedShape, Shape, fits, mismatch_hint, shape_text
from bncheck.data.spec import DataOptions
from bncheck.errors import DataError, first_line

LABEL_KEYS = ("y", "label", "labels", "target", "targets")
#: a chunk read in one go holds at most this many bytes (and at least one sample)
CHUNK_BYTES = 16 << 20


@dataclass(slots=True)
class ArrayPart:
    """One stored array of samples (a whole .npy, one .npz member, one tensor of a .pt)."""

    path: Path
    #: npz member name / dict key / list index as text; None for a .npy or a bare tensor
    key: str | None
    shape: Shape
    dtype: np.dtype
    batched: bool
    labels: np.ndarray | None = None

    @property
    def count(self) -> int:
        return self.shape[0] if self.batched else 1

    @property
    def sample_shape(self) -> Shape:
        return self.shape[1:] if self.batched else self.shape

    @property
    def name(self) -> str:
        return f"{self.path}[{self.key}]" if self.key is not None else str(self.path)


@dataclass
class Chunk:
    """Samples ``start:stop`` of ``part``; ``load`` returns them as float32 (n, *sample_shape)."""

    part: ArrayPart
    start: int
    stop: int
    load: Callable[[], np.ndarray]


def inspect_file(path: Path, mode: str, expected: ExpectedShape | None) -> list[ArrayPart]:
    """The arrays of one file with their shapes, as batches or single samples."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        with _open(path) as handle:
            shape, fortran, dtype = _read_npy_header(handle, str(path))
        raw = [(None, shape, dtype)]
        label_arrays: dict[str, np.ndarray] = {}
    elif suffix == ".npz":
        raw, label_arrays = _inspect_npz(path)
    else:
        raw, label_arrays = _inspect_pt(path)
    if not raw:
        raise DataError(f"{path} holds no sample arrays (only labels: {', '.join(label_arrays)}).")
    parts = [
        ArrayPart(path, key, shape, dtype, _is_batched(path, key, shape, mode, expected))
        for key, shape, dtype in raw
    ]
    if label_arrays:
        _attach_labels(path, parts, label_arrays)
    return parts


def _is_batched(path: Path, key: str | None, shape: Shape, mode: str, expected: ExpectedShape | None) -> bool:
    name = f"{path}[{key}]" if key is not None else str(path)
    return is_batched(name, shape, mode, expected, "use --arrays sample or save a batch")


def is_batched(name: str, shape: Shape, mode: str, expected: ExpectedShape | None, scalar_fix: str) -> bool:
    """Whether an array of ``shape`` (named ``name`` in errors) is a batch of samples or one
    sample, by ``mode`` (sample, batch or auto: its rank against the model input's)."""
    if mode == "sample":
        return False
    if mode == "batch" or expected is None:
        if len(shape) == 0:
            raise DataError(f"{name} is a single number, not a batch of samples; {scalar_fix}.")
        return True
    if len(shape) == len(expected) + 1:
        return True
    if len(shape) == len(expected):
        return False
    raise DataError(
        f"{name} has shape {shape_text(shape)}, which is neither one sample nor a batch of samples "
        f"of the model's input {shape_text(expected)}; {mismatch_hint(shape[1:], expected)}."
    )


def check_sample_shapes(parts: list[ArrayPart], expected: ExpectedShape | None) -> Shape:
    """The common per-sample shape of every part; an error naming the first misfit."""
    first = parts[0]
    for part in parts:
        if expected is not None and not fits(part.sample_shape, expected):
            what = "samples of shape" if part.batched else "one sample of shape"
            raise DataError(
                f"{part.name} holds {what} {shape_text(part.sample_shape)} but the model expects "
                f"{shape_text(expected)} per sample; {mismatch_hint(part.sample_shape, expected)}."
            )
        if part.sample_shape != first.sample_shape:
            raise DataError(
                f"{first.name} has samples of shape {shape_text(first.sample_shape)} but "
                f"{part.name} has {shape_text(part.sample_shape)}; every sample must have one shape."
            )
    return first.sample_shape


def _check_dtype(dtype: np.dtype, name: str) -> np.dtype:
    if dtype.kind not in "biuf":
        raise DataError(f"{name} holds {dtype} values, not real numbers; save numeric arrays.")
    return dtype


def _open(path: Path):
    try:
        return open(path, "rb")
    except PermissionError as exc:
        raise DataError(f"cannot read {path}: permission denied; check its permissions.") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}.") from exc


def _read_npy_header(handle, name: str) -> tuple[Shape, bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(handle)
        else:
            shape, fortran, dtype = fmt.read_array_header_2_0(handle)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise DataError(f"{name} is not a valid .npy array ({exc}); re-save it with numpy.save.") from exc
    return tuple(int(d) for d in shape), bool(fortran), _check_dtype(np.dtype(dtype), name)


def _inspect_npz(path: Path) -> tuple[list[tuple[str, Shape, np.dtype]], dict[str, np.ndarray]]:
    raw: list[tuple[str, Shape, np.dtype]] = []
    labels: dict[str, np.ndarray] = {}
    try:
        with _open(path) as handle, zipfile.ZipFile(handle) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                key = member[: -len(".npy")]
                name = f"{path}[{key}]"
                if key.lower() in LABEL_KEYS:
                    with archive.open(member) as stream:
                        labels[key] = np.lib.format.read_array(stream, allow_pickle=False)
                    continue
                with archive.open(member) as stream:
                    shape, _, dtype = _read_npy_header(stream, name)
                raw.append((key, shape, dtype))
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise DataError(f"{path} is not a valid .npz archive ({exc}); re-save it with numpy.savez.") from exc
    if not raw and not labels:
        raise DataError(f"{path} holds no arrays.")
    return raw, labels


def _load_pt(path: Path) -> Any:
    try:
        import torch
    except ImportError as exc:
        raise DataError(f"reading {path} needs PyTorch; install it (pip install 'bncheck[torch]') or save the data as .npy.") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except PermissionError as exc:
        raise DataError(f"cannot read {path}: permission denied; check its permissions.") from exc
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise DataError(f"{path} is not a readable tensor file ({first_line(exc)}).") from exc
    except Exception as exc:  # noqa: BLE001 - unpickling errors of every kind
        raise DataError(
            f"{path} is not a tensor file torch.load(weights_only=True) accepts ({first_line(exc)}); "
            "save tensors (or a dict/list of tensors) with torch.save."
        ) from exc
    try:  # files in the legacy (non-zip) format cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path} is not a tensor file torch.load(weights_only=True) accepts ({first_line(exc)}).") from exc


def _pt_tensors(path: Path, obj: Any) -> list[tuple[str | None, Any]]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [(None, obj)]
    if isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(obj)]
    else:
        raise DataError(f"{path} holds a {type(obj).__name__}; save a tensor, or a dict or list of tensors.")
    for key, value in items:
        if not isinstance(value, torch.Tensor):
            raise DataError(f"{path}[{key}] is a {type(value).__name__}, not a tensor; save only tensors.")
    return items


def _torch_dtype_as_numpy(tensor: Any, name: str) -> np.dtype:
    """The numpy dtype a tensor is read as (floats as float32, integers as int64)."""
    import torch

    if tensor.is_complex():
        raise DataError(f"{name} holds complex values, not real numbers.")
    if tensor.dtype.is_floating_point:
        return np.dtype(np.float32)
    return np.dtype(bool) if tensor.dtype == torch.bool else np.dtype(np.int64)


def _inspect_pt(path: Path) -> tuple[list[tuple[str | None, Shape, np.dtype]], dict[str, np.ndarray]]:
    obj = _load_pt(path)
    raw: list[tuple[str | None, Shape, np.dtype]] = []
    labels: dict[str, np.ndarray] = {}
    for key, tensor in _pt_tensors(path, obj):
        if key is not None and key.lower() in LABEL_KEYS:
            labels[key] = tensor.detach().cpu().numpy()
            continue
        name = f"{path}[{key}]" if key is not None else str(path)
        raw.append((key, tuple(int(d) for d in tensor.shape), _torch_dtype_as_numpy(tensor, name)))
    return raw, labels


def class_indices(values: np.ndarray, n: int, wrong_shape: Callable[[str], str], wrong_dtype: Callable[[np.dtype], str]) -> np.ndarray:
    """``values`` as int64 class indices, one per sample of ``n`` (a column ``(n, 1)`` reads as
    ``(n,)``; floats that are whole numbers are accepted); otherwise DataError with the
    sentence ``wrong_shape(shape text)`` or ``wrong_dtype(dtype)``."""
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or len(values) != n:
        raise DataError(wrong_shape(shape_text(values.shape)))
    if values.dtype.kind not in "biu" and not (values.dtype.kind == "f" and np.all(np.mod(values, 1) == 0)):
        raise DataError(wrong_dtype(values.dtype))
    return values.astype(np.int64)


def _attach_labels(path: Path, parts: list[ArrayPart], label_arrays: dict[str, np.ndarray]) -> None:
    if len(label_arrays) > 1:
        raise DataError(f"{path} holds several label arrays ({', '.join(label_arrays)}); keep one.")
    (key, values), = label_arrays.items()
    total = sum(p.count for p in parts)
    labels = class_indices(
        np.asarray(values),
        total,
        lambda shape: f"{path}[{key}] has shape {shape} but the file holds {total} samples; "
        "labels need one value per sample (or rename the array if it is not labels).",
        lambda dtype: f"{path}[{key}] holds {dtype} values; labels must be integer class indices.",
    )
    offset = 0
    for part in parts:
        part.labels = labels[offset : offset + part.count]
        offset += part.count


def chunk_rows(sample_shape: Shape, batch_size: int) -> int:
    """Samples per read: a batch, but never more than CHUNK_BYTES of float32."""
    sample_bytes = 4 * max(1, int(np.prod(sample_shape, dtype=np.int64)))
    return max(1, min(batch_size, CHUNK_BYTES // sample_bytes))


def iter_chunks(parts: list[ArrayPart], rows: int) -> Iterator[Chunk]:
    """Chunks of every part in order. Runs in the producer thread; ``Chunk.load`` runs in a
    worker and does the reading for .npy (by byte offset) and the conversion for all."""
    by_file: dict[Path, list[ArrayPart]] = {}
    for part in parts:
        by_file.setdefault(part.path, []).append(part)
    for path, file_parts in by_file.items():
        suffix = path.suffix.lower()
        if suffix == ".npy":
            yield from _npy_chunks(file_parts[0], rows)
        elif suffix == ".npz":
            yield from _npz_chunks(path, file_parts, rows)
        else:
            yield from _pt_chunks(path, file_parts, rows)


def _as_samples(values: np.ndarray, part: ArrayPart, n: int) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(values).astype(np.float32, copy=False)
    return np.ascontiguousarray(out.reshape((n, *part.sample_shape)))


def _npy_chunks(part: ArrayPart, rows: int) -> Iterator[Chunk]:
    with _open(part.path) as handle:
        shape, fortran, dtype = _read_npy_header(handle, str(part.path))
        offset = handle.tell()
    if fortran:  # rows are not contiguous on disk: read through a memory map
        memmap = np.load(part.path, mmap_mode="r")
        for start in range(0, part.count, rows):
            stop = min(start + rows, part.count)
            view = memmap[start:stop] if part.batched else memmap
            yield Chunk(part, start, stop, lambda v=view, n=stop - start: _as_samples(v, part, n))
        return
    sample_items = int(np.prod(part.sample_shape, dtype=np.int64))
    sample_bytes = sample_items * dtype.itemsize
    for start in range(0, part.count, rows):
        stop = min(start + rows, part.count)

        def load(start: int = start, stop: int = stop) -> np.ndarray:
            with _open(part.path) as handle:
                handle.seek(offset + start * sample_bytes)
                data = handle.read((stop - start) * sample_bytes)
            if len(data) != (stop - start) * sample_bytes:
                raise DataError(f"{part.path} is truncated (shorter than its header says); re-save it.")
            values = np.frombuffer(data, dtype=dtype, count=(stop - start) * sample_items)
            return _as_samples(values, part, stop - start)

        yield Chunk(part, start, stop, load)


def _npz_chunks(path: Path, parts: list[ArrayPart], rows: int) -> Iterator[Chunk]:
    with _open(path) as handle, zipfile.ZipFile(handle) as archive:
        for part in parts:
            with archive.open(f"{part.key}.npy") as stream:
                _, fortran, dtype = _read_npy_header(stream, part.name)
                if fortran:
                    array = np.lib.format.read_array(stream, allow_pickle=False)
                    for start in range(0, part.count, rows):
                        stop = min(start + rows, part.count)
                        view = array[start:stop] if part.batched else array
                        yield Chunk(part, start, stop, lambda v=view, p=part, n=stop - start: _as_samples(v, p, n))
                    continue
                sample_items = int(np.prod(part.sample_shape, dtype=np.int64))
                for start in range(0, part.count, rows):
                    stop = min(start + rows, part.count)
                    size = (stop - start) * sample_items * dtype.itemsize
                    try:
                        data = stream.read(size)
                    except (zipfile.BadZipFile, EOFError, OSError) as exc:
                        raise DataError(f"{part.name} is corrupt ({exc}); re-save the archive.") from exc
                    if len(data) != size:
                        raise DataError(f"{part.name} is truncated; re-save the archive.")
                    values = np.frombuffer(data, dtype=dtype)
                    yield Chunk(part, start, stop, lambda v=values, p=part, n=stop - start: _as_samples(v, p, n))


def _pt_chunks(path: Path, parts: list[ArrayPart], rows: int) -> Iterator[Chunk]:
    import torch

    tensors = dict(_pt_tensors(path, _load_pt(path)))
    for part in parts:
        tensor = tensors[part.key]

        def load(t: Any, p: ArrayPart, n: int) -> np.ndarray:
            t = t.detach()
            if t.dtype.is_floating_point:
                t = t.to(torch.float32)
            elif t.dtype != torch.bool:
                t = t.to(torch.int64)
            return _as_samples(t.numpy(), p, n)

        for start in range(0, part.count, rows):
            stop = min(start + rows, part.count)
            view = tensor[start:stop] if part.batched else tensor
            yield Chunk(part, start, stop, lambda v=view, p=part, n=stop - start: load(v, p, n))


class ArrayReader(ManySamplesPerFile):
    """.npy/.npz/.pt files: every sample array in them, in file order."""

    kind = "arrays"
    def __init__(self, files: list[str], options: DataOptions, expected: ExpectedShape | None):
        self.parts = [part for path in files for part in inspect_file(Path(path), options.arrays, expected)]
        self.sample_shape: Shape = check_sample_shapes(self.parts, expected)
        self.mode = options.arrays
        if self.mode == "auto" and expected is None and self.sample_shape == () and self.parts:
            # a batch of single numbers feeds no BN model: 1-D files are one sample each, as a rule
            first = self.parts[0]
            raise DataError(
                f"{first.name} of shape {shape_text(first.shape)} would be read as a batch of {first.shape[0]} single "
                "numbers (the model does not declare its input shape, so --arrays auto reads every array as a batch); "
                "pass --arrays sample if each array is one sample, or --arrays batch if it is a batch of numbers."
            )

    def count(self) -> int:
        return sum(part.count for part in self.parts)

    def shape_error(self, source: str, got: Shape) -> DataError:
        return DataError(f"{source} gave samples of shape {shape_text(got)}, expected {shape_text(self.sample_shape)}.")

    def tasks(self, batch_size: int) -> Iterator[Task]:
        for chunk in iter_chunks(self.parts, chunk_rows(self.sample_shape, batch_size)):
            part = chunk.part
            labels = part.labels[chunk.start : chunk.stop] if part.labels is not None else None
            yield Task(count=chunk.stop - chunk.start, source=part.name, offset=chunk.start, load=chunk.load, labels=labels)

    def pinned(self, options: DataOptions) -> DataOptions:
        return options

    def file_counts(self, files: list[str], *, rows_needed: bool) -> list[int] | None:
        per_file: Counter[str] = Counter()
        for part in self.parts:
            per_file[str(part.path)] += part.count
        return [per_file[str(Path(f))] for f in files]

    def has_labels(self) -> bool:
        """Whether every array came with a label array in its file."""
        return all(part.labels is not None for part in self.parts)

    def preprocessing(self) -> dict[str, Any]:
        read_as = sorted({"batch" if part.batched else "sample" for part in self.parts})
        return {
            "arrays": self.mode,
            "read_as": read_as[0] if len(read_as) == 1 else "mixed",
            "arrays_in_files": len(self.parts),
            "values": "as stored, cast to float32",
        }

"""Labels (class indices), used for accuracy before/after recalibration.

Three sources, first match wins:
- ``--labels FILE``: a CSV with one label per sample, in sample order (one column, with or
  without a header; with several columns, the one headed ``label``/``labels``/``y``/
  ``target``/``targets``);
- class folders: images under ``DATA/<class>/...`` when every image sits below a sub-folder of
  DATA; the label is the name of the image's own folder;
- label arrays inside ``.npz``/``.pt`` files (see :mod:`bncheck.data.arrays`).

Class names map to indices like torchvision's ImageFolder (sorted names -> 0, 1, ...), except
that when every name is a non-negative integer (``0``..``9``) the integer itself is the label.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bncheck.data.arrays import LABEL_KEYS
from bncheck.errors import DataError, first_line


@dataclass
class Labels:
    """Per-sample labels (by raw sample index, before skips and exclusions)."""

    #: ``file``, ``folders`` or ``arrays``
    source: str
    #: class name -> index, where names were mapped (None for integer labels)
    classes: dict[str, int] | None = None
    path: str | None = None
    values: np.ndarray | None = field(default=None, repr=False)

    def describe(self) -> dict:
        out: dict = {"source": self.source}
        if self.path is not None:
            out["path"] = self.path
        if self.classes is not None:
            out["classes"] = len(self.classes)
            if len(self.classes) <= 50:
                out["class_indices"] = dict(self.classes)
        elif self.values is not None and len(self.values):
            ordered = np.sort(np.asarray(self.values).ravel())  # np.unique would import numpy.ma (20 ms)
            out["classes"] = int(np.count_nonzero(ordered[1:] != ordered[:-1]) + 1)
            out["range"] = [int(self.values.min()), int(self.values.max())]
        return out


def encode(names: list[str]) -> tuple[np.ndarray, dict[str, int] | None]:
    """Labels as int64: integers stay themselves, other names map to their sorted position."""
    if all(_is_index(n) for n in names):
        return np.asarray([int(float(n)) for n in names], dtype=np.int64), None
    classes = {name: i for i, name in enumerate(sorted(set(names)))}
    return np.asarray([classes[n] for n in names], dtype=np.int64), classes


def _is_index(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return value.is_integer() and value >= 0 and text.strip().lstrip("+").replace(".", "", 1).isdigit()


def beyond_classes(largest: int, classes: int, source: str) -> tuple[str, str]:
    """(problem, fix) where labels from ``source`` (``Labels.source``) reach ``largest`` and the
    model's output has ``classes`` classes: they cannot be its class indices (class folders named
    0, 90, 180, 270 for a 4-class orientation model scored 25%)."""
    where = {"folders": "class folders' names", "file": "labels file's values"}.get(source, "labels")
    problem = f"DATA's {where} reach {largest} but the model's output has {classes} classes, so they are not its class indices"
    return problem, f"give --labels FILE with one class index (0-{classes - 1}) per sample in the model's class order"


def folder_labels(root: Path, files: list[str]) -> Labels | None:
    """Labels from class folders, or None when some file sits directly in ``root``."""
    top = os.path.normpath(root)
    names = []
    for file in files:
        parent = os.path.dirname(file)
        if os.path.normpath(parent) == top:
            return None
        names.append(os.path.basename(parent))
    values, classes = encode(names)
    return Labels(source="folders", classes=classes, values=values)


def read_label_file(path: str | Path) -> Labels:
    """One label per sample from a CSV (see the module docstring)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels file {path} does not exist; --labels takes a CSV with one label per sample.")
    try:
        table = pd.read_csv(path, header=None, dtype=str, skip_blank_lines=True, keep_default_na=False)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"labels file {path} is empty; give one label per sample.") from exc
    except PermissionError as exc:
        raise DataError(f"cannot read labels file {path}: permission denied; check its permissions.") from exc
    except Exception as exc:  # noqa: BLE001 - ParserError, UnicodeDecodeError, OSError
        raise DataError(
            f"cannot read labels file {path} as CSV ({first_line(exc)}); --labels takes a CSV with one label per sample."
        ) from exc
    header = [str(v).strip() for v in table.iloc[0].tolist()]
    if table.shape[1] == 1:
        column = table.iloc[:, 0].astype(str).str.strip().tolist()
        first, rest = column[0], column[1:]
        if not _is_index(first) and (first.lower() in LABEL_KEYS or (rest and all(map(_is_index, rest)))):
            column = rest  # a header row
    else:
        wanted = [i for i, name in enumerate(header) if name.lower() in LABEL_KEYS]
        if len(wanted) != 1:
            raise DataError(
                f"labels file {path} has {table.shape[1]} columns; give one column, or head one of "
                f"them {' / '.join(LABEL_KEYS)}."
            )
        column = table.iloc[1:, wanted[0]].astype(str).str.strip().tolist()
    if not column:
        raise DataError(f"labels file {path} has no labels; give one label per sample.")
    if any(value == "" for value in column):
        row = next(i for i, value in enumerate(column) if value == "")
        raise DataError(f"labels file {path} has an empty label on row {row + 1}; give one label per sample.")
    values, classes = encode(column)
    return Labels(source="file", classes=classes, path=str(path), values=values)

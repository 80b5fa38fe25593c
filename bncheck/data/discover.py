"""Finding the data files: DATA is one file or a folder scanned recursively in sorted order.

Order: at every level the entries are sorted by name and folders are entered where they sort
(``a.png``, ``b/x.png``, ``c.png``), which equals sorting the relative paths part by part.
Hidden files and folders (names starting with ``.``) are skipped; so are files of other
extensions (counted, and named in the error when nothing usable is left).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bncheck.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
ARRAY_EXTENSIONS = (".npy", ".npz", ".pt")
TABLE_EXTENSIONS = (".csv", ".parquet")
#: data kind -> the extensions that make it
KINDS = {"images": IMAGE_EXTENSIONS, "arrays": ARRAY_EXTENSIONS, "table": TABLE_EXTENSIONS}
SUPPORTED = ", ".join(IMAGE_EXTENSIONS + ARRAY_EXTENSIONS + TABLE_EXTENSIONS)


@dataclass
class Discovery:
    """The files DATA consists of, all of one kind."""

    root: Path
    is_folder: bool
    #: ``images``, ``arrays``, ``table``, or ``files`` (every file, read by ``--preprocess``)
    kind: str
    #: file paths as strings (compact: a folder may hold millions)
    files: list[str]
    #: extension -> number of files left out because bncheck does not read them
    ignored: dict[str, int] = field(default_factory=dict)


def extension(path: str | Path) -> str:
    """``.png`` for ``a/b.PNG``; empty for no extension."""
    return os.path.splitext(str(path))[1].lower()


def kind_of(path: str | Path) -> str | None:
    """The data kind of a file from its extension, or None."""
    suffix = extension(path)
    for kind, extensions in KINDS.items():
        if suffix in extensions:
            return kind
    return None


def scan(root: Path) -> list[str]:
    """Every non-hidden file under ``root``, recursively, in sorted order (symlinked folders are
    followed once)."""
    out: list[str] = []
    seen: set[str] = set()

    def walk(folder: str) -> None:
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError as exc:
            raise DataError(f"cannot read folder {folder}: permission denied; check its permissions.") from exc
        except OSError as exc:
            raise DataError(f"cannot read folder {folder}: {exc.strerror or exc}.") from exc
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                walk(entry.path)
            elif entry.is_file():
                out.append(entry.path)

    walk(str(root))
    return out


def discover(path: str | Path, *, every_file: bool = False, exclude: Path | None = None) -> Discovery:
    """The data files of ``path``. ``every_file`` (set by ``--preprocess``) takes every
    non-hidden file whatever its extension; ``exclude`` is left out (the ``--labels`` file when
    it lies inside DATA)."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"DATA {root} does not exist; check the path.")
    if root.is_file():
        kind = "files" if every_file else kind_of(root)
        if kind is None:
            raise DataError(
                f"DATA file {root} has an unsupported extension {root.suffix or '(none)'!r}; "
                f"supported: {SUPPORTED} (or read it with --preprocess module:fn)."
            )
        return Discovery(root=root, is_folder=False, kind=kind, files=[str(root)])
    if not root.is_dir():
        raise DataError(f"DATA {root} is neither a file nor a folder.")
    found = scan(root)
    if exclude is not None:
        excluded = os.path.realpath(exclude)
        found = [f for f in found if os.path.realpath(f) != excluded]
    if not found:
        raise DataError(
            f"DATA folder {root} is empty (hidden files are ignored); put images, .npy/.npz/.pt, "
            ".csv or .parquet files in it."
        )
    if every_file:
        return Discovery(root=root, is_folder=True, kind="files", files=found)
    by_kind: dict[str, list[str]] = {}
    ignored: Counter[str] = Counter()
    for file in found:
        kind = kind_of(file)
        if kind is None:
            ignored[extension(file) or "(no extension)"] += 1
        else:
            by_kind.setdefault(kind, []).append(file)
    if not by_kind:
        seen = ", ".join(f"{ext} x{n}" for ext, n in ignored.most_common(6))
        raise DataError(
            f"DATA folder {root} has no supported data files (found {sum(ignored.values())} "
            f"file(s): {seen}); supported: {SUPPORTED}."
        )
    if len(by_kind) > 1:
        parts = [
            f"{kind} ({len(files)} file(s), e.g. {os.path.relpath(files[0], root)})"
            for kind, files in by_kind.items()
        ]
        raise DataError(
            f"DATA folder {root} mixes {' and '.join(parts)}; point DATA at a folder holding one "
            "kind of file (a labels file given with --labels is left out automatically)."
        )
    (kind, files), = by_kind.items()
    return Discovery(root=root, is_folder=True, kind=kind, files=files, ignored=dict(ignored))

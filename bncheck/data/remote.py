"""DATA in an object store or any other fsspec file system: ``s3://bucket/prefix``,
``gs://bucket/prefix``, ``az://container/prefix``, ``hdfs://namenode/path`` (fsspec's pyarrow
wrapper), ``memory://...`` — any URL whose protocol fsspec knows.

Listing follows the local rules of :mod:`bncheck.data.discover`: DATA is one object
or every object below a prefix, in the order of a recursive sorted scan (relative paths
sorted part by part), names starting with ``.`` skipped, one kind of file.

Reading: the readers need local files (they seek into ``.npy`` files, read the central
directory of ``.npz`` archives, memory-map ``.pt`` files, and hand paths to Pillow, pandas
and pyarrow), so :func:`stage` copies a *block* of objects into a local folder, the block is
read from there, and the folder is deleted when the block is done (see
:mod:`bncheck.data.plan`). Local disk use is a block or two per worker, whatever the size
of DATA. The bytes are the object's bytes, so a remote run reads exactly what a run on a
local copy reads.

Credentials and endpoints are the file system's own: environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``...), fsspec's ``FSSPEC_<PROTOCOL>_<OPTION>``
variables, or ``storage_options`` (``--storage-option endpoint_url=http://...``). This module
imports fsspec only when a URL is used; the protocol's package (``s3fs``, ``gcsfs``...)
is imported by fsspec.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bncheck.data.discover import SUPPORTED, extension, kind_of
from bncheck.errors import DataError, UsageError, first_line

#: ``scheme://`` at the start of DATA; one-letter schemes are Windows drives, not protocols
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://")

#: protocol -> the package that provides it, for the error message when it is missing
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs"}


def is_remote(data: str | Path) -> bool:
    """Whether DATA is a URL for fsspec (``file://`` counts as local)."""
    if isinstance(data, Path):
        return False
    match = _URL.match(str(data))
    return bool(match) and match.group(1).lower() != "file"


def parse_storage_options(items: list[str] | None) -> dict[str, Any]:
    """``["endpoint_url=http://127.0.0.1:9000", "anon=true"]`` -> a dict; values that parse
    as JSON (``true``, ``3``, ``{"a": 1}``) are decoded, the rest stay strings."""
    import json

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--storage-option {item!r} must be KEY=VALUE (e.g. endpoint_url=http://127.0.0.1:9000).")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def filesystem(url: str, storage_options: Mapping[str, Any] | None = None):
    """``(fsspec file system, path inside it)`` for ``url``."""
    protocol = _URL.match(url).group(1).lower() if _URL.match(url) else ""
    try:
        import fsspec
    except ImportError as exc:
        raise UsageError(
            f"DATA {url} is a URL; reading it needs fsspec: pip install 'bncheck[remote]'."
        ) from exc
    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except ImportError as exc:
        package = _PACKAGES.get(protocol)
        fix = f"pip install {package}" if package else f"install the fsspec implementation of {protocol}://"
        raise UsageError(f"DATA {url} cannot be read here ({first_line(exc)}); {fix}.") from exc
    except ValueError as exc:
        raise UsageError(f"DATA {url}: fsspec does not know the protocol {protocol}:// ({first_line(exc)}).") from exc
    except TypeError as exc:
        raise UsageError(f"--storage-option: {first_line(exc)}; check the option names of the {protocol}:// file system.") from exc
    return fs, path.rstrip("/") or path


@dataclass
class RemoteListing:
    """The objects DATA consists of, all of one kind, in reading order."""

    url: str
    #: the fsspec file system (picklable: it travels to Ray workers with the plan)
    fs: Any
    root: str
    is_folder: bool
    #: ``images``, ``arrays``, ``table``, or ``files`` (every object, read by ``--preprocess``)
    kind: str
    #: paths inside ``fs`` and the same relative to ``root`` ("/"-separated)
    paths: list[str]
    relative: list[str]
    sizes: list[int]
    ignored: dict[str, int] = field(default_factory=dict)

    def url_of(self, index: int) -> str:
        """The URL of object ``index`` (for messages)."""
        if not self.is_folder:
            return self.url
        return f"{self.url.rstrip('/')}/{self.relative[index]}"

    def digest(self) -> str:
        """sha256 of the relative names and sizes: two listings of unchanged data agree."""
        return listing_digest(self.relative, self.sizes)


def listing_digest(names: list[str], sizes: list[int]) -> str:
    """sha256 of ``name<TAB>size`` lines, in listing order."""
    digest = hashlib.sha256()
    for name, size in zip(names, sizes, strict=True):
        digest.update(f"{name}\t{int(size)}\n".encode())
    return digest.hexdigest()


def _sort_key(relative: str) -> tuple[str, ...]:
    """Part by part, as the recursive sorted scan of a local folder reads them."""
    return tuple(relative.split("/"))


def _visible_files(found: Mapping[str, Any], root: str) -> list[tuple[str, str, int]]:
    """(relative name, path, size) of every file below ``root`` in a ``fs.find`` listing,
    hidden names left out."""
    entries = []
    prefix = root.rstrip("/") + "/"
    for path, info in found.items():
        if info.get("type", "file") != "file" or not path.startswith(prefix):
            continue
        relative = path[len(prefix):]
        if not relative or any(part.startswith(".") for part in relative.split("/")):
            continue
        entries.append((relative, path, int(info.get("size") or 0)))
    return entries


def list_remote(url: str, *, every_file: bool = False, storage_options: Mapping[str, Any] | None = None) -> RemoteListing:
    """List DATA at ``url`` (one object, or every object below the prefix)."""
    fs, root = filesystem(url, storage_options)
    try:
        if fs.isfile(root):
            info = fs.info(root)
            kind = "files" if every_file else kind_of(root)
            if kind is None:
                raise DataError(
                    f"DATA {url} has an unsupported extension {extension(root) or '(none)'!r}; "
                    f"supported: {SUPPORTED} (or read it with --preprocess module:fn)."
                )
            name = root.rsplit("/", 1)[-1]
            return RemoteListing(url, fs, root, False, kind, [root], [name], [int(info.get("size") or 0)])
        found = fs.find(root, detail=True)
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"DATA {url} does not exist; check the URL.") from exc
    except PermissionError as exc:
        raise DataError(f"cannot list DATA {url}: permission denied; check the credentials.") from exc
    except Exception as exc:  # noqa: BLE001 - botocore, aiohttp, gcsfs... raise their own kinds
        raise DataError(f"cannot list DATA {url} ({type(exc).__name__}: {first_line(exc)}); check the URL, the credentials and --storage-option.") from exc
    entries = _visible_files(found, root)
    if not entries:
        raise DataError(f"DATA {url} does not exist or holds no files (hidden names are ignored); check the URL.")
    entries.sort(key=lambda e: _sort_key(e[0]))
    if every_file:
        return RemoteListing(url, fs, root, True, "files", [e[1] for e in entries], [e[0] for e in entries], [e[2] for e in entries])
    by_kind: dict[str, list[tuple[str, str, int]]] = {}
    ignored: Counter[str] = Counter()
    for entry in entries:
        kind = kind_of(entry[0])
        if kind is None:
            ignored[extension(entry[0]) or "(no extension)"] += 1
        else:
            by_kind.setdefault(kind, []).append(entry)
    if not by_kind:
        seen = ", ".join(f"{ext} x{n}" for ext, n in ignored.most_common(6))
        raise DataError(f"DATA {url} has no supported data files (found {sum(ignored.values())}: {seen}); supported: {SUPPORTED}.")
    if len(by_kind) > 1:
        parts = [f"{kind} ({len(items)} file(s), e.g. {items[0][0]})" for kind, items in by_kind.items()]
        raise DataError(f"DATA {url} mixes {' and '.join(parts)}; point DATA at a prefix holding one kind of file.")
    (kind, items), = by_kind.items()
    return RemoteListing(
        url, fs, root, True, kind, [e[1] for e in items], [e[0] for e in items], [e[2] for e in items], dict(ignored)
    )


def stage(listing: RemoteListing, indices: range | list[int], folder: Path) -> list[str]:
    """Copy the objects ``indices`` of ``listing`` into ``folder`` (keeping their relative
    paths, so class folders stay class folders) and return the local paths, in order."""
    remote, local = [], []
    for i in indices:
        target = Path(folder) / listing.relative[i]
        target.parent.mkdir(parents=True, exist_ok=True)
        remote.append(listing.paths[i])
        local.append(str(target))
    if not remote:
        return []
    try:
        listing.fs.get(remote, local)
    except FileNotFoundError as exc:
        raise DataError(f"an object of DATA {listing.url} disappeared while reading it ({first_line(exc)}); run again.") from exc
    except PermissionError as exc:
        raise DataError(f"cannot read DATA {listing.url}: permission denied ({first_line(exc)}); check the credentials.") from exc
    except Exception as exc:  # noqa: BLE001 - transport errors of every file system
        raise DataError(f"cannot download from DATA {listing.url} ({type(exc).__name__}: {first_line(exc)}); check the connection and credentials.") from exc
    missing = [p for p in local if not os.path.isfile(p)]
    if missing:
        raise DataError(f"downloading from DATA {listing.url} left {len(missing)} file(s) missing (e.g. {missing[0]}); run again.")
    return local

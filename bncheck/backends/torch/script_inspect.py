"""Inspect a TorchScript archive's compiled code before ``torch.jit.load`` runs it.

TorchScript loading unpickles nothing in Python (its unpickler is C++ and builds only
TorchScript types), but the archive's ``code/`` is compiled on load and runs in
``__setstate__`` and ``forward``; TorchScript has no ``import`` yet can call every registered
operator, and a few of those touch the file system (``torch.from_file`` creates files,
``torch.save`` writes them). This module refuses code that calls any operator whose schema
takes a file name or path, computed from the operator registry of the installed torch.
Residual risk (SECURITY.md): memory-safety bugs in torch's C++ deserializer and unbounded
compute in the compiled code itself.
"""

from __future__ import annotations

import functools
import re
import zipfile
from pathlib import Path

from bncheck.errors import ModelLoadError

#: Argument names that mean "a path on disk" in an operator schema.
_PATH_ARGS = re.compile(r"\bstr\??\s+(filename|file_name|path|file|name)\b")
#: Namespaces whose operators exist to read or write files.
_FILE_NAMESPACES = ("debugprims",)
#: ``torch.NAME`` / ``ops.NS.NAME`` / ``.NAME`` (called or taken as a value).
_REFERENCE = re.compile(r"\.(\w+)\b")


@functools.cache
def file_operators() -> frozenset[tuple[str, str]]:
    """(namespace, name) of every registered operator that takes a path (aten::save, aten::from_file...)."""
    import torch  # optional: torch

    found = set()
    for schema in torch._C._jit_get_all_schemas():
        namespace, _, name = schema.name.partition("::")
        args = ", ".join(f"{arg.type} {arg.name}" for arg in schema.arguments)
        if namespace in _FILE_NAMESPACES or (namespace in ("aten", "prim") and _PATH_ARGS.search(args)):
            found.add((namespace, name))
    return frozenset(found)


def check_torchscript_archive(path: Path) -> None:
    """Raise :class:`ModelLoadError` when the compiled code in ``path`` calls an operator that
    reads or writes files."""
    path = Path(path)
    denied = {name: f"{namespace}::{name}" for namespace, name in file_operators()}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                inner = info.filename.split("/", 1)[-1]
                if not (inner.startswith("code/") and inner.endswith(".py")):
                    continue
                text = archive.read(info).decode("utf-8", errors="replace")
                for match in _REFERENCE.finditer(text):
                    if match.group(1) in denied:
                        raise ModelLoadError(
                            f"{path} is TorchScript whose code ({inner}) calls {denied[match.group(1)]}, "
                            "an operator that reads or writes files, so running it could touch this "
                            "machine's disk; if you trust the file pass --trust-pickle."
                        )
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelLoadError(
            f"{path} looks like a TorchScript archive but is damaged ({exc}); save or download it again."
        ) from exc

"""Inspect a torch.export (``.pt2``) archive before ``torch.export.load`` reads it.

``torch.export.load`` runs code from the file in five places: weights and tensor constants
whose config says ``use_pickle`` (``torch.load(weights_only=False)``), custom-object and
opaque constants (``torch._C._pickle_load_obj`` / ``pickle.loads``), sample inputs and legacy
``.pt`` members (retried with ``weights_only=False`` when the safe load fails), symbolic sizes
(``sympy.sympify``, which evaluates the string), and AOTInductor members (a shared library).
Like picklescan/modelscan, this module reads the archive with ``zipfile`` and ``json`` only and
refuses what would run code; a pickled member is accepted only when
``torch.load(weights_only=True)`` accepts it, so torch's own fallback never triggers.
"""

from __future__ import annotations

import builtins
import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bncheck.errors import ModelLoadError

#: Functions a symbolic size may call: torch.utils._sympy.functions and sympy's basics.
SAFE_FUNCTIONS = frozenset(
    {
        "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt",
        "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv",
        "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt",
        "RoundToInt", "RoundDecimal", "ToFloat", "OpaqueUnaryFn_sqrt", "BitwiseFn_bitwise_and",
        "BitwiseFn_bitwise_or", "Identity", "Max", "Min", "Abs", "Eq", "Ne", "Ge", "Gt", "Le",
        "Lt", "And", "Or", "Not", "Piecewise", "floor", "ceiling", "sqrt", "Pow", "Mul", "Add",
        "Integer", "Rational", "Float", "Symbol",
    }
)
_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<string>'[A-Za-z_][A-Za-z0-9_]*')|(?P<op>\*\*|//|<=|>=|==|!=|[-+*/%(),<>&|~=]))"
)
_BUILTINS = frozenset(dir(builtins)) - {"True", "False", "None"}
#: Refusal wording shared by every check.
_FIX = "unpickling or evaluating it runs code from the file; if you trust it pass --trust-pickle."


def check_export_archive(path: Path) -> None:
    """Raise :class:`ModelLoadError` when loading ``path`` with ``torch.export.load`` could
    run code from it."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = {_inner(info.filename): info for info in archive.infolist()}
            for name in members:
                if name.startswith("data/aotinductor/"):
                    _refuse(path, f"holds AOTInductor compiled code ({name}, a native library torch would load)")
            for name, info in members.items():
                if _is_payload_config(name):
                    _check_payload_config(path, archive, name, _read_json(path, archive, info))
                elif name.endswith(".pt"):
                    _require_weights_only(path, name, archive.read(info))
                elif name.endswith(".json") and (name.startswith("models/") or name == "serialized_exported_program.json"):
                    _check_expressions(path, name, _read_json(path, archive, info))
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelLoadError(
            f"{path} looks like a torch.export archive but is damaged ({exc}); save or download it again."
        ) from exc


def _inner(filename: str) -> str:
    """A member's name inside the archive's single top-level folder."""
    return filename.split("/", 1)[1] if "/" in filename else filename


def _is_payload_config(name: str) -> bool:
    return (name.startswith("data/weights/") and name.endswith("_weights_config.json")) or (
        name.startswith("data/constants/") and name.endswith("_constants_config.json")
    )


def _refuse(path: Path, why: str) -> None:
    raise ModelLoadError(f"{path} {why}; {_FIX}")


def _read_json(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Any:
    try:
        return json.loads(archive.read(info))
    except (ValueError, RecursionError) as exc:
        raise ModelLoadError(
            f"{path} is a torch.export archive whose {_inner(info.filename)} is not valid JSON; "
            "save or download it again."
        ) from exc


def _check_payload_config(path: Path, archive: zipfile.ZipFile, name: str, config: Any) -> None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        _refuse(path, f"has a malformed {name}")
    folder = name.rsplit("/", 1)[0]
    for fqn, meta in entries.items():
        meta = meta if isinstance(meta, dict) else {}
        member = str(meta.get("path_name", ""))
        if member.startswith(("custom_obj_", "opaque_obj_")):
            _refuse(path, f"holds the custom-object constant {fqn!r} ({member}), which torch restores with pickle")
        if meta.get("use_pickle"):
            data = _member_bytes(path, archive, f"{folder}/{member}")
            _require_weights_only(path, f"{folder}/{member} ({fqn!r}, stored as a pickle)", data)


def _member_bytes(path: Path, archive: zipfile.ZipFile, inner: str) -> bytes:
    for info in archive.infolist():
        if _inner(info.filename) == inner:
            return archive.read(info)
    _refuse(path, f"names {inner} in its config but does not hold it")
    return b""


def _require_weights_only(path: Path, what: str, data: bytes) -> None:
    """Accept a pickled member only if ``torch.load(weights_only=True)`` accepts it."""
    import torch  # optional: torch

    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # any refusal or damage: torch would retry it with weights_only=False
        _refuse(path, f"holds {what}, a pickle that weights-only loading refuses")


def _check_expressions(path: Path, name: str, program: Any) -> None:
    for expression in _expressions(program):
        problem = unsafe_expression(expression)
        if problem:
            shown = expression if len(expression) <= 60 else expression[:57] + "..."
            _refuse(path, f"has a symbolic size in {name} that is not a plain formula ({problem}: {shown!r}), which torch would evaluate")


def _expressions(node: Any, key: str = "", depth: int = 0) -> Iterator[str]:
    """Every string torch hands to ``sympy.sympify``: ``expr_str`` values and the symbol
    names that key ``range_constraints``."""
    if depth > 200:
        raise ModelLoadError("the torch.export program is nested too deeply to be a real one.")
    if isinstance(node, dict):
        if key == "range_constraints":
            yield from (k for k in node if isinstance(k, str))
        for k, v in node.items():
            if k == "expr_str" and isinstance(v, str):
                yield v
            else:
                yield from _expressions(v, k, depth + 1)
    elif isinstance(node, list):
        for item in node:
            yield from _expressions(item, key, depth + 1)


def unsafe_expression(text: str) -> str | None:
    """Why ``text`` is not a plain symbolic-size formula (None when it is): only numbers,
    symbol names, arithmetic, keyword flags and the functions in :data:`SAFE_FUNCTIONS`
    (``Symbol('s77', positive=True, integer=True)`` is what torch writes); no strings other
    than a quoted name, no attributes, dunders or Python builtins."""
    pos = 0
    tokens: list[tuple[str, str]] = []
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            if text[pos:].strip() == "":
                break
            return f"character {text[pos]!r}"
        pos = match.end()
        kind = match.lastgroup or "op"
        tokens.append((kind, match.group(kind)))
    for index, (kind, value) in enumerate(tokens):
        if kind != "name":
            continue
        called = index + 1 < len(tokens) and tokens[index + 1] == ("op", "(")
        if "__" in value:
            return f"the name {value}"
        if called and value not in SAFE_FUNCTIONS:
            return f"a call to {value}"
        if not called and value in _BUILTINS:
            return f"the builtin {value}"
    return None

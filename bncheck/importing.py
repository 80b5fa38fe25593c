"""Resolving user code named on the command line: ``package.module:name`` or
``path/to/file.py:name`` (``--arch``, ``--preprocess``)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bncheck.errors import BncheckError, first_line


def resolve_callable(spec: str, *, option: str, noun: str, error: type[BncheckError]) -> Callable[..., Any]:
    """The callable named by ``spec``; ``error`` (with the option named) when it cannot be had."""
    target, _, attr = spec.rpartition(":")
    if ":" not in spec or not target or not attr:
        raise error(f"{option} {spec!r} must look like package.module:{noun} or path/to/file.py:{noun}.")
    module = import_target(target, spec, option=option, error=error)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            message = f"{option} {spec!r}: {target} has no attribute {attr!r}{_defined_here(module, attr)}"
            raise error(message if message.endswith("?") else message + ".")
        obj = getattr(obj, part)
    if not callable(obj):
        raise error(f"{option} {spec!r}: {attr} is not callable.")
    return obj


def _defined_here(module: Any, attr: str) -> str:
    """``; it defines a, b (did you mean a?)``: the public callables a module defines itself
    (functions and classes, not what it imports), the nearest to ``attr`` (any case) named; for
    a package, which re-exports what it holds, only the nearest public callable."""
    import difflib

    public = {name: value for name, value in vars(module).items() if not name.startswith("_") and callable(value)}
    package = hasattr(module, "__path__")
    names = sorted(n for n, v in public.items() if package or getattr(v, "__module__", None) == module.__name__)
    by_lower = {n.lower(): n for n in names}
    near = [by_lower[n] for n in difflib.get_close_matches(attr.lower(), list(by_lower), n=1)]
    hint = f" (did you mean {near[0]}?)" if near else ""
    if package or not names:
        return f"; did you mean {near[0]}?" if near else ""
    return f"; it defines {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}{hint}"


def import_target(target: str, spec: str, *, option: str, error: type[BncheckError]):
    """Import a module by dotted name (the working directory first on the path, as ``python -m``
    does) or a Python file by path (its folder on the path while it runs, for sibling imports)."""
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise error(f"{option} {spec!r}: file {target} does not exist.")
        name = f"bncheck_user_{abs(hash(str(path.resolve())))}"
        if name in sys.modules:
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise error(f"{option} {spec!r}: {target} cannot be imported as Python.")
        module = importlib.util.module_from_spec(module_spec)
        sys.path.insert(0, str(path.resolve().parent))
        try:
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:  # a module that calls sys.exit() must not end the run
            sys.modules.pop(name, None)
            raise error(f"{option} {spec!r}: importing {target} {failure(exc)}.") from exc
        finally:
            sys.path.pop(0)
        return module
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and not (target == missing or target.startswith(missing + ".")):
            # the module exists but one of its own imports does not: a dependency to install
            raise error(
                f"{option} {spec!r}: importing module {target} needs {missing}, which is not installed; "
                f"install the package that provides {missing} (often `pip install {missing.split('.')[0]}`)."
            ) from exc
        raise error(
            f"{option} {spec!r}: cannot import module {target} (ModuleNotFoundError: "
            f"{first_line(exc)}); check the name and PYTHONPATH."
        ) from exc
    except (Exception, SystemExit) as exc:
        raise error(
            f"{option} {spec!r}: cannot import module {target} ({type(exc).__name__}: "
            f"{first_line(exc)}); check the name and PYTHONPATH."
        ) from exc


def failure(exc: BaseException) -> str:
    """How a user callable (or its module) failed: "called sys.exit(0)" or "failed with
    ValueError: ...", for a sentence that names the callable."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    return f"failed with {type(exc).__name__}: {first_line(exc)}"

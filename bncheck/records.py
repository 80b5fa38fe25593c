"""The JSON form of the typed result records (the report's figures, the rules' evidence):
:class:`Record`, mixed into a dataclass, writes its fields in declaration order and reads
them back by their annotated types, so that a record type declares its fields once.

- ``to_dict``: every field by name, in order; a nested record as its own dict, a tuple or
  list as a list, a dict with its values converted the same way; last, the keys of a field
  named ``extra`` (see ``from_dict``).
- ``from_dict``: None for a missing record (None or ``{}``); else every field from its key.
  A key that is absent (a record of an older version) reads as the field's default, or None;
  a nested record is read by its type (an absent one as None where the field may be None,
  else from ``{}``); an absent list or dict reads as empty. Keys the type does not know go to
  a field named ``extra`` where the record has one (kept so that it reads back as it was).

A record whose JSON is not its fields in order (keys left out, another order) writes its own
``to_dict`` and keeps ``from_dict``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from typing import Any, TypeVar

R = TypeVar("R", bound="Record")

#: the field that keeps the keys a record type does not know
EXTRA = "extra"


class Record:
    """``to_dict`` / ``from_dict`` for a dataclass (see the module's docstring)."""

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != EXTRA}  # type: ignore[arg-type]
        out.update(getattr(self, EXTRA, {}))
        return out

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any] | None) -> R | None:
        return None if not data else cls.read(data)

    @classmethod
    def read(cls: type[R], data: dict[str, Any]) -> R:
        """The record ``data`` holds, even an empty one (every field then as absent)."""
        hints = _hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name == EXTRA:
                values[EXTRA] = {key: value for key, value in data.items() if key not in hints}
            elif f.name in data:
                values[f.name] = _typed(hints[f.name], data[f.name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                values[f.name] = _typed(hints[f.name], None)
        return cls(**values)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _typed(hint: Any, value: Any) -> Any:
    """``value`` (from JSON) as the annotated type ``hint`` wants it (see the module's docstring)."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    if optional:
        rest = [a for a in args if a is not type(None)]
        if value is None or len(rest) != 1:
            return value
        hint = rest[0]
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict(value) if optional else hint.read(value or {})
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        items = [_typed(args[0], v) for v in value or ()]
        return items if origin is list else tuple(items)
    if origin is dict:
        return {k: _typed(args[1], v) for k, v in (value or {}).items()}
    return value

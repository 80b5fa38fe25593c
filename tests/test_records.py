"""bncheck.records.Record: a typed result record's JSON from its fields, and back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from bncheck.records import Record


@dataclass(frozen=True)
class Inner(Record):
    a: int
    b: float | None


@dataclass(frozen=True)
class Outer(Record):
    name: str
    inner: Inner
    maybe: Inner | None
    many: list[Inner]
    by_name: dict[str, Inner]
    shape: tuple[int, ...]
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def test_to_dict_writes_the_fields_in_order_nested_records_as_dicts_and_extra_last():
    record = Outer("x", Inner(1, None), None, [Inner(2, 0.5)], {"k": Inner(3, 1.0)}, (1, 2), extra={"old": 7})
    assert json.dumps(record.to_dict()) == json.dumps({
        "name": "x", "inner": {"a": 1, "b": None}, "maybe": None, "many": [{"a": 2, "b": 0.5}],
        "by_name": {"k": {"a": 3, "b": 1.0}}, "shape": [1, 2], "note": None, "old": 7,
    })  # fmt: skip


def test_from_dict_reads_back_by_the_annotated_types():
    record = Outer("x", Inner(1, None), Inner(0, 2.0), [Inner(2, 0.5)], {"k": Inner(3, 1.0)}, (1, 2), "n", {"old": 7})
    again = Outer.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again == record and isinstance(again.shape, tuple) and isinstance(again.by_name["k"], Inner)


def test_absent_keys_read_as_defaults_none_or_empty_and_an_empty_record_is_none():
    record = Outer.from_dict({"name": "x", "future": 1})
    assert record == Outer("x", Inner(None, None), None, [], {}, (), None, {"future": 1})  # type: ignore[arg-type]
    assert Outer.from_dict({}) is None and Outer.from_dict(None) is None
    assert Inner.read({}) == Inner(None, None)  # type: ignore[arg-type]

"""One way to declare a command: ``@command(app)``.

A command function may take *option bundles*: dataclasses whose fields are typer options
or other bundles (:mod:`bncheck.cli.bundles`). ``command`` spreads each bundle's fields into the parameters
typer sees, and hands the function one bundle instance per annotation, so that options shared
by several commands are declared once and a command reads ``data.options(...)`` instead of
sixteen keyword arguments. It also keeps every help text literal (rich markup would eat
``[tool.bncheck]`` and ``bncheck[report]``) and turns errors into one sentence on stderr
(:func:`bncheck.cli.common.handle_errors`).
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Any

import typer

from bncheck.cli.common import handle_errors
from bncheck.cli.group import literal_doc, literal_help

_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return inspect.Parameter.empty


def _is_bundle(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


#: how to rebuild one bundle from the options typer hands over: its class, and per field either
#: the option's name or, for a bundle nested in it, that field's name and its own plan
_Plan = tuple[type, list[Any]]


def _spread_bundle(bundle: type) -> tuple[list[inspect.Parameter], _Plan]:
    """The options of ``bundle`` (nested bundles spread in their place) and its rebuild plan."""
    field_hints = typing.get_type_hints(bundle, include_extras=True)
    params: list[inspect.Parameter] = []
    plan: list[Any] = []
    for field in (f for f in dataclasses.fields(bundle) if f.init):
        hint = field_hints[field.name]
        if _is_bundle(hint):
            inner, inner_plan = _spread_bundle(hint)
            params += inner
            plan.append((field.name, inner_plan))
            continue
        params.append(inspect.Parameter(field.name, _KEYWORD, default=_field_default(field), annotation=hint))
        plan.append(field.name)
    return params, (bundle, plan)


def _rebuild(plan: _Plan, values: dict[str, Any]) -> Any:
    """The bundle ``plan`` describes, its options popped from ``values``."""
    bundle, fields = plan
    kwargs = {}
    for field in fields:
        if isinstance(field, tuple):
            kwargs[field[0]] = _rebuild(field[1], values)
        else:
            kwargs[field] = values.pop(field)
    return bundle(**kwargs)


def _spread(func: Callable[..., Any]) -> tuple[list[inspect.Parameter], dict[str, _Plan]]:
    """The parameters typer should see for ``func`` (bundles spread into their fields, a
    bundle's bundle fields into theirs), and for each bundle parameter its rebuild plan."""
    hints = typing.get_type_hints(func, include_extras=True)
    params: list[inspect.Parameter] = []
    bundles: dict[str, _Plan] = {}
    for param in inspect.signature(func).parameters.values():
        hint = hints.get(param.name, param.annotation)
        if not _is_bundle(hint):
            params.append(param.replace(kind=_KEYWORD, annotation=hint))
            continue
        fields, bundles[param.name] = _spread_bundle(hint)
        params += fields
    names = [p.name for p in params]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise TypeError(f"{func.__name__}: parameters declared twice: {', '.join(clashes)}")
    return params, bundles


def bundled(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` as typer should call it: one keyword per option, bundles rebuilt."""
    params, bundles = _spread(func)

    def call(**values: Any) -> Any:
        for name, plan in bundles.items():
            values[name] = _rebuild(plan, values)
        return func(**values)

    call.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    call.__annotations__ = {p.name: p.annotation for p in params}
    call.__name__ = func.__name__
    call.__qualname__ = func.__qualname__
    call.__module__ = func.__module__
    call.__doc__ = func.__doc__
    return call


class LiteralHelpCommand(typer.core.TyperCommand):
    """A command whose help texts, its own and its options', are escaped for rich markup when
    its help is shown (:func:`~bncheck.cli.group.literal_help`), not when it is declared."""

    def format_help(self, ctx, formatter):
        literal_help(self)
        return super().format_help(ctx, formatter)


def command(app: typer.Typer, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``func`` as a command of ``app`` (bundles spread, help literal, errors one
    sentence). Returns ``func`` unchanged, so it can still be called from Python."""

    def register(func: Callable[..., Any]) -> Callable[..., Any]:
        app.command(name, cls=LiteralHelpCommand, help=literal_doc(inspect.getdoc(func)))(handle_errors(bundled(func)))
        return func

    return register

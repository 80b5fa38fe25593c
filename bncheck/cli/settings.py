"""``bncheck config``: the effective settings and where each came from (a default, the config
file, a ``BNCHECK_*`` variable or an option), as a table or JSON. It takes the options the
other commands take, so a command line can be checked by putting ``config`` in front of its
options."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from bncheck.cli.bundles import GateArgs
from bncheck.cli.command import command
from bncheck.cli.common import choice, report_width
from bncheck.cli.data_options import DataArgs
from bncheck.config import Settings, Source, effective_settings, env_name


def _shown(value: Any) -> str:
    """A value as the table shows it (lists and tuples comma-joined, thresholds CODE.NAME=V)."""
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{code}.{name}={number:g}" for code, inner in sorted(value.items()) for name, number in sorted(inner.items())) or "-"
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def settings_document(settings: Settings, rows: dict[str, tuple[Any, Source]]) -> dict[str, Any]:
    """The JSON answer: the config file read, and each setting's value, source kind, source
    (file, variable or option; null for a default) and environment variable."""
    return {
        "config_file": str(settings.config_path) if settings.config_path is not None else None,
        "settings": {
            key.replace("_", "-"): {"value": _json_value(value), "source": source.kind, "from": source.where, "env": env_name(key)}
            for key, (value, source) in rows.items()
        },
    }


def _table(settings: Settings, rows: dict[str, tuple[Any, Source]]) -> Table:
    where = settings.config_path if settings.config_path is not None else "none found"
    table = Table(title=Text(f"bncheck settings (config file: {where})"), title_justify="left", expand=False)
    table.add_column("setting", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("from", overflow="fold")
    table.add_column("variable", no_wrap=True)
    for key, (value, source) in rows.items():
        cells = (key.replace("_", "-"), _shown(value), str(source), env_name(key))
        table.add_row(*(Text(cell) for cell in cells), style="dim" if source.kind == "default" else None)
    return table


#: ``bncheck config``
app = typer.Typer()


@command(app, "config")
def config(
    fmt: Annotated[choice(("table", "json")), typer.Option("--format", "-f", case_sensitive=False, help="table or json.")] = "table",
    train_batch_size: Annotated[int | None, typer.Option("--train-batch-size", help="As for audit and drift.")] = None,
    mismatch_samples: Annotated[int | None, typer.Option("--mismatch-samples", help="As for drift.")] = None,
    class_axis: Annotated[str | None, typer.Option("--class-axis", help="As for drift.")] = None,
    *,
    gate: GateArgs,
    data_args: DataArgs,
) -> None:
    """Print the effective settings and where each came from: a default, the config file
    ([tool.bncheck] in the nearest pyproject.toml, then bncheck.toml, or --config), a
    BNCHECK_* environment variable, or an option given here (the options of drift and
    recalibrate). Precedence: option > environment variable > config file > default."""
    settings = gate.settings(train_batch_size=train_batch_size, options={"mismatch_samples": mismatch_samples, "class_axis": class_axis})
    values = {name: getattr(data_args, name) for name in data_args.__dataclass_fields__}
    values["strict"] = values["strict"] or None  # False: not given
    rows = effective_settings(settings, values)
    if fmt == "json":
        sys.stdout.write(json.dumps(settings_document(settings, rows), indent=2) + "\n")
        return
    Console(width=report_width(), highlight=False, soft_wrap=False).print(_table(settings, rows))


__all__ = ["app", "config", "settings_document"]

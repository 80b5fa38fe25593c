"""A :class:`~bncheck.report.ranking.Ranking` (``bncheck drift M1 M2 ... DATA``) in every format.

table and markdown: the ranking table (rank, model, the ranking key first: BN301's output change
where it ran, the score, layers, worst layer, accuracy with labels, verdict), then each model's own report in the order
given. json: :meth:`Ranking.to_json` (each model's report inside it). junit, sarif, github and
gitlab: each model's findings, combined as for several audited models (they carry findings, not
an order). html shows one model and is refused.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from bncheck.errors import UsageError
from bncheck.formats import render_many
from bncheck.formats.common import encodable, fmt_num, md_cell, md_code
from bncheck.report.ranking import RankedModel, Ranking

STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan", "ok": "green"}
ICONS = {"error": "🔴", "warning": "🟠", "info": "🔵", "ok": "✅"}
#: the formats a ranking renders in (html shows one model)
RANKING_FORMATS = ("table", "json", "markdown", "junit", "sarif", "github", "gitlab")


def check_format(fmt: str) -> None:
    """UsageError for a format a ranking cannot be shown in (checked before any work)."""
    if fmt not in RANKING_FORMATS:
        raise UsageError(f"--format {fmt} shows one model; rank models with --format table, markdown or json, or run bncheck drift once per model.")


def render(ranking: Ranking, fmt: str, *, color: bool = False, width: int | None = None, quiet: bool = False) -> str:
    """``ranking`` as text in ``fmt`` (see the module docstring); ``quiet``: table as one line a model."""
    check_format(fmt)
    if fmt == "json":
        return encodable(ranking.to_json() + "\n")
    if fmt == "table" and quiet:
        return encodable("".join(_line(entry) + "\n" for entry in ranking.models))
    if fmt == "table":
        return encodable(_table_text(ranking, color, width) + "\n" + render_many(ranking.reports, fmt, color=color, width=width))
    if fmt == "markdown":
        return encodable("\n".join(markdown_lines(ranking)) + "\n" + render_many(ranking.reports, fmt))
    return render_many(ranking.reports, fmt)


def _line(entry: RankedModel) -> str:
    change = f"output change {_change(entry)}, " if entry.output_change else ""
    accuracy = f", accuracy {_percent(entry.accuracy)}" if entry.accuracy is not None else ""
    score = fmt_num(entry.score) if math.isfinite(entry.score) else "- (no BN layer measured)"
    return f"#{entry.rank} {entry.model} ({entry.format}): {change}score {score}{accuracy} — {_verdict(entry)}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * float(value):.1f}%"


def _verdict(entry: RankedModel) -> str:
    rules = f": {', '.join(entry.rules)}" if entry.rules and entry.verdict != "ok" else ""
    return f"{entry.verdict}{rules}" + ("" if entry.passed else " (fails)")


def _change(entry: RankedModel) -> str:
    if not entry.output_change:
        return "-"
    kind, value = entry.output_change["kind"], entry.output_change["value"]
    return f"{_percent(value)} flips" if kind == "top1_disagreement" else f"{fmt_num(value)} rel."


def _columns(ranking: Ranking) -> list[str]:
    """The table's columns, the ranking key first after the model."""
    change = ["output change"] if any(entry.output_change for entry in ranking.models) else []
    names = ["rank", "model", *(change if ranking.key == "output_change" else []), "score", "layers", "worst layer"]
    if any(entry.accuracy is not None for entry in ranking.models):
        names.append("accuracy")
    return [*names, *(change if ranking.key != "output_change" else []), "verdict"]


def _cells(entry: RankedModel) -> dict[str, str]:
    worst = f"{entry.worst_layer} ({fmt_num(entry.worst_layer_score)})" if entry.worst_layer else "-"
    return {
        "rank": str(entry.rank), "model": entry.model, "score": fmt_num(entry.score) if math.isfinite(entry.score) else "-",
        "layers": str(entry.layers), "worst layer": worst, "accuracy": _percent(entry.accuracy),
        "output change": _change(entry), "verdict": _verdict(entry),
    }  # fmt: skip


def notes(ranking: Ranking) -> list[str]:
    """The lines under the ranking: what the score is, ties within noise, the gate."""
    data = ranking.data or {}
    where = f"on {data.get('path')} ({data.get('samples')} samples)"
    if ranking.key == "output_change":
        key = (
            f"ranked by the output change {where}: the share of predictions (or relative output error) that DATA's own "
            "statistics would change, label-free (BN301); ties by the score, the mean layer drift score. Lower = the stored statistics fit DATA better."
        )
    else:
        key = f"ranked by the score {where}: the mean layer drift score; lower = the stored statistics fit DATA better."
    out = [key]
    for entry, following in zip(ranking.models, ranking.models[1:], strict=False):
        if entry.separated_from_next is False:
            floor = max(entry.noise, following.noise)
            out.append(f"#{entry.rank} and #{following.rank} differ by less than the sampling noise of this DATA (≈ {fmt_num(floor)}): it does not tell them apart.")
    for entry in ranking.models:
        if not math.isfinite(entry.score):
            out.append(f"#{entry.rank} {entry.model}: no BN layer with running statistics was measured, so it has no score (ranked last).")
    failing = sum(1 for entry in ranking.models if not entry.passed)
    out.append(
        f"gate: each model's own findings (fail-on {ranking.fail_on}): {failing} of {len(ranking.models)} model(s) fail; the order never fails a run."
    )
    return out


#: the ranking's figures: never broken over lines (`0.068` / `9` at 60 columns)
FIGURES = ("rank", "score", "layers", "accuracy", "output change")
#: model names shown whole up to this length (longer ones fold within it)
MODEL_WIDTH = 40
#: columns given up, in this order, when the table cannot fit the width with every figure and word whole
RANKING_DROPS = ("layers", "worst layer", "accuracy", "verdict")


def _folder(ranking: Ranking) -> str | None:
    """The folder every model is in, when there are several and it is not the working one: the
    table names them relative to it (full paths wrapped over five rows at 100 columns)."""
    if len(ranking.models) < 2:
        return None
    parents = {str(Path(entry.model).parent) for entry in ranking.models}
    return parents.pop() if len(parents) == 1 and parents != {"."} else None


def _ranking_table(ranking: Ranking, names: list[str], folder: str | None) -> Table:
    """The table of ``names``; model names of up to MODEL_WIDTH characters are kept whole."""
    models = [Path(entry.model).name if folder is not None else entry.model for entry in ranking.models]
    worst = [word for entry in ranking.models for word in _cells(entry)["worst layer"].split()]
    # rich narrows the widest wrapping columns first, breaking names that fit: these keep their width
    widths = {
        "model": max(len("model"), min(max(map(len, models)), MODEL_WIDTH)),
        "worst layer": max(len("worst layer"), min(max(map(len, worst)), MODEL_WIDTH)),
    }
    table = Table(title=f"Ranking of {len(ranking.models)} models (best fit first)", title_justify="left")
    for name in names:
        table.add_column(
            name, justify="right" if name in FIGURES else "left", overflow="fold", no_wrap=name in FIGURES,
            width=widths.get(name),
        )
    for entry, model in zip(ranking.models, models, strict=True):
        cells = _cells(entry)
        cells["model"] = model
        style = STYLE.get(entry.verdict, "")
        table.add_row(*(Text(cells[name], style=style) if name == "verdict" else cells[name] for name in names))
    return table


def _min_width(table: Table) -> int:
    """The width ``table`` needs with no figure, fixed-width cell, word or heading word broken:
    per column its fixed width, the widest figure, or the longest word, plus padding and rules."""
    total = 1
    for column in table.columns:
        cells = [str(cell) for cell in column.cells]
        if column.width is not None:
            need = column.width
        elif column.no_wrap:
            need = max(len(cell) for cell in [*cells, str(column.header)])
        else:
            need = max(len(word) for cell in [*cells, str(column.header)] for word in cell.split() or [""])
        total += need + 3
    return total


def _table_text(ranking: Ranking, color: bool, width: int | None) -> str:
    names = _columns(ranking)
    folder = _folder(ranking)
    dropped = []
    for name in RANKING_DROPS:
        if _min_width(_ranking_table(ranking, names, folder)) <= (width or 160):
            break
        if name in names:
            names = [n for n in names if n != name]
            dropped.append(name)
    table = _ranking_table(ranking, names, folder)
    where = [Text(f"models in {folder}/", style="dim")] if folder is not None else []
    if dropped:  # each model's own report below has them
        where.append(Text(f"({', '.join(dropped)} not shown at {width or 160} columns; each model's report below has them)", style="dim"))
    parts: list[RenderableType] = [table, *where, *(Text(line, style="dim") for line in notes(ranking))]
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=color, no_color=not color, width=width or 160, soft_wrap=False)
    console.print(Group(*parts), crop=False)
    return buffer.getvalue()


def markdown_lines(ranking: Ranking) -> list[str]:
    """The ranking as a Markdown section (heading, table, notes)."""
    names = _columns(ranking)
    lines = [f"## bncheck drift: ranking of {len(ranking.models)} models (best fit first)", ""]
    lines += ["| " + " | ".join(names) + " |", "|" + "|".join("---:" if n in ("rank", "score", "layers", "accuracy", "output change") else "---" for n in names) + "|"]
    for entry in ranking.models:
        cells = _cells(entry)
        cells["model"] = f"{md_code(entry.model)} ({entry.format})"
        cells["verdict"] = f"{ICONS.get(entry.verdict, '')} {md_cell(cells['verdict'])}"
        lines.append("| " + " | ".join(cells[n] if n in ("model", "verdict") else md_cell(cells[n]) for n in names) + " |")
    return [*lines, "", *(f"- {md_cell(line)}" for line in notes(ranking)), ""]

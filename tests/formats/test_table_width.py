"""The layers table gives up static columns on a narrow terminal by the width it needs: the
sum of its columns' shares (each measured once) is what rich measures for the whole table,
for every set of columns the narrowing visits, on the reports of real runs of every command."""

from __future__ import annotations

import pytest
from rich.console import Console
from rich.measure import Measurement
from rich.text import Text

from bncheck.formats import table
from bncheck.formats.section import section_for
from bncheck.report.io import load_report


def _whole_table_width(names, rows) -> int:
    """The previous measure: the whole table, once per set of columns."""
    short = [{**row, "layer": Text(str(row["layer"])[:24])} for row in rows]
    console = Console(width=100_000)
    return Measurement.get(console, console.options, table._layer_table(names, short)).minimum


@pytest.mark.parametrize("run", ["audit_onnx", "drift_shifted", "drift_csv", "fold_onnx", "recalibrate_onnx"])
def test_the_columns_shares_add_up_to_the_whole_tables_width(sample_runs, run):
    report = load_report(sample_runs[run].path)
    names, rows = table._layer_cells(report, section_for(report))
    widths = table._column_widths(names, rows)
    for k in range(len(table.NARROW_DROPS) + 1):
        kept = [name for name in names if name not in table.NARROW_DROPS[:k]]
        assert table._needed_width(kept, widths) == _whole_table_width(kept, rows), (run, kept)


def test_a_long_layer_name_folds_to_24_columns_in_the_measure(sample_runs):
    report = load_report(sample_runs["drift_shifted"].path)
    names, rows = table._layer_cells(report, section_for(report))
    rows = [{**row, "layer": "features.block.conv_bn_" + "x" * 60} for row in rows]
    widths = table._column_widths(names, rows)
    assert table._needed_width(names, widths) == _whole_table_width(names, rows)
    assert widths["layer"] <= 24 + 3  # the name's 24 columns, padding and one border

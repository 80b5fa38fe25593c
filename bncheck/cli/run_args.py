"""The option bundle of the commands that run MODEL over DATA (``drift``, ``recalibrate``):
DATA, how MODEL is opened, what fails the run, the report and the engine, in that order on
the command line (:mod:`bncheck.cli.command` spreads a bundle's bundles in their place)."""

from __future__ import annotations

from dataclasses import dataclass

from bncheck.cli.bundles import GateArgs, ModelArgs, ReportArgs
from bncheck.cli.data_options import DataArgs
from bncheck.cli.engines import EngineArgs


@dataclass
class RunArgs:
    """The bundles every run over DATA takes."""

    data: DataArgs
    model: ModelArgs
    gate: GateArgs
    report: ReportArgs
    engine: EngineArgs

"""The option bundle of the commands that run MODEL over DATA (``drift``, ``recalibrate``):
DATA, how MODEL is opened, what fails the run, the report and the engine, in that order on
the command line (:mod:`bncheck.cli.command` spreads a bundle's bundles in their place)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bncheck.cli.bundles import GateArgs, ModelArgs, ModelReportArgs, ReportArgs
from bncheck.cli.data_options import DataArgs
from bncheck.cli.engines import EngineArgs
from bncheck.config import Settings


@dataclass
class RunArgs:
    """The bundles every run over DATA takes."""

    data: DataArgs
    model: ModelArgs
    gate: GateArgs
    report: ReportArgs
    engine: EngineArgs

    def pass_options(self, settings: Settings) -> dict[str, Any]:
        """The fields of :class:`~bncheck.commands.drift.DriftOptions` and
        :class:`~bncheck.commands.recalibrate.RecalibrateOptions` these bundles set: how DATA is
        read (in batches of what size, how much of it), the progress, and where the model and
        the passes run."""
        data = self.data.options(settings.options)
        engine = self.engine.build(self.data.workers, data)
        return {
            "batch_size": data.batch_size, "limit": data.limit, "data_options": data, "progress": self.report.progress(settings),
            "device": self.engine.device or "cpu", "engine": engine, "storage_options": self.engine.storage_options(),
        }


@dataclass
class ModelRunArgs(RunArgs):
    """RunArgs of ``recalibrate``, which writes a model: its ``-o OUT.onnx`` names it."""

    report: ModelReportArgs

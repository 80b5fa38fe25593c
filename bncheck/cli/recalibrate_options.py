"""The options of ``bncheck recalibrate`` that say how the statistics are estimated and
checked, beyond the data and engine options: one bundle (:mod:`bncheck.cli.bundles`) whose
fields are the :class:`~bncheck.commands.recalibrate.RecalibrateOptions` fields of the same
names."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any

import typer

from bncheck.cli.common import choice, parse_class_axis
from bncheck.commands.recalibrate import METHODS, VARIANCES


@dataclass
class EstimateArgs:
    """``--method``, ``--variance``, ``--momentum``, ``--tolerance``, ``--prior``,
    ``--precision``, ``--holdout``, ``--force-write``, ``--class-axis``."""

    method: Annotated[choice(METHODS), typer.Option("--method", case_sensitive=False, help="exact (default): what inference sees; cumulative: = update_bn; ema: momentum updates.")] = "exact"
    variance: Annotated[choice(VARIANCES), typer.Option("--variance", case_sensitive=False, help="exact: population (default) or unbiased running_var.")] = "population"
    momentum: Annotated[float | None, typer.Option("--momentum", help="ema: momentum (PyTorch convention; default: each layer's own).")] = None
    tolerance: Annotated[float, typer.Option("--tolerance", help="exact: stop when what OUT's layers see is within this of the written statistics on every channel.")] = 1e-4
    prior: Annotated[float, typer.Option("--prior", help="Blend with the stored statistics: (N*stored + n*measured)/(N+n), n the samples read (Schneider et al. 2020); 0 replaces them.")] = 0.0
    precision: Annotated[float | None, typer.Option("--precision", help="Read DATA only until every channel's mean and variance are known to TOL (channel std devs / relative, 95%).")] = None
    holdout: Annotated[float | None, typer.Option("--holdout", help="Fraction of DATA (at most 512 samples) held out to check the result before writing (default 0.1 with --engine local; 0: no check).")] = None
    force_write: Annotated[bool, typer.Option("--force-write", help="Write OUT even when the check on the held-out split finds it worse (BN501).")] = False
    class_axis: Annotated[
        str, typer.Option("--class-axis", help="Class axis of the model's output for the held-out check (as for drift): auto, none (compare by distance: embeddings, maps) or an axis index.")
    ] = "auto"

    def options(self) -> dict[str, Any]:
        """The fields of :class:`~bncheck.commands.recalibrate.RecalibrateOptions` these options set."""
        return {**asdict(self), "class_axis": parse_class_axis(self.class_axis)}

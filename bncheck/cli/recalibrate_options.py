"""The options of ``bncheck recalibrate`` beyond the data and engine options."""

from __future__ import annotations

from typing import Annotated

import typer

PriorOpt = Annotated[
    float,
    typer.Option("--prior", help="Blend with the stored statistics: (N*stored + n*measured)/(N+n), n the samples read (Schneider et al. 2020); 0 replaces them."),
]
PrecisionOpt = Annotated[
    float | None,
    typer.Option("--precision", help="Read DATA only until every channel's mean and variance are known to TOL (channel std devs / relative, 95%)."),
]
HoldoutOpt = Annotated[
    float | None,
    typer.Option("--holdout", help="Fraction of DATA (at most 512 samples) held out to check the result before writing (default 0.1 with --engine local; 0: no check)."),
]
ForceWriteOpt = Annotated[
    bool, typer.Option("--force-write", help="Write OUT even when the check on the held-out split finds it worse (BN501).")
]

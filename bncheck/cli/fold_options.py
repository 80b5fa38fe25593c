"""The options of ``bncheck fold`` that say how the folded model is checked: what it runs on
(DATA or random inputs of a shape, how many samples, in batches of what size) and the
tolerances it must meet. One bundle (:mod:`bncheck.cli.bundles`), handed to
:func:`bncheck.commands.fold.fold` as its keywords of the same names."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer


@dataclass
class FoldCheckArgs:
    """``--verify DATA`` or ``--input-shape``, ``--samples``, ``--batch-size``, ``--atol``, ``--rtol``."""

    verify: Annotated[
        Path | None, typer.Option("--verify", help="DATA to verify the folded model on (default: random inputs).")
    ] = None
    input_shape: Annotated[
        str | None,
        typer.Option("--input-shape", help="Input shape for random verification inputs, e.g. 1,3,224,224 (';' between inputs)."),
    ] = None
    samples: Annotated[
        int | None, typer.Option("--samples", help="Verification samples (default: 2 random, or the first 256 of DATA).")
    ] = None
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size for DATA.")] = 32
    atol: Annotated[float | None, typer.Option("--atol", help="Absolute tolerance (default 1e-4; 1e-2 for float16).")] = None
    rtol: Annotated[
        float | None, typer.Option("--rtol", help="Relative tolerance, against max|output| (default 1e-4; 1e-2 for float16).")
    ] = None

    def fold_kwargs(self) -> dict[str, Any]:
        """The keywords of :func:`bncheck.commands.fold.fold` these options set."""
        return asdict(self)

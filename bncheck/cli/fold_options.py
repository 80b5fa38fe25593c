"""The options of ``bncheck fold`` that say how the folded model is checked: what it runs on
(DATA or random inputs of a shape, how many samples, in batches of what size) and the
tolerances it must meet. One bundle (:mod:`bncheck.cli.bundles`), handed to
:func:`bncheck.commands.fold.fold` as its keywords of the same names."""

from __future__ import annotations

import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from bncheck.cli.data_options import DataArgs

#: the image options of drift and recalibrate, the same flags and help, for ``--verify DATA``
_DATA = typing.get_type_hints(DataArgs, include_extras=True)
SizeOpt, CropOpt, ScaleOpt, MeanOpt, StdOpt = (_DATA[name] for name in ("size", "crop", "scale", "mean", "std"))
ChannelOrderOpt, GrayscaleOpt, LayoutOpt = (_DATA[name] for name in ("channel_order", "grayscale", "layout"))


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


@dataclass
class VerifyDataArgs:
    """How ``--verify DATA``'s images are read: the image options of drift and recalibrate
    (a whole-model check on real data ran with the default x/255 whatever the model expects)."""

    size: SizeOpt = None
    crop: CropOpt = None
    scale: ScaleOpt = None
    mean: MeanOpt = None
    std: StdOpt = None
    channel_order: ChannelOrderOpt = None
    grayscale: GrayscaleOpt = None
    layout: LayoutOpt = None

    def given(self) -> dict[str, Any]:
        """The options given, as settings of the data (over the config file's)."""
        return {name: value for name, value in asdict(self).items() if value is not None}

"""Command-line options that say how DATA is read (shared by drift and recalibrate)."""

from __future__ import annotations

from typing import Annotated

import typer

from bncheck.cli.common import choice
from bncheck.data.spec import ARRAY_MODES, CHANNEL_ORDERS, LAYOUTS, NAN_POLICIES

BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", "-b", help="Inference batch size (default 32).", rich_help_panel="Data")]
SizeOpt = Annotated[str | None, typer.Option("--size", help="Resize images: N (shorter side) or H,W.", rich_help_panel="Data")]
CropOpt = Annotated[str | None, typer.Option("--crop", help="Center-crop images to N or H,W.", rich_help_panel="Data")]
ScaleOpt = Annotated[str | None, typer.Option("--scale", help="Multiply pixel values by this (default 1/255).", rich_help_panel="Data")]
MeanOpt = Annotated[str | None, typer.Option("--mean", help="Per-channel mean to subtract after scaling, e.g. 0.485,0.456,0.406.", rich_help_panel="Data")]
StdOpt = Annotated[str | None, typer.Option("--std", help="Per-channel std to divide by, e.g. 0.229,0.224,0.225.", rich_help_panel="Data")]
ChannelOrderOpt = Annotated[choice(CHANNEL_ORDERS) | None, typer.Option("--channel-order", case_sensitive=False, help="Colour channel order (default: rgb).", rich_help_panel="Data")]
GrayscaleOpt = Annotated[
    bool | None, typer.Option("--grayscale/--color", help="Force 1-channel or 3-channel images (default: from the model input).", rich_help_panel="Data")
]
LayoutOpt = Annotated[choice(LAYOUTS) | None, typer.Option("--layout", case_sensitive=False, help="Array layout (default: nchw).", rich_help_panel="Data")]
ColumnsOpt = Annotated[str | None, typer.Option("--columns", help="CSV/parquet columns to use (comma-separated; default: every numeric column).", rich_help_panel="Data")]
PreprocessOpt = Annotated[
    str | None, typer.Option("--preprocess", help="module:fn or file.py:fn; fn(path) returns one sample (numpy array).", rich_help_panel="Data")
]
LabelsOpt = Annotated[str | None, typer.Option("--labels", help="Labels CSV (one per sample), 'folders' or 'none' (default: class folders when present).", rich_help_panel="Data")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Use at most N samples.", rich_help_panel="Data")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail on an unreadable file instead of skipping it.", rich_help_panel="Data")]
NanOpt = Annotated[choice(NAN_POLICIES) | None, typer.Option("--nan", case_sensitive=False, help="Samples with NaN/Inf: exclude (default, counted), fail or keep.", rich_help_panel="Data")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="Background decoding threads (default 2); with --engine ray, Ray actors (default: one per CPU).", rich_help_panel="Data")]
ArraysOpt = Annotated[choice(ARRAY_MODES) | None, typer.Option("--arrays", case_sensitive=False, help="How .npy/.npz/.pt arrays are read: auto (default), batch or sample.", rich_help_panel="Data")]


"""Command-line options that say how DATA is read (shared by drift and recalibrate)."""

from __future__ import annotations

from typing import Annotated

import typer

BatchSizeOpt = Annotated[int | None, typer.Option("--batch-size", "-b", help="Inference batch size (default 32).", rich_help_panel="Data")]
SizeOpt = Annotated[str | None, typer.Option("--size", help="Resize images: N (shorter side) or H,W.", rich_help_panel="Data")]
CropOpt = Annotated[str | None, typer.Option("--crop", help="Center-crop images to N or H,W.", rich_help_panel="Data")]
ScaleOpt = Annotated[str | None, typer.Option("--scale", help="Multiply pixel values by this (default 1/255).", rich_help_panel="Data")]
MeanOpt = Annotated[str | None, typer.Option("--mean", help="Per-channel mean to subtract after scaling, e.g. 0.485,0.456,0.406.", rich_help_panel="Data")]
StdOpt = Annotated[str | None, typer.Option("--std", help="Per-channel std to divide by, e.g. 0.229,0.224,0.225.", rich_help_panel="Data")]
ChannelOrderOpt = Annotated[str | None, typer.Option("--channel-order", help="rgb (default) or bgr.", rich_help_panel="Data")]
GrayscaleOpt = Annotated[
    bool | None, typer.Option("--grayscale/--color", help="Force 1-channel or 3-channel images (default: from the model input).", rich_help_panel="Data")
]
LayoutOpt = Annotated[str | None, typer.Option("--layout", help="nchw (default) or nhwc.", rich_help_panel="Data")]
ColumnsOpt = Annotated[str | None, typer.Option("--columns", help="CSV/parquet columns to use (comma-separated; default: every numeric column).", rich_help_panel="Data")]
PreprocessOpt = Annotated[
    str | None, typer.Option("--preprocess", help="module:fn or file.py:fn; fn(path) returns one sample (numpy array).", rich_help_panel="Data")
]
LabelsOpt = Annotated[str | None, typer.Option("--labels", help="Labels CSV (one per sample), 'folders' or 'none' (default: class folders when present).", rich_help_panel="Data")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Use at most N samples.", rich_help_panel="Data")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail on an unreadable file instead of skipping it.", rich_help_panel="Data")]
NanOpt = Annotated[str | None, typer.Option("--nan", help="Samples with NaN/Inf: exclude (default, counted), fail or keep.", rich_help_panel="Data")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="Background decoding threads (default 2); with --engine ray, Ray actors (default: one per CPU).", rich_help_panel="Data")]
ArraysOpt = Annotated[str | None, typer.Option("--arrays", help="How .npy/.npz/.pt arrays are read: auto, batch or sample.", rich_help_panel="Data")]


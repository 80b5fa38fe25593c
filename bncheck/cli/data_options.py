"""Command-line options that say how DATA is read (drift and recalibrate): the ``DataArgs``
bundle, each option declared once as a field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import typer

from bncheck.cli.common import choice
from bncheck.cli.guard import labels_file
from bncheck.data import DataOptions, build_options
from bncheck.data.spec import ARRAY_MODES, CHANNEL_ORDERS, LAYOUTS, NAN_POLICIES


def _data(*flags: str, help: str, case_sensitive: bool = True) -> Any:
    """A typer option shown under the "Data" panel of the help."""
    return typer.Option(*flags, help=help, case_sensitive=case_sensitive, rich_help_panel="Data")


@dataclass
class DataArgs:
    """How DATA is read (drift, recalibrate): sizes, normalisation, layout, labels, limits."""

    batch_size: Annotated[int | None, _data("--batch-size", "-b", help="Inference batch size (default 32).")] = None
    size: Annotated[str | None, _data("--size", help="Resize images: N (shorter side) or H,W.")] = None
    crop: Annotated[str | None, _data("--crop", help="Center-crop images to N or H,W.")] = None
    scale: Annotated[str | None, _data("--scale", help="Multiply pixel values by this (default 1/255).")] = None
    mean: Annotated[str | None, _data("--mean", help="Per-channel mean to subtract after scaling, e.g. 0.485,0.456,0.406.")] = None
    std: Annotated[str | None, _data("--std", help="Per-channel std to divide by, e.g. 0.229,0.224,0.225.")] = None
    channel_order: Annotated[
        choice(CHANNEL_ORDERS) | None, _data("--channel-order", case_sensitive=False, help="Colour channel order (default: rgb).")
    ] = None
    grayscale: Annotated[
        bool | None, _data("--grayscale/--color", help="Force 1-channel or 3-channel images (default: from the model input).")
    ] = None
    layout: Annotated[choice(LAYOUTS) | None, _data("--layout", case_sensitive=False, help="Layout of the image tensors fed to the model (default: from the model's input shape, else nchw).")] = None
    columns: Annotated[
        str | None, _data("--columns", help="CSV/parquet columns to use (comma-separated; default: every numeric column).")
    ] = None
    preprocess: Annotated[
        str | None, _data("--preprocess", help="module:fn or file.py:fn; fn(path) returns one sample (numpy array).")
    ] = None
    labels: Annotated[
        str | None, _data("--labels", help="Labels CSV (one per sample), 'folders' or 'none' (default: class folders when present).")
    ] = None
    limit: Annotated[int | None, _data("--limit", help="Use at most N samples: of a folder of images, N files spread evenly over its sorted files (every class folder gets its share); of array or table files, the first N samples.")] = None
    strict: Annotated[bool, _data("--strict", help="Fail on an unreadable file instead of skipping it.")] = False
    nan: Annotated[
        choice(NAN_POLICIES) | None,
        _data("--nan", case_sensitive=False, help="Samples with NaN/Inf: exclude (default, counted), fail or keep."),
    ] = None
    workers: Annotated[
        int | None,
        _data("--workers", help="Background decoding threads (default 2); with --engine ray, Ray actors (default: one per CPU)."),
    ] = None
    arrays: Annotated[
        choice(ARRAY_MODES) | None,
        _data("--arrays", case_sensitive=False, help="How .npy/.npz/.pt arrays are read: auto (default: by the model's input rank; a batch where the model declares none), batch or sample."),
    ] = None

    @property
    def labels_path(self) -> str | None:
        """The file ``--labels`` names (not the words ``folders``/``none``)."""
        return labels_file(self.labels)

    def options(self, config: dict[str, Any]) -> DataOptions:
        """DataOptions from the config table overlaid with the options given here."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if values["strict"] is False:
            values["strict"] = None  # "not given": keep the config's value
        return build_options(config, values)

"""Options that say how DATA becomes model input: dataclasses plus parsing of the values that
arrive from the command line (strings) or a config file (TOML values).

Every option has a documented default, and :meth:`ImageOptions.describe` /
:meth:`DataOptions.describe` spell the values out for the report. Invalid values raise
:class:`~bncheck.errors.UsageError` naming the option.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bncheck.errors import UsageError

#: ``resample`` names -> Pillow filter names (``PIL.Image.Resampling``)
RESAMPLE = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
LAYOUTS = ("nchw", "nhwc")
CHANNEL_ORDERS = ("rgb", "bgr")
NAN_POLICIES = ("exclude", "fail", "keep")
ARRAY_MODES = ("auto", "batch", "sample")


@dataclass
class ImageOptions:
    """How an image file becomes one sample, in this order:

    1. decode with Pillow (first frame), convert to grayscale ``L`` or ``RGB``
       (16-bit grayscale is mapped to 0-255 by dividing by 257);
    2. ``size``: resize, an int resizing the shorter side (aspect kept, as torchvision's
       ``Resize(256)``), ``(height, width)`` resizing to exactly that;
    3. ``crop``: center crop to ``(height, width)`` (an error if the image is smaller);
    4. ``channel_order`` ``bgr`` reverses the colour channels;
    5. ``x * scale`` (default 1/255: 8-bit values to [0, 1]);
    6. ``(x - mean) / std`` per channel, in the output channel order (one value or one per channel);
    7. ``layout``: ``nchw`` gives (C, H, W) samples, ``nhwc`` gives (H, W, C).

    ``grayscale`` and ``layout`` left at ``None`` are decided from the model's input shape when
    it is known (1 channel: grayscale, 3: RGB), else from the first image (single-channel
    files: grayscale) and ``nchw``.
    """

    size: int | tuple[int, int] | None = None
    crop: tuple[int, int] | None = None
    resample: str = "bilinear"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_order: str = "rgb"
    grayscale: bool | None = None
    layout: str | None = None

    def __post_init__(self) -> None:
        self.size = parse_size(self.size, "size", allow_int=True)
        crop = parse_size(self.crop, "crop", allow_int=True)
        self.crop = (crop, crop) if isinstance(crop, int) else crop
        self.resample = _choice(self.resample, RESAMPLE, "resample")
        self.scale = parse_float(self.scale, "scale")
        if not math.isfinite(self.scale) or self.scale == 0:
            raise UsageError(f"--scale must be a finite non-zero number, not {self.scale}.")
        self.mean = parse_floats(self.mean, "mean")
        self.std = parse_floats(self.std, "std")
        if self.std is not None and any(s == 0 or not math.isfinite(s) for s in self.std):
            raise UsageError("--std values must be finite and non-zero.")
        if self.mean is not None and not all(math.isfinite(m) for m in self.mean):
            raise UsageError("--mean values must be finite.")
        self.channel_order = _choice(self.channel_order, CHANNEL_ORDERS, "channel-order")
        self.grayscale = parse_optional_bool(self.grayscale, "grayscale")
        self.layout = None if self.layout in (None, "auto") else _choice(self.layout, LAYOUTS, "layout")


@dataclass
class DataOptions:
    """Everything about reading DATA. Defaults: batch size 32, two decoding threads, two
    batches prefetched, corrupt images skipped (``strict`` fails instead), samples with NaN
    or Inf excluded and counted (``nan="fail"`` stops, ``"keep"`` passes them on)."""

    images: ImageOptions = field(default_factory=ImageOptions)
    #: table columns to use (default: every numeric column, non-numeric ones dropped and named)
    columns: list[str] | None = None
    #: ``module:fn`` or ``path/file.py:fn``: fn(path) -> one sample, for every file of DATA
    preprocess: str | None = None
    #: ``None`` (auto: class folders, or label arrays inside .npz/.pt), ``"none"``,
    #: ``"folders"`` (required), or a CSV file with one label per sample in sample order
    labels: str | Path | None = None
    #: use at most this many samples (the first ones, after skips and exclusions)
    limit: int | None = None
    #: fail on the first unreadable image instead of skipping it
    strict: bool = False
    #: samples containing NaN or Inf: ``exclude`` (counted), ``fail`` or ``keep``
    nan: str = "exclude"
    #: background decoding threads; 0 decodes in the calling thread
    workers: int = 2
    batch_size: int = 32
    #: decoded batches kept ready ahead of the consumer
    prefetch: int = 2
    #: how to read .npy/.npz/.pt arrays: ``batch`` (first axis = samples), ``sample`` (one
    #: sample per array) or ``auto`` (from the model's input rank; ``batch`` when unknown)
    arrays: str = "auto"
    #: the API only (not a config key): a callable applied to every PIL image of an image
    #: folder (instead of the steps of ``images``) and to every item of in-memory DATA, e.g. the
    #: torchvision transform the model was trained with; it returns an array or tensor
    transform: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.images, Mapping):
            self.images = ImageOptions(**dict(self.images))
        self.columns = parse_names(self.columns, "columns")
        if self.preprocess is not None:
            self.preprocess = str(self.preprocess).strip() or None
        if isinstance(self.labels, str) and self.labels.strip().lower() in ("", "auto"):
            self.labels = None
        self.limit = parse_int(self.limit, "limit", minimum=1)
        self.strict = bool(parse_optional_bool(self.strict, "strict"))
        self.nan = _choice(self.nan, NAN_POLICIES, "nan")
        self.workers = parse_int(self.workers, "workers", minimum=0)
        self.batch_size = parse_int(self.batch_size, "batch-size", minimum=1)
        self.prefetch = parse_int(self.prefetch, "prefetch", minimum=1)
        self.arrays = _choice(self.arrays, ARRAY_MODES, "arrays")
        if self.transform is not None and not callable(self.transform):
            raise UsageError(f"transform= must be a callable (e.g. a torchvision transform), not a {type(self.transform).__name__}.")

    def with_overrides(self, **values: Any) -> DataOptions:
        """A copy with the given fields replaced (``None`` values are ignored)."""
        return build_options(self, values)


_IMAGE_FIELDS = {f.name for f in fields(ImageOptions)}
_DATA_FIELDS = {f.name for f in fields(DataOptions)} - {"images", "transform"}


def build_options(
    base: DataOptions | Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
) -> DataOptions:
    """DataOptions from a config table (``base``, e.g. ``Settings.options``; unknown keys are
    ignored; a ``data`` sub-table is read too) and command-line values (``overrides``; ``None``
    means "not given"). Keys may use dashes (``channel-order``) or underscores."""
    if isinstance(base, DataOptions):
        image_values = {f: getattr(base.images, f) for f in _IMAGE_FIELDS}
        data_values = {f: getattr(base, f) for f in _DATA_FIELDS}
    else:
        image_values, data_values = {}, {}
        table = dict(base or {})
        nested = table.pop("data", None)
        for source in (table, nested if isinstance(nested, Mapping) else {}):
            _sort_keys(source, image_values, data_values)
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    _sort_keys(given, image_values, data_values)
    transform = base.transform if isinstance(base, DataOptions) else None
    return DataOptions(images=ImageOptions(**image_values), transform=transform, **data_values)


def _sort_keys(values: Mapping[str, Any], image_values: dict, data_values: dict) -> None:
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_").lower()
        if key == "images" and isinstance(value, Mapping):
            _sort_keys(value, image_values, data_values)
        elif key in _IMAGE_FIELDS:
            image_values[key] = value
        elif key in _DATA_FIELDS:
            data_values[key] = value


def parse_size(value: Any, name: str, *, allow_int: bool) -> int | tuple[int, int] | None:
    """``224`` / ``"224"`` -> 224 (shorter side); ``"224,160"`` / ``"224x160"`` / ``[224, 160]``
    -> (224, 160) as (height, width)."""
    if value is None:
        return None
    parts: list[Any]
    if isinstance(value, str):
        text = value.strip().lower().replace("x", ",")
        parts = [p for p in text.split(",") if p.strip()]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    try:
        numbers = [_strict_int(p) for p in parts]
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--{name} {value!r} must be N or H,W (e.g. 224 or 224,224).") from exc
    if not numbers or len(numbers) > 2 or any(n < 1 for n in numbers):
        raise UsageError(f"--{name} {value!r} must be N or H,W with positive integers (e.g. 224,224).")
    if len(numbers) == 1:
        return numbers[0] if allow_int else (numbers[0], numbers[0])
    return (numbers[0], numbers[1])


def _strict_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    return int(str(value).strip())


def parse_float(value: Any, name: str) -> float:
    """A number, also written as a fraction: ``"1/255"``."""
    if isinstance(value, bool):
        raise UsageError(f"--{name} must be a number, not {value!r}.")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        if "/" in text:
            numerator, denominator = text.split("/")
            return float(numerator) / float(denominator)
        return float(text)
    except (ValueError, ZeroDivisionError) as exc:
        raise UsageError(f"--{name} {value!r} must be a number (e.g. 0.00392 or 1/255).") from exc


def parse_floats(value: Any, name: str) -> tuple[float, ...] | None:
    """``"0.485,0.456,0.406"``, a list, or one number -> a tuple of floats."""
    if value is None:
        return None
    if isinstance(value, str):
        items: list[Any] = [p for p in value.replace(" ", ",").split(",") if p]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    if not items:
        raise UsageError(f"--{name} needs at least one number (e.g. 0.485,0.456,0.406).")
    return tuple(parse_float(item, name) for item in items)


def parse_names(value: Any, name: str) -> list[str] | None:
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    names = [item.strip() for item in items if item.strip()]
    if not names:
        raise UsageError(f"--{name} needs at least one column name (e.g. a,b,c).")
    return names


def parse_int(value: Any, name: str, *, minimum: int) -> int | None:
    if value is None:
        return None
    try:
        number = _strict_int(value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--{name} must be an integer, not {value!r}.") from exc
    if number < minimum:
        raise UsageError(f"--{name} must be at least {minimum}, not {number}.")
    return number


def parse_optional_bool(value: Any, name: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto", ""):
        return None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"--{name} must be true, false or auto, not {value!r}.")


def _choice(value: Any, choices: tuple[str, ...], name: str) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise UsageError(f"--{name} {value!r} must be one of: {', '.join(choices)}.")
    return text

"""Image files -> samples: decode with Pillow, then the steps of :class:`ImageOptions`.

:func:`resolve_image_plan` fixes every choice left open (grayscale, layout) once, from the
model's input shape or the first image; :func:`preprocess_image` applies the plan to one
decoded image and is a pure function of the pixels.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.data.convert import call_transform, describe_callable, float_samples, numeric_array
from bncheck.data.loader import Task, UnreadableFile
from bncheck.data.reader import OneSamplePerFile
from bncheck.data.shapes import ExpectedShape, Shape, fits, mismatch_hint, shape_text
from bncheck.data.spec import DataOptions, ImageOptions
from bncheck.errors import DataError, UsageError, first_line

#: Pillow modes that hold one channel
_SINGLE_CHANNEL_MODES = ("1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")


@dataclass(frozen=True)
class ImagePlan:
    """The image pipeline with every choice made."""

    size: int | tuple[int, int] | None
    crop: tuple[int, int] | None
    resample: str
    scale: float
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    channel_order: str
    grayscale: bool
    layout: str
    #: where grayscale/layout came from: ``option``, ``model``, ``images`` or ``default``
    grayscale_from: str
    layout_from: str
    #: the API's ``transform=``: called on the PIL image (in ``L`` or ``RGB``) instead of the
    #: resize/crop/scale/normalise/layout steps
    transform: Callable[[Any], Any] | None = field(default=None, compare=False)

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def describe(self) -> dict[str, Any]:
        """JSON-friendly, every default spelled out (``transform`` only when one is given)."""
        out = {
            "size": list(self.size) if isinstance(self.size, tuple) else self.size,
            "size_meaning": _size_meaning(self.size),
            "crop": list(self.crop) if self.crop else None,
            "resample": self.resample,
            "scale": self.scale,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "channel_order": "gray" if self.grayscale else self.channel_order,
            "grayscale": self.grayscale,
            "grayscale_from": self.grayscale_from,
            "layout": self.layout,
            "layout_from": self.layout_from,
            "pipeline": self.pipeline(),
        }
        if self.transform is not None:
            out["transform"] = describe_callable(self.transform)
        return out

    def pipeline(self) -> str:
        """One line saying what happens to every image, e.g.
        ``grayscale -> x * 0.003922 -> (C, H, W)``."""
        steps = ["grayscale" if self.grayscale else "RGB"]
        if self.transform is not None:
            return " -> ".join([*steps, f"transform {describe_callable(self.transform)}"])
        if self.size is not None:
            steps.append(f"resize {_size_text(self.size)} ({self.resample})")
        if self.crop is not None:
            steps.append(f"center crop {self.crop[0]}x{self.crop[1]}")
        if not self.grayscale and self.channel_order == "bgr":
            steps.append("RGB->BGR")
        steps.append(f"x * {self.scale:.6g}")
        if self.mean is not None:
            steps.append(f"- mean {_numbers(self.mean)}")
        if self.std is not None:
            steps.append(f"/ std {_numbers(self.std)}")
        steps.append("(C, H, W)" if self.layout == "nchw" else "(H, W, C)")
        return " -> ".join(steps)


def _size_text(size: int | tuple[int, int]) -> str:
    return f"shorter side {size}" if isinstance(size, int) else f"{size[0]}x{size[1]}"


def _size_meaning(size: int | tuple[int, int] | None) -> str:
    if size is None:
        return "images keep their size"
    if isinstance(size, int):
        return "shorter side resized to this, aspect ratio kept"
    return "resized to height x width"


def _numbers(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def layout_from_shape(expected: tuple[int | None, ...] | None) -> str | None:
    """``nchw`` when the model's (C, H, W) has 1 or 3 first, ``nhwc`` when last, else None."""
    if expected is None or len(expected) != 3:
        return None
    if expected[0] in (1, 3):
        return "nchw"
    if expected[2] in (1, 3):
        return "nhwc"
    return None


def resolve_image_plan(
    options: ImageOptions,
    expected: tuple[int | None, ...] | None,
    first_mode: str | None,
) -> ImagePlan:
    """Decide grayscale and layout (option > model input shape > first image > default) and check
    that mean/std fit the channel count."""
    if expected is not None and len(expected) != 3:
        raise DataError(
            f"the model expects samples of shape {shape_text(expected)}, but images give "
            "(channels, height, width); give arrays of that shape or a --preprocess module:fn."
        )
    if options.layout is not None:
        layout, layout_from = options.layout, "option"
    else:
        guessed = layout_from_shape(expected)
        layout, layout_from = (guessed, "model") if guessed else ("nchw", "default")
    model_channels = None
    if expected is not None:
        model_channels = expected[0] if layout == "nchw" else expected[2]
    if model_channels is not None and model_channels not in (1, 3):
        raise DataError(
            f"the model expects {model_channels} channels ({layout.upper()} input "
            f"{shape_text(expected)}); images give 1 (grayscale) or 3 (RGB): read them with "
            "--preprocess module:fn, or pass --layout if the channel axis is elsewhere."
        )
    if options.grayscale is not None:
        grayscale, grayscale_from = options.grayscale, "option"
        if model_channels is not None and model_channels != (1 if grayscale else 3):
            given = "--grayscale gives 1 channel" if grayscale else "--color gives 3 channels (RGB)"
            raise DataError(
                f"{given} but the model expects {model_channels}; drop the option to follow the model."
            )
    elif model_channels is not None:
        grayscale, grayscale_from = model_channels == 1, "model"
    else:
        grayscale, grayscale_from = (first_mode in _SINGLE_CHANNEL_MODES), "images"
    channels = 1 if grayscale else 3
    for name in ("mean", "std"):
        values = getattr(options, name)
        if values is not None and len(values) not in (1, channels):
            raise UsageError(
                f"--{name} has {len(values)} values but the images have {channels} channel(s) "
                f"({'grayscale' if grayscale else 'RGB'}); give {'one value' if channels == 1 else f'1 or {channels} values'}."
            )
    return ImagePlan(
        size=options.size,
        crop=options.crop,
        resample=options.resample,
        scale=options.scale,
        mean=options.mean,
        std=options.std,
        channel_order=options.channel_order,
        grayscale=grayscale,
        layout=layout,
        grayscale_from=grayscale_from,
        layout_from=layout_from,
    )


def with_transform(plan: ImagePlan, options: DataOptions) -> ImagePlan:
    """``plan`` with ``options.transform``, refused next to image options it would ignore."""
    if options.transform is None:
        return plan
    images, defaults = options.images, ImageOptions()
    ignored = [name for name in ("size", "crop", "scale", "mean", "std", "channel_order") if getattr(images, name) != getattr(defaults, name)]
    if ignored:
        raise UsageError(f"transform= replaces the image options, so {', '.join(ignored)} would be ignored; give the transform or the options, not both.")
    return replace(plan, transform=options.transform)


def open_image(path: str | Path):
    """The first frame of ``path``, fully decoded. Raises :class:`UnreadableFile` for a corrupt
    or unsupported file and :class:`DataError` when the file cannot be read at all."""
    from PIL import Image

    try:
        with warnings.catch_warnings():  # a decompression bomb is refused, not decoded with a warning
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        pixels = "".join(ch for ch in str(exc).split(" pixels")[0] if ch.isdigit())
        raise DataError(
            f"{path} is an image of {int(pixels or 0):,} pixels, more than the {Image.MAX_IMAGE_PIXELS:,} "
            "bncheck decodes (a decompression bomb?); resize it or remove it from DATA."
        ) from exc
    except PermissionError as exc:
        raise DataError(f"cannot read {path}: permission denied; check its permissions.") from exc
    except FileNotFoundError as exc:
        raise DataError(f"{path} disappeared while reading DATA.") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow and its plugins raise many kinds
        raise UnreadableFile(f"{type(exc).__name__}: {first_line(exc)}") from exc
    return image


def preprocess_image(image, plan: ImagePlan, source: Path | str = "image") -> np.ndarray:
    """One decoded PIL image -> one float32 sample, (C, H, W) or (H, W, C)."""
    from PIL import Image

    image = _to_mode(image, plan.grayscale)
    if plan.transform is not None:
        out = call_transform(plan.transform, image, str(source))
        return float_samples(numeric_array(out, f"what transform= returned for {source}"))
    resample = getattr(Image.Resampling, plan.resample.upper())
    if plan.size is not None:
        width, height = image.size
        if isinstance(plan.size, int):
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = plan.size, int(plan.size * long / short)
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        else:
            new_h, new_w = plan.size
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), resample=resample)
    if plan.crop is not None:
        width, height = image.size
        crop_h, crop_w = plan.crop
        if crop_h > height or crop_w > width:
            raise DataError(
                f"--crop {crop_h}x{crop_w} is larger than {source} ({height}x{width}"
                f"{' after resizing' if plan.size is not None else ''}); lower --crop or raise --size."
            )
        top = int(round((height - crop_h) / 2.0))
        left = int(round((width - crop_w) / 2.0))
        image = image.crop((left, top, left + crop_w, top + crop_h))
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    if not plan.grayscale and plan.channel_order == "bgr":
        x = x[:, :, ::-1]
    x = _scaled(x, plan.scale)
    if plan.mean is not None:
        x = x - np.asarray(plan.mean, dtype=np.float32)
    if plan.std is not None:
        x = x / np.asarray(plan.std, dtype=np.float32)
    if plan.layout == "nchw":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x, dtype=np.float32)


def _scaled(x: np.ndarray, scale: float) -> np.ndarray:
    """``x * scale``; a scale of 1/k with integer k divides by k, bit for bit what
    ``torchvision.transforms.ToTensor`` (``/ 255``) gives."""
    inverse = 1.0 / scale
    if abs(inverse - round(inverse)) <= 1e-9 * abs(inverse):
        return x / np.float32(round(inverse))
    return x * np.float32(scale)


def _to_mode(image, grayscale: bool):
    """8-bit ``L``/``RGB``. 16-bit grayscale (``I;16``) becomes float in 0-255 (value / 257);
    32-bit integer (``I``) and float (``F``) images keep their values. Resizing then works on
    the float values."""
    from PIL import Image

    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float32)
        if mode.startswith("I;16"):
            values = values / np.float32(257.0)
        if grayscale:
            return Image.fromarray(np.ascontiguousarray(values, dtype=np.float32))
        return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8)).convert("RGB")
    target = "L" if grayscale else "RGB"
    return image if mode == target else image.convert(target)


def decode_image(path: str | Path, plan: ImagePlan) -> np.ndarray:
    """Read and preprocess one image file."""
    image = open_image(path)
    try:
        return preprocess_image(image, plan, path)
    finally:
        image.close()


class ImageReader(OneSamplePerFile):
    """Image files, one sample each."""

    kind = "images"

    @classmethod
    def all_unusable(cls, files: list[str], options: DataOptions) -> list[tuple[str, str]] | None:
        reasons: list[tuple[str, str]] = []
        for path in files:
            try:
                open_image(path).close()
                return None
            except UnreadableFile as exc:
                reasons.append((path, str(exc)))
        return reasons

    def __init__(self, files: list[str], options: DataOptions, expected: ExpectedShape | None):
        self.files = files
        self.strict = options.strict
        first, mode = self._first_readable(files)
        self.plan = with_transform(resolve_image_plan(options.images, expected, mode), options)
        self.first = first
        self.sample_shape: Shape = tuple(decode_image(first, self.plan).shape)
        if expected is not None and not fits(self.sample_shape, expected):
            raise self._model_mismatch(expected)

    def _first_readable(self, files: list[str]) -> tuple[str, str]:
        failures = []
        for path in files:
            try:
                image = open_image(path)
            except UnreadableFile as exc:
                if self.strict:
                    raise DataError(
                        f"cannot decode {path} ({exc}); remove or fix it, or drop --strict to skip unreadable files."
                    ) from exc
                failures.append((path, exc))
                continue
            mode = image.mode
            image.close()
            return path, mode
        path, exc = failures[0]
        raise DataError(f"none of the {len(files)} image file(s) can be decoded (e.g. {path}: {exc}).")

    def _hw(self, shape: Shape) -> tuple[int | None, int | None]:
        return (shape[1], shape[2]) if self.plan.layout == "nchw" else (shape[0], shape[1])

    def _model_mismatch(self, expected: ExpectedShape) -> DataError:
        if self.plan.transform is not None:
            return DataError(
                f"transform= gives samples of shape {shape_text(self.sample_shape)} (e.g. for {self.first}) but the model "
                f"expects {shape_text(expected)} per sample; {mismatch_hint(self.sample_shape, expected)}."
            )
        got_h, got_w = self._hw(self.sample_shape)
        want_h, want_w = self._hw(expected)  # type: ignore[arg-type]
        h = want_h if want_h is not None else got_h
        w = want_w if want_w is not None else got_w
        return DataError(
            f"images are {got_h}x{got_w} after preprocessing (e.g. {self.first}) but the model expects "
            f"{shape_text(expected)} per sample; pass --size {h},{w} to resize them "
            f"(or --size N --crop {h},{w})."
        )

    def shape_error(self, source: str, got: Shape) -> DataError:
        if self.plan.transform is not None:
            return DataError(
                f"transform= gives shape {shape_text(got)} for {source} but {shape_text(self.sample_shape)} for {self.first}; "
                "it must give one shape for every image (resize or crop inside it)."
            )
        got_h, got_w = self._hw(got)
        h, w = self._hw(self.sample_shape)
        return DataError(
            f"{source} is {got_h}x{got_w} after preprocessing but {self.first} is {h}x{w}; images of "
            "different sizes need --size H,W (resize all) or --crop H,W."
        )

    def tasks(self, batch_size: int) -> Iterator[Task]:
        plan = self.plan
        for path in self.files:
            yield Task(count=1, source=str(path), offset=0, load=lambda p=path: decode_image(p, plan)[None])

    def preprocessing(self) -> dict[str, Any]:
        return self.plan.describe()

    def pinned(self, options: DataOptions) -> DataOptions:
        """Grayscale and layout, as the first image decided them."""
        return replace(options, images=replace(options.images, grayscale=self.plan.grayscale, layout=self.plan.layout))

    def file_counts(self, files: list[str], *, rows_needed: bool) -> list[int] | None:
        return [1] * len(files)

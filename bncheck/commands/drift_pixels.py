"""BN103's pixel space: the user's preprocessing undone and redone, and the candidate
corrections of the input, each said in the user's own options.

An image sample reaches the model as ``x = (q - mean) / std`` with ``q = pixel * scale`` in
the output channel order (``--scale``, ``--mean``, ``--std``, ``--channel-order``); arrays
reach it as stored. A candidate maps the scaled pixels ``q`` of DATA to a new model input, so
"inverted" means 255 - pixel whatever normalisation follows, and "ImageNet normalisation"
means the ImageNet mean/std on [0, 1] pixels whatever ``--scale`` was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _vector(values, channels: int, default: float) -> np.ndarray:
    if values is None:
        return np.full(channels, default)
    v = np.asarray(values, np.float64).reshape(-1)
    return np.full(channels, v[0]) if v.size == 1 else v[:channels]


def _numbers(values) -> str:
    """Comma-separated, 4 significant digits; one value where every channel has the same (the
    options take one value for all channels)."""
    texts = [f"{float(v):.4g}" for v in np.asarray(values).reshape(-1)]
    return texts[0] if texts and all(t == texts[0] for t in texts) else ",".join(texts)


def _flag(name: str, value: str) -> str:
    """``--name value``, or ``--name=value`` for a value that starts with a minus sign (which a
    shell-split command line would otherwise read as an option)."""
    return f"{name}={value}" if value.startswith("-") else f"{name} {value}"


@dataclass
class PixelSpace:
    """How DATA's values became the model input: images with their options, or arrays."""

    images: bool
    #: axis of the channels in a batch (1: N, C, ...; -1: N, ..., C), None when not known
    channel_axis: int | None
    channels: int
    scale: float = 1.0
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    order: str = "rgb"

    @classmethod
    def of(cls, data_info: dict, sample_shape: tuple[int, ...]) -> PixelSpace:
        """From the data description of the pass and the shape of one sample."""
        pre = data_info.get("preprocessing") or {}
        images = data_info.get("kind") == "images" and "scale" in pre
        if images:
            axis = -1 if pre.get("layout") == "nhwc" else 1
        else:
            axis = 1 if len(sample_shape) >= 2 else None
        channels = int(sample_shape[axis - 1 if axis == 1 else -1]) if axis is not None else 1
        if not images:
            return cls(False, axis, channels)
        return cls(
            True, axis, channels, float(pre["scale"]),
            _vector(pre.get("mean"), channels, 0.0), _vector(pre.get("std"), channels, 1.0),
            "bgr" if pre.get("channel_order") == "bgr" else "rgb",
        )  # fmt: skip

    def _shape(self, ndim: int) -> tuple[int, ...]:
        shape = [1] * ndim
        if self.channel_axis is not None:
            shape[self.channel_axis] = self.channels
        return tuple(shape)

    def per_channel(self, values: np.ndarray, ndim: int, dtype=np.float64) -> np.ndarray:
        return np.asarray(values, np.float64).reshape(self._shape(ndim)).astype(dtype)

    def to_pixels(self, x: np.ndarray) -> np.ndarray:
        """The scaled pixels ``q`` (values after ``--scale``; arrays: as stored) of inputs ``x``,
        in the inputs' precision (float32 for a float32 model: the candidates' inputs end in
        float32 anyway, and 64 samples of 3 x 224 x 224 held in float64 were 77 MB a copy)."""
        dtype = np.result_type(x.dtype, np.float32)
        if not self.images:
            return x.astype(dtype)
        return x * self.per_channel(self.std, x.ndim, dtype) + self.per_channel(self.mean, x.ndim, dtype)

    def pixel_moments(self, mean, std) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``mean`` / ``std`` of model inputs said in pixel units (the scaled pixels
        ``q``, the units of ``--mean``/``--std``) under the user's current ``--mean``/``--std``:
        ``q = x * std_option + mean_option`` (arrays: as stored)."""
        mean, std = np.asarray(mean, np.float64).reshape(-1), np.asarray(std, np.float64).reshape(-1)
        if not self.images:
            return mean, std
        return mean * self.std + self.mean, std * np.abs(self.std)

    def normalise(self, q: np.ndarray, mean=None, std=None) -> np.ndarray:
        """The model input of scaled pixels ``q`` under ``mean`` / ``std`` (default: the user's)."""
        mean = self.mean if mean is None else mean
        std = self.std if std is None else std
        if mean is None:
            return q
        return (q - self.per_channel(mean, q.ndim, q.dtype)) / self.per_channel(std, q.ndim, q.dtype)

    def full_range(self, q: np.ndarray) -> float | None:
        """The value of a white pixel in ``q`` units (images: 255 * scale; arrays: 1 or 255 when
        the values lie in [0, 1] or [0, 255], 0 for [-1, 1]), None when unclear."""
        if self.images:
            return 255.0 * self.scale
        lo, hi = float(np.min(q)), float(np.max(q))
        for low, high, white in ((0.0, 1.0, 1.0), (-1.0, 1.0, 0.0), (0.0, 255.0, 255.0)):
            if lo >= low and hi <= high:
                return white
        return None

    def options(self, *, scale: float | None = None, mean=None, std=None, order: str | None = None) -> str:
        """The command-line options that give this preprocessing (only those that change)."""
        parts = []
        if scale is not None and not np.isclose(scale, self.scale, rtol=1e-4):
            parts.append(_flag("--scale", f"{scale:.6g}"))
        if mean is not None:
            parts += [_flag("--mean", _numbers(mean)), _flag("--std", _numbers(std))]
        if order is not None and order != self.order:
            parts.append(f"--channel-order {order}")
        return " ".join(parts)


#: (description, options or None, q -> model input)
Candidate = tuple[str, str | None, Callable[[np.ndarray], np.ndarray]]


def fixed_candidates(space: PixelSpace, q: np.ndarray) -> list[Candidate]:
    """The usual preprocessing slips, each a map from DATA's scaled pixels to a model input."""
    out: list[Candidate] = []
    images = space.images
    out.append((
        "dividing the pixels by 255 (DATA in 0-255, the model expects 0-1)",
        space.options(scale=space.scale / 255.0) if images else None,
        lambda v: space.normalise(v / 255.0),
    ))  # fmt: skip
    out.append((
        "multiplying the pixels by 255 (DATA in 0-1, the model expects 0-255)",
        space.options(scale=space.scale * 255.0) if images else None,
        lambda v: space.normalise(v * 255.0),
    ))  # fmt: skip
    white = space.full_range(q)
    if white is not None:
        what = "255 - pixel" if images else (f"{white:g} - x" if white else "-x")
        # (white - q - M) / S = (q * -1 - (M - white)) / S: the scale negated, the mean moved by white
        inverted = space.options(scale=-space.scale, mean=space.mean - white, std=space.std) if images else None
        out.append((f"inverting the input ({what})", inverted, lambda v: space.normalise(white - v)))
    if space.channels == 3 and space.channel_axis is not None:
        other = "bgr" if space.order == "rgb" else "rgb"
        axis = space.channel_axis
        out.append((
            f"swapping the channel order ({space.order.upper()} -> {other.upper()})",
            space.options(order=other) if images else None,
            lambda v: space.normalise(np.flip(v, axis=axis)),
        ))  # fmt: skip
    if images:
        out += _normalisations(space)
    return out


def _normalisations(space: PixelSpace) -> list[Candidate]:
    """ImageNet mean/std, [-1, 1] and plain [0, 1] inputs, on [0, 1] pixels."""
    unit = 1.0 / 255.0
    to_unit = unit / space.scale  # q * to_unit: pixels in [0, 1]
    out: list[Candidate] = []
    if space.channels == 3:
        mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
        out.append((
            "ImageNet mean/std normalisation of 0-1 pixels",
            space.options(scale=unit, mean=mean, std=std),
            lambda v: space.normalise(v * to_unit, mean, std),
        ))  # fmt: skip
    half = np.full(space.channels, 0.5)
    out.append((
        "pixels scaled to [-1, 1] (mean 0.5, std 0.5 on 0-1 pixels)",
        space.options(scale=unit, mean=half, std=half),
        lambda v: space.normalise(v * to_unit, half, half),
    ))  # fmt: skip
    if space.mean is not None and (np.any(space.mean != 0) or np.any(space.std != 1)):
        zero, one = np.zeros(space.channels), np.ones(space.channels)
        out.append((
            "plain 0-1 pixels (no mean/std normalisation)",
            space.options(scale=unit, mean=zero, std=one),
            lambda v: space.normalise(v * to_unit, zero, one),
        ))  # fmt: skip
    return out

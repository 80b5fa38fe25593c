"""What a statistics file, a shard and a data pass must satisfy before a figure is computed
from them: finite means, non-negative counts and m2, one channel count per layer.

A violation is a :class:`DataError` with one sentence naming the file (or the pass), the layer
and the field, never a silent pass or a numpy warning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.errors import DataError
from bncheck.numerics.moments import Moments


def moments_from_fields(path: Path, name: str, fields: Mapping[str, Any], prefix: str = "data") -> Moments:
    """The :class:`Moments` of layer ``name`` stored in ``fields`` (``data_count``,
    ``data_mean``, ``data_m2``; ``even_*``/``odd_*`` with that ``prefix``), checked."""
    keys = [f"{prefix}_{field}" for field in ("count", "mean", "m2")]
    try:
        raw_count, raw_mean, raw_m2 = (fields[key] for key in keys)
    except KeyError as exc:
        raise DataError(f"{path} lacks the statistics of layer {name} ({exc.args[0]}); the file is damaged.") from exc
    where = f"{path}: layer {name}"
    count = _count(where, keys[0], raw_count)
    mean = _vector(where, keys[1], raw_mean)
    m2 = _vector(where, keys[2], raw_m2)
    if mean.shape != m2.shape:
        raise DataError(f"{where} has {mean.size} channel means ({keys[1]}) but {m2.size} m2 values ({keys[2]}); the file is damaged.")
    if (m2 < 0).any():
        channel = int(np.argmax(m2 < 0))
        raise DataError(f"{where} has a negative {keys[2]} (sum of squared deviations) at channel {channel}; the file is damaged or forged.")
    return Moments(count, mean, m2)


#: More elements than any data set has (and than int64 arithmetic on counts stays exact for).
MAX_COUNT = 2**53


def _count(where: str, field: str, raw: Any) -> int:
    value = np.asarray(raw)
    if value.size != 1 or not np.issubdtype(value.dtype, np.number) or not np.isfinite(value).all():
        raise DataError(f"{where} has a {field} that is not a finite number; the file is damaged.")
    number = float(value.reshape(-1)[0])
    if number < 0 or number > MAX_COUNT or number != int(number):
        raise DataError(f"{where} has {field} {number:g}, not a whole number of elements from 0 to 2**53; the file is damaged.")
    return int(number)


def _vector(where: str, field: str, raw: Any) -> np.ndarray:
    try:
        array = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where} has a {field} that is not numeric; the file is damaged.") from exc
    if array.ndim > 1:
        raise DataError(f"{where} has a {field} of shape {list(array.shape)}, not one value per channel; the file is damaged.")
    array = array.reshape(-1)
    if not np.isfinite(array).all():
        channel = int(np.argmax(~np.isfinite(array)))
        raise DataError(f"{where} has a non-finite {field} (NaN or Inf) at channel {channel}; the file is damaged.")
    return array


_META_COUNTS = ("batch_size", "files", "listing_files", "samples", "parts", "of", "limit", "format_version")
_META_TEXTS = ("data", "format", "listing_sha256", "model_sha256", "bncheck_version")
_META_OBJECTS = ("preprocessing", "signature")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_COUNT


def meta_problem(meta: Any) -> str | None:
    """What is wrong with a statistics file's metadata (the JSON that ``--save-stats`` writes
    beside the arrays), as a phrase; None when every field bncheck reads has its type."""
    if not isinstance(meta, dict):
        return "is not a JSON object"
    for key in _META_COUNTS:
        if meta.get(key) is not None and not _is_count(meta[key]):
            return f"has {key} {str(meta[key])[:40]!r}, not a count"
    for key, kind in [*((k, str) for k in _META_TEXTS), *((k, dict) for k in _META_OBJECTS)]:
        if meta.get(key) is not None and not isinstance(meta[key], kind):
            return f"has a {key} that is not a {'string' if kind is str else 'JSON object'}"
    layers = meta.get("layers", [])
    if not isinstance(layers, list) or not all(
        isinstance(e, dict) and isinstance(e.get("name"), str) and _is_count(e.get("channels", 0)) for e in layers
    ):
        return "has a layers list that is not of {name, channels} entries"
    ranges = meta.get("ranges", [])
    if not isinstance(ranges, list) or not all(
        isinstance(r, list) and len(r) == 2 and all(map(_is_count, r)) and r[0] <= r[1] for r in ranges
    ):
        return "has ranges that are not [start, end] pairs of file indices"
    shards = meta.get("shards", [])
    if not isinstance(shards, list) or not all(map(_is_count, shards)):
        return "has shards that are not shard numbers"
    return None


def check_same_width(path: Path, name: str, have: Moments, other: Moments) -> None:
    """Two parts of one measurement give layer ``name`` the same number of channels."""
    if have.channels != other.channels:
        raise DataError(
            f"{path} gives layer {name} {other.channels} channels but the other parts give it {have.channels}; "
            "merge parts of one model only."
        )


class NonFiniteMeasurement(DataError):
    """A data pass measured NaN or Inf statistics (not from the stored statistics)."""


def kept_nonfinite(info: Mapping[str, Any]) -> NonFiniteMeasurement | None:
    """Where DATA's description ``info`` says samples with NaN or Inf were kept (``--nan
    keep``), the error that names them as the cause of a non-finite measurement."""
    count = int(info.get("nonfinite_samples") or 0)
    if count <= 0 or info.get("nonfinite_policy") != "keep":
        return None
    examples = list(info.get("nonfinite_examples") or [])
    first = f" (first: {examples[0]})" if examples else ""
    return NonFiniteMeasurement(
        f"DATA has {count} sample(s) with NaN or Inf values{first}, kept by --nan keep, so the statistics the "
        "BN layers measure are not finite; leave --nan out (its default, exclude, skips those samples) or fix them."
    )


def check_measured(moments: Mapping[str, Moments], layers: Sequence[Any] = ()) -> None:
    """Statistics a data pass measured are finite; otherwise the data overflowed inside the
    model (e.g. values near the float32 limit), or one of ``layers`` (BN layers with
    ``running_mean``/``running_var``) normalises with non-finite stored statistics, and every
    figure would be NaN."""
    for name, m in moments.items():
        with np.errstate(all="ignore"):
            bad = ~(np.isfinite(m.mean) & np.isfinite(m.m2))
        if m.count and bad.any():
            stored = next((layer.name for layer in layers if not _finite_stored(layer)), None)
            if stored is not None:
                raise DataError(
                    f"BN layer {stored} stores non-finite running statistics (NaN or Inf), so the layers "
                    f"after it measure NaN (first {name}); see bncheck audit, then recalibrate or re-export the model."
                )
            raise NonFiniteMeasurement(
                f"the statistics measured at BN layer {name} are not finite (NaN or Inf at channel "
                f"{int(np.argmax(bad))}): the data overflowed inside the model; check its scale and "
                "preprocessing (--scale, --mean, --std)."
            )


def _finite_stored(layer: Any) -> bool:
    with np.errstate(all="ignore"):
        values = [np.asarray(v, np.float64) for v in (layer.running_mean, layer.running_var) if v is not None]
    return all(np.isfinite(v).all() for v in values)

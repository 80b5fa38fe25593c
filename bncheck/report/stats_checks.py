"""What a statistics file, a shard and a data pass must satisfy before a figure is computed
from them: finite means, non-negative counts and m2, one channel count per layer.

A violation is a :class:`DataError` with one sentence naming the file (or the pass), the layer
and the field, never a silent pass or a numpy warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.errors import DataError
from bncheck.numerics.moments import Moments


def moments_from_fields(path: Path, name: str, fields: Mapping[str, Any]) -> Moments:
    """The :class:`Moments` of layer ``name`` stored in ``fields`` (``data_count``,
    ``data_mean``, ``data_m2``), checked."""
    try:
        raw_count, raw_mean, raw_m2 = fields["data_count"], fields["data_mean"], fields["data_m2"]
    except KeyError as exc:
        raise DataError(f"{path} lacks the statistics of layer {name} ({exc.args[0]}); the file is damaged.") from exc
    where = f"{path}: layer {name}"
    count = _count(where, raw_count)
    mean = _vector(where, "data_mean", raw_mean)
    m2 = _vector(where, "data_m2", raw_m2)
    if mean.shape != m2.shape:
        raise DataError(f"{where} has {mean.size} channel means but {m2.size} m2 values; the file is damaged.")
    if (m2 < 0).any():
        channel = int(np.argmax(m2 < 0))
        raise DataError(f"{where} has a negative data_m2 (sum of squared deviations) at channel {channel}; the file is damaged or forged.")
    return Moments(count, mean, m2)


def _count(where: str, raw: Any) -> int:
    value = np.asarray(raw)
    if value.size != 1 or not np.issubdtype(value.dtype, np.number) or not np.isfinite(value).all():
        raise DataError(f"{where} has a data_count that is not a finite number; the file is damaged.")
    number = float(value.reshape(-1)[0])
    if number < 0 or number != int(number):
        raise DataError(f"{where} has data_count {number:g}, not a whole number of elements >= 0; the file is damaged.")
    return int(number)


def _vector(where: str, field: str, raw: Any) -> np.ndarray:
    try:
        array = np.asarray(raw, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where} has a {field} that is not numeric; the file is damaged.") from exc
    if not np.isfinite(array).all():
        channel = int(np.argmax(~np.isfinite(array)))
        raise DataError(f"{where} has a non-finite {field} (NaN or Inf) at channel {channel}; the file is damaged.")
    return array


def check_same_width(path: Path, name: str, have: Moments, other: Moments) -> None:
    """Two parts of one measurement give layer ``name`` the same number of channels."""
    if have.channels != other.channels:
        raise DataError(
            f"{path} gives layer {name} {other.channels} channels but the other parts give it {have.channels}; "
            "merge parts of one model only."
        )


def check_measured(moments: Mapping[str, Moments]) -> None:
    """Statistics a data pass measured are finite; otherwise the data overflowed inside the
    model (e.g. values near the float32 limit), and every figure would be NaN."""
    for name, m in moments.items():
        with np.errstate(all="ignore"):
            bad = ~(np.isfinite(m.mean) & np.isfinite(m.m2))
        if m.count and bad.any():
            raise DataError(
                f"the statistics measured at BN layer {name} are not finite (NaN or Inf at channel "
                f"{int(np.argmax(bad))}): the data overflowed inside the model; check its scale and "
                "preprocessing (--scale, --mean, --std)."
            )

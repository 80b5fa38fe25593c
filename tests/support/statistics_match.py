"""How closely statistics measured along different routes (one process, shards, Ray actors,
remote files) must agree.

Counts and the model's running statistics are copied, so they are equal. The data moments
are merged exactly (float64, Chan), but each batch's reductions run in float32 inside the
runtime, centred at a shift that the runner settles on from the batches it has seen first
(see ``bncheck.backends.onnx.runner``): a shard whose first batch differs rounds differently,
by about 1e-7 of the values. 2e-6 of the largest value leaves room for that and still catches
any lost, repeated or misweighted batch (one sample of 540 moves a mean by ~1e-3).
"""

from __future__ import annotations

import numpy as np

#: agreement required between two routes, relative to the largest value of an array
FLOAT32_ROUNDING = 2e-6


def assert_statistics_match(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if key.endswith("_count") or "running" in key:
            np.testing.assert_array_equal(got[key], value, err_msg=key)
            continue
        scale = float(np.abs(value).max()) if np.size(value) else 0.0
        np.testing.assert_allclose(
            got[key], value, rtol=FLOAT32_ROUNDING, atol=FLOAT32_ROUNDING * scale, err_msg=key
        )

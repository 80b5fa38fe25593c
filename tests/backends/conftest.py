"""Fixtures of the backend tests (this folder and the family folders below it): the digits
sample data and eager model the runner tests of both families check against, and an example
input of the ``tiny_cnn`` fixture for saving it in every format."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def digits_x() -> np.ndarray:
    """The first 48 reference samples of the digits sample data, float32."""
    pytest.importorskip("torch")  # support.runner_checks, and every test that reads them
    from support.runner_checks import SAMPLES

    with np.load(SAMPLES / "data" / "digits" / "reference.npz") as data:
        return np.ascontiguousarray(data["x"][:48], dtype=np.float32)


@pytest.fixture(scope="module")
def digits_eager():
    """The digits CNN as an eager module (its state dict with the sample architecture)."""
    pytest.importorskip("torch")
    from support.runner_checks import ARCH, SAMPLES

    from bncheck.backends import load_model

    return load_model(SAMPLES / "digits_cnn.pt", arch=ARCH).module


@pytest.fixture
def example():
    """A batch the ``tiny_cnn`` fixture takes: (2, 1, 8, 8)."""
    torch = pytest.importorskip("torch")
    return torch.rand(2, 1, 8, 8)

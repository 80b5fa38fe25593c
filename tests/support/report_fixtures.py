"""Fixtures for the report tests: the JSON reports of real runs of every command on the
bundled sample models, made once per test session (per xdist worker) through the real CLI."""

from __future__ import annotations

import pytest

from support.reports_support import Run, make_runs


@pytest.fixture(scope="session")
def sample_runs(tmp_path_factory) -> dict[str, Run]:
    """Every run of ``reports_support.RUNS`` (torch-only runs are left out without torch)."""
    try:
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    return make_runs(tmp_path_factory.mktemp("sample_runs"), have_torch)

"""The pytest plugin bncheck registers (entry point ``pytest11``): the ``bncheck`` fixture.

Every pytest session of every project where bncheck is installed imports this module, so it
imports pytest alone; the commands and assertions (:mod:`bncheck.testing`) are imported when a
test first asks for the fixture.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from bncheck.testing import Checker


@pytest.fixture
def bncheck(tmp_path: Path) -> Checker:
    """bncheck's commands and assertions (:class:`bncheck.testing.Checker`), writing what
    ``fold``/``recalibrate`` write to the test's ``tmp_path``."""
    from bncheck.testing import Checker  # optional: the commands, only when a test uses the fixture

    return Checker(tmp_path)

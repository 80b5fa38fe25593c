"""The gate: a report passes when no finding fails it, and its exit code says so."""

from __future__ import annotations


class Gate:
    """``passed`` and ``exit_code`` from ``failing()`` (what fails the gate, defined by the
    report or diff that uses this)."""

    def failing(self) -> list:
        raise NotImplementedError

    @property
    def passed(self) -> bool:
        return not self.failing()

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

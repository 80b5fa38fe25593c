"""The base of the objects that hold a runtime and are used in ``with`` blocks (model runners,
engine sessions): leaving the block calls ``close()``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TypeVar

_Self = TypeVar("_Self", bound="Closing")


class Closing(ABC):
    """A context manager whose exit is ``close()``; subclasses implement ``close``."""

    @abstractmethod
    def close(self) -> None:
        """Release what the object holds; idempotent."""

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

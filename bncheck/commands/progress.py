"""Progress on stderr (rich), or nothing when progress is off: one transient line naming the
step under way, with its elapsed time, and for a step that reads samples a bar, the count,
the rate and the time left.

A command opens :func:`steps` around its work; inside, it names each step with :func:`step`
(a no-op when no line is shown, as in the Python API by default). A command run by another
(recalibrate's ``--verify`` drift reports) names its steps under the step under way
(``drift of OUT on DATA (--verify): reading DATA``). Progress is never written to stdout."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bncheck.commands.progress_line import Line

#: ``enabled`` value that draws progress even when stderr is no terminal (``progress = "always"``)
ALWAYS = "always"

#: the line being shown and the prefix of the step names (None: no line)
_CURRENT: ContextVar[tuple[Line, str] | None] = ContextVar("bncheck_step_line", default=None)


@contextmanager
def steps(enabled: bool | str, label: str, first: str = "loading the model") -> Iterator[None]:
    """A transient line on stderr naming the step under way: ``fold ⠋ verifying the folded
    model 0:00:03`` (``enabled``: False, True, or :data:`ALWAYS` to draw it on a stderr that is
    no terminal). Inside another command's line, this command's steps are named under the step
    under way instead."""
    current = _CURRENT.get()
    if current is not None:
        line = current[0]
        token = _CURRENT.set((line, f"{line.description}: "))
        try:
            step(first)
            yield
        finally:
            _CURRENT.reset(token)
        return
    if not enabled:
        yield
        return
    # rich.progress is imported only when a line is drawn (most runs draw none)
    drawn = importlib.import_module("bncheck.commands.progress_line")
    with drawn.progress_for(label, always=enabled == ALWAYS) as progress:
        token = _CURRENT.set((drawn.Line(progress, first), ""))
        try:
            progress.refresh()
            yield
        finally:
            _CURRENT.reset(token)


def step(description: str, total: int | None = None) -> Callable[[int], None] | None:
    """Name the step under way on the line (drawn at once: a short step is seen too); with
    ``total`` samples, the callback that advances its bar (``on_batch`` of a data pass). None
    when no line is shown."""
    current = _CURRENT.get()
    if current is None:
        return None
    line, prefix = current
    line.show(prefix + description, total)
    return line.advance if total else None

"""Progress on stderr (rich), or nothing when progress is off: the bar of drift's data pass,
and the step line of commands whose work is a few long steps (fold, recalibrate).

A caller opens :func:`steps` around a command; inside, the command names each step with
:func:`step` (a no-op when no step line is shown, as in the Python API by default)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

#: ``enabled`` value that draws progress even when stderr is no terminal (``progress = "always"``)
ALWAYS = "always"

#: the step line being shown (None: none)
_CURRENT: ContextVar[tuple[Progress, TaskID] | None] = ContextVar("bncheck_step_line", default=None)


class _Rate(TextColumn):
    """Samples per second."""

    def __init__(self):
        super().__init__("")

    def render(self, task):
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} samples/s" if speed else "", style="dim")


def _console(enabled: bool | str) -> Console:
    """stderr; drawn as a terminal whatever it is when ``enabled`` is :data:`ALWAYS`."""
    return Console(stderr=True, force_terminal=True if enabled == ALWAYS else None)


def progress(enabled: bool | str, label: str = "drift") -> AbstractContextManager[Progress | None]:
    """A transient progress bar on stderr (``None`` inside the block when not ``enabled``;
    :data:`ALWAYS`: drawn even when stderr is no terminal)."""
    if not enabled:
        return nullcontext(None)
    return Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeRemainingColumn(),
        console=_console(enabled),
        transient=True,
    )


class _Count(TextColumn):
    """``done/total`` for a step that counts samples, nothing for one that does not."""

    def __init__(self):
        super().__init__("")

    def render(self, task):
        if task.total is None:
            return Text("")
        return Text(f"{int(task.completed)}/{int(task.total)} samples", style="dim")


@contextmanager
def steps(enabled: bool | str, label: str, first: str = "loading the model") -> Iterator[None]:
    """A transient line on stderr naming the step under way, with its elapsed time (and a bar
    when it counts samples): ``fold ⠋ verifying on 8 batches 0:00:03``."""
    if not enabled:
        yield
        return
    columns: list[ProgressColumn] = [
        SpinnerColumn(),
        TextColumn(f"[bold]{label}[/]"),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        _Count(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=_console(enabled), transient=True) as line:
        token = _CURRENT.set((line, line.add_task(first, total=None)))
        try:
            yield
        finally:
            _CURRENT.reset(token)


def step(description: str, total: int | None = None) -> Callable[[int], None] | None:
    """Name the step under way on the step line; with ``total`` samples, the callback that
    advances its bar (``on_batch`` of a data pass). None when no step line is shown."""
    current = _CURRENT.get()
    if current is None:
        return None
    line, task = current
    line.reset(task, total=total, description=description)
    return (lambda n: line.advance(task, n)) if total else None

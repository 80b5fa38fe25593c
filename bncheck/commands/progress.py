"""Progress on stderr (rich), or nothing when progress is off: one transient line naming the
step under way, with its elapsed time, and for a step that reads samples a bar, the count,
the rate and the time left.

A command opens :func:`steps` around its work; inside, it names each step with :func:`step`
(a no-op when no line is shown, as in the Python API by default). A command run by another
(recalibrate's ``--verify`` drift reports) names its steps under the step under way
(``drift of OUT on DATA (--verify): reading DATA``). Progress is never written to stdout."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

#: ``enabled`` value that draws progress even when stderr is no terminal (``progress = "always"``)
ALWAYS = "always"

class _Line:
    """The line shown: a rich Progress with one task, the step under way (a new task per step,
    so that a step that counts no samples shows no count)."""

    def __init__(self, progress: Progress, first: str):
        self.progress = progress
        self.task: TaskID = progress.add_task(first, total=None)

    @property
    def description(self) -> str:
        return next((t.description for t in self.progress.tasks if t.id == self.task), "")

    def show(self, description: str, total: int | None) -> None:
        self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total)
        self.progress.refresh()

    def advance(self, n: int) -> None:
        self.progress.advance(self.task, n)


#: the line being shown and the prefix of the step names (None: no line)
_CURRENT: ContextVar[tuple[_Line, str] | None] = ContextVar("bncheck_step_line", default=None)


class _Count(TextColumn):
    """``done/total samples``, the rate and the time left for a step that counts samples;
    nothing for one that does not."""

    def __init__(self):
        super().__init__("")

    def render(self, task):
        if task.total is None:
            return Text("")
        text = f"{int(task.completed)}/{int(task.total)} samples"
        speed = task.finished_speed or task.speed
        if speed:
            text += f" {speed:,.0f}/s"
            if task.time_remaining is not None and not task.finished:
                minutes, seconds = divmod(int(task.time_remaining), 60)
                text += f" {minutes}:{seconds:02d} left"
        return Text(text, style="dim")


def _console(enabled: bool | str) -> Console:
    """stderr; drawn as a terminal whatever it is when ``enabled`` is :data:`ALWAYS`."""
    return Console(stderr=True, force_terminal=True if enabled == ALWAYS else None)


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
    columns: list[ProgressColumn] = [
        SpinnerColumn(),
        TextColumn(f"[bold]{label}[/]"),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        _Count(),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=_console(enabled), transient=True) as progress:
        token = _CURRENT.set((_Line(progress, first), ""))
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

"""The rich side of :mod:`bncheck.commands.progress`: the line drawn on stderr. Imported only
when a line is drawn, so that a command run without progress does not load rich.progress."""

from __future__ import annotations

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


class Line:
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


class Count(TextColumn):
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


def progress_for(label: str, *, always: bool) -> Progress:
    """The transient Progress on stderr for command ``label``; drawn as a terminal whatever
    stderr is when ``always``."""
    columns: list[ProgressColumn] = [
        SpinnerColumn(),
        TextColumn(f"[bold]{label}[/]"),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        Count(),
        TimeElapsedColumn(),
    ]
    console = Console(stderr=True, force_terminal=True if always else None)
    return Progress(*columns, console=console, transient=True)

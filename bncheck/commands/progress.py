"""The progress bar of a data pass (stderr, rich), or nothing when progress is off."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text


class _Rate(TextColumn):
    """Samples per second."""

    def __init__(self):
        super().__init__("")

    def render(self, task):
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} samples/s" if speed else "", style="dim")


def progress(enabled: bool, label: str = "drift") -> AbstractContextManager[Progress | None]:
    """A transient progress bar on stderr (``None`` inside the block when not ``enabled``)."""
    if not enabled:
        return nullcontext(None)
    return Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )

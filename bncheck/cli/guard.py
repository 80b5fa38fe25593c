"""The CLI's side of the output guard: every command names what it reads and writes, once,
before any work is done (rules in bncheck/backends/output_guard.py and SECURITY.md)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from bncheck.backends.load import model_files
from bncheck.backends.output_guard import check_outputs, is_stdout
from bncheck.data.discover import ARRAY_EXTENSIONS, IMAGE_EXTENSIONS, TABLE_EXTENSIONS

DATA_SUFFIXES = (*IMAGE_EXTENSIONS, *ARRAY_EXTENSIONS, *TABLE_EXTENSIONS)


def guard_outputs(
    outputs: Mapping[str, Path | str | None],
    *,
    models: Iterable[Path | str | None] = (),
    inputs: Mapping[str, Iterable[Path | str | None]] | None = None,
    settings=None,
) -> None:
    """Refuse this run's outputs that would overwrite one of its inputs (models with their
    external data, DATA, statistics, baselines, reports, the config file) or each other;
    ``inputs`` maps a role ("DATA", "baseline", "report", "part"...) to its paths."""
    read: dict[str, list[Path | str | None]] = {"model": [f for m in models for f in model_files(m)]}
    for role, paths in (inputs or {}).items():
        read[role] = list(paths)
    if settings is not None and getattr(settings, "config_path", None) is not None:
        read["config"] = [settings.config_path]
    check_outputs(outputs, read, data_suffixes=DATA_SUFFIXES)


def report_path(output: Path | None) -> Path | None:
    """``-`` means stdout: the report goes where it goes without ``--output``."""
    return None if is_stdout(output) else output


def labels_file(labels: str | None) -> str | None:
    """The file behind ``--labels`` (not the words ``folders``/``none``)."""
    return None if labels in (None, "folders", "none") else labels

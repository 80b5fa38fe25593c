"""The one guard every command passes its output paths through before any work is done.

The rules (coreutils-like, see SECURITY.md): an output is never one of the run's inputs (the
model and its external data, DATA files, statistics, baselines, reports, config), never inside
an input folder where the next run would read it back as data, and never the path of another
output of the same run; ``-`` means stdout, and only where a report is written. Special files
(``/dev/null``, FIFOs) are allowed: :func:`bncheck.backends.output.write_atomically` writes
them in place instead of replacing them.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from bncheck.errors import OutputError

#: Output options that take a report (where ``-`` means stdout).
REPORT_OPTIONS = frozenset({"--output", "-o/--output"})
STDOUT = "-"


def is_stdout(path: Path | str | None) -> bool:
    return path is not None and str(path) == STDOUT


def is_special_file(path: Path) -> bool:
    """An existing path that is not a regular file or folder: a device, FIFO or socket."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def check_outputs(
    outputs: Mapping[str, Path | str | None],
    inputs: Mapping[str, Iterable[Path | str | None]],
    *,
    data_suffixes: Iterable[str] = (),
) -> None:
    """Refuse outputs (``{option: path}``) that are inputs (``{role: paths}``, role e.g.
    "model", "DATA", "part"), that lie in an input folder with a DATA suffix, that are ``-``
    outside a report option, or that two options share."""
    suffixes = {s.lower() for s in data_suffixes}
    files, folders = _split_inputs(inputs)
    seen: dict[str, tuple[str, Path]] = {}
    for option, raw in outputs.items():
        if raw is None:
            continue
        if is_stdout(raw):
            if option not in REPORT_OPTIONS:
                raise OutputError(f"{option} - would write to stdout, which only a report can; name a file.")
            key = STDOUT
            path = Path(STDOUT)
        else:
            path = Path(raw)
            if path.is_dir():  # before any work: the run would fail only when it came to write
                raise OutputError(f"{option} {path} is a directory; name a file in it to write.")
            _check_not_input(option, path, files, folders, suffixes)
            key = _identity(path)
        if key in seen and not (key == STDOUT or is_special_file(path)):
            other, _ = seen[key]
            raise OutputError(f"{other} and {option} both name {path}; give each output its own file.")
        seen.setdefault(key, (option, path))


#: How a refusal names the input it protects, by role.
_ROLE_WORDS = {"model": "the input model {path}", "part": "{path}, which is one of the parts"}


def _split_inputs(inputs: Mapping[str, Iterable[Path | str | None]]) -> tuple[list[tuple[str, Path]], list[Path]]:
    files, folders = [], []
    for role, items in inputs.items():
        for item in items:
            if item is None or is_stdout(item) or "://" in str(item):
                continue
            path = Path(item)
            if path.is_dir():
                folders.append(path)
            else:
                files.append((role, path))
    return files, folders


def _check_not_input(
    option: str, path: Path, files: list[tuple[str, Path]], folders: list[Path], suffixes: set[str]
) -> None:
    if is_special_file(path):
        return
    for role, source in files:
        if _same(path, source):
            what = _ROLE_WORDS.get(role, "the input {role} {path}").format(role=role, path=source)
            raise OutputError(f"refusing to overwrite {what} with {option}; choose another path.")
    resolved = _resolve(path)
    for folder in folders:
        if path.suffix.lower() in suffixes and resolved.is_relative_to(_resolve(folder)):
            raise OutputError(
                f"refusing to write {option} {path} inside the DATA folder {folder}, where it would be read as "
                "data; write it elsewhere."
            )


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def _identity(path: Path) -> str:
    try:
        info = os.stat(path)
        return f"inode:{info.st_dev}:{info.st_ino}"
    except OSError:
        return str(_resolve(path))


def _same(a: Path, b: Path) -> bool:
    return _identity(a) == _identity(b)


def _interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    """Make SIGTERM behave like Ctrl-C (KeyboardInterrupt), so that every ``finally`` and
    ``except BaseException`` that removes a temporary file runs before the process ends."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def write_in_place(path: Path | str, writer: Callable[[str], object]) -> None:
    """``writer(tmp)`` into a private temporary file, then copy its bytes into ``path`` opened
    for writing (stdout for ``-``): how a device or FIFO is written without being replaced."""
    fd, tmp = tempfile.mkstemp(prefix=".bncheck.", suffix=Path(str(path)).suffix)
    os.close(fd)
    try:
        writer(tmp)
        with open(tmp, "rb") as source:
            if is_stdout(path):
                sys.stdout.flush()
                shutil.copyfileobj(source, sys.stdout.buffer)
                sys.stdout.buffer.flush()
            else:
                with open(path, "wb") as target:
                    shutil.copyfileobj(source, target)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}.") from exc
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def fsync_file(path: Path | str) -> None:
    """Flush a written file to disk before it is renamed into place."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

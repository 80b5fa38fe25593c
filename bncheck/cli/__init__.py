"""The ``bncheck`` command line: a typer app over the Python API (``bncheck.cli.app.app``).

:func:`main` answers ``bncheck --version`` before typer, numpy or any model runtime is
imported; everything else goes to the typer app. :func:`console` (the ``bncheck`` script and
``python -m bncheck``) is :func:`main`, then the end of the process without Python's teardown
of every module (:func:`exit_now`)."""

from __future__ import annotations

import atexit
import importlib
import itertools
import os
import sys
import threading
from collections.abc import Sequence

from bncheck._version import __version__

#: flags that may stand before ``--version`` on a line that only asks for the version
_VERSION_LINE_FLAGS = frozenset({"--version", "--debug", "--verbose"})


def version_only(args: Sequence[str]) -> bool:
    """True when ``args`` ask for the version and nothing else
    (``bncheck [--debug] [--verbose] --version [...]``, as typer's eager option reads it)."""
    leading = list(itertools.takewhile(lambda arg: arg.startswith("-"), args))
    return "--version" in leading and set(leading) <= _VERSION_LINE_FLAGS


def main(argv: Sequence[str] | None = None) -> None:
    """The ``bncheck`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if version_only(args):
        sys.stdout.write(f"bncheck {__version__}\n")
        return
    # the typer app is imported only here: --version above must not pay for it (issue 15)
    importlib.import_module("bncheck.cli.app").run(args)


def console() -> None:
    """The ``bncheck`` console script and ``python -m bncheck``: :func:`main`, then
    :func:`exit_now` with its exit status. An exception other than SystemExit (Ctrl-C among
    them) takes Python's usual way out."""
    try:
        main()
        status: object = 0
    except SystemExit as exc:
        status = exc.code
    exit_now(status)


def exit_now(code: object) -> None:
    """End the process with ``code`` (as ``sys.exit`` reads it) once the run is over: the
    atexit handlers run and stdout/stderr are flushed, as at any exit, but the teardown of
    every imported module that Python does after them is skipped. That teardown takes 60-90 ms
    of an ONNX fold or drift (numpy, onnx, onnxruntime, onnx.reference) and does nothing a
    finished run needs: every file bncheck writes is closed (and synced) before the command
    returns. Where a thread that Python would wait for is still running, or a stream cannot be
    flushed (a closed pipe), or a profiler or tracer watches the process (``python -m cProfile
    -m bncheck``, coverage, a debugger: they write their results after the program returns),
    the exit is Python's own."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): the message on stderr, status 1
        sys.stderr.write(f"{code}\n")
        status = 1
    main_thread = threading.main_thread()
    watched = sys.getprofile() is not None or sys.gettrace() is not None
    if watched or any(t is not main_thread and t.is_alive() and not t.daemon for t in threading.enumerate()):
        raise SystemExit(status)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe or stream: Python reports it its own way
        raise SystemExit(status) from None
    os._exit(status)


__all__ = ["console", "exit_now", "main", "version_only"]

"""Errors that reach the user.

Every problem with the user's input (model, data, options) is raised as a
:class:`BncheckError`. The CLI turns it into one line on stderr and exit code 2;
the Python API lets it propagate. Anything else that escapes is a bug in bncheck.
"""

from __future__ import annotations


class BncheckError(Exception):
    """A run that cannot be done, with one sentence saying what is wrong and what to do."""


class ModelLoadError(BncheckError):
    """The model file is missing, unreadable, corrupt, unsupported or untrusted."""


class DataError(BncheckError):
    """The data folder or file cannot be used as model input."""


class UsageError(BncheckError):
    """Options that contradict each other or name things that do not exist."""


class OutputError(BncheckError):
    """An output file cannot or must not be written."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (without a closing period, at most
    ``limit`` characters, ending in "…" where cut), or its class name when the message is empty: the part of a
    library's error that goes into one of bncheck's sentences."""
    for line in str(exc).splitlines():
        if line.strip():
            text = line.strip().rstrip(".")
            # a cut line says so: onnxruntime's "... axis == largest was fals" read as a typo
            return text if len(text) <= limit else text[: limit - 1] + "…"
    return type(exc).__name__

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

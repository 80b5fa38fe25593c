"""Recognise a plain Python pickle (``pickle.dump``, joblib) among torch files, without running it.

``torch.save`` writes a zip archive (or, before PyTorch 1.6, a pickled magic number followed by
the object); a file written by ``pickle.dump(model, f)`` is neither, and ``torch.load`` cannot read
it even when trusted. Its opcodes are scanned with :mod:`pickletools` (which parses and never
executes), so the refusal can say what the file is and what it holds.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path

#: ``pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)``: how a legacy (non-zip) ``torch.save`` starts.
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19."
_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def plain_pickle_class(path: Path) -> str | None:
    """The class of the object that ``path`` pickles (``"torch.nn.modules.container.Sequential"``;
    ``""`` when it names none, e.g. a plain dict) if the file is one complete pickle stream that
    ``torch.save`` did not write; ``None`` otherwise (a torch file, damage, not a pickle)."""
    try:
        with open(path, "rb") as handle:
            if handle.read(len(TORCH_LEGACY_MAGIC)) == TORCH_LEGACY_MAGIC:
                return None
            handle.seek(0)
            return _first_global(handle)
    except (ValueError, EOFError, OSError, pickle.UnpicklingError, UnicodeDecodeError):
        return None  # not a complete pickle stream: torch.load's own error says what is wrong


def _first_global(handle: io.BufferedIOBase) -> str | None:
    first = ""
    strings: list[str] = []
    for opcode, arg, _ in pickletools.genops(handle):
        name = opcode.name
        if name in _STRINGS:
            strings = [*strings[-1:], str(arg)]
        elif not first and name in ("GLOBAL", "INST"):
            first = str(arg).replace(" ", ".")
        elif not first and name == "STACK_GLOBAL" and len(strings) == 2:
            first = ".".join(strings)
        elif name == "STOP":
            return first
    return None  # the stream ended before STOP: truncated


def load_plain_pickle(path: Path):
    """Unpickle ``path`` (only ever called when the user passed ``--trust-pickle``)."""
    with open(path, "rb") as handle:
        return pickle.load(handle)  # noqa: S301 - the user trusts the file (--trust-pickle)

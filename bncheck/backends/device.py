"""``--device cpu|cuda[:N]|auto``: where a runner runs the model.

``cpu`` (the default) and ``cuda``/``cuda:N`` are demands: a CUDA device the model's runtime
cannot use (no GPU, torch without CUDA, onnxruntime without its CUDA execution provider) stops
the run with exit 2 and one sentence. ``auto`` takes CUDA device 0 when the runtime can use it
and otherwise falls back to the CPU with one sentence on stderr. The backends decide what
"can use" means (:meth:`bncheck.backends.interface.Backend.place`).
"""

from __future__ import annotations

import re

from bncheck.errors import UsageError

_PATTERN = re.compile(r"^(cpu|auto|cuda)(?::(\d+))?$")


def parse_device(text: str | None) -> tuple[str, int]:
    """``(kind, index)``: kind cpu, cuda or auto; index the CUDA device (0 unless given)."""
    value = (text or "cpu").strip().lower()
    match = _PATTERN.match(value)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise UsageError(f"--device {text!r} must be cpu, cuda, cuda:N or auto.")
    return match.group(1), int(match.group(2) or 0)


def resolve(text: str | None, problem) -> str:
    """The device to run on: ``problem(index)`` says why CUDA device ``index`` cannot be used
    (None when it can). Raises for a demanded CUDA device it cannot use; falls back for auto."""
    kind, index = parse_device(text)
    if kind == "cpu":
        return "cpu"
    why = problem(index)
    if why is None:
        return f"cuda:{index}"
    if kind == "auto":
        import logging  # 2 ms a process: only for the fallback's warning

        logging.getLogger("bncheck.device").warning("bncheck: --device auto runs on the CPU: %s.", why)
        return "cpu"
    raise UsageError(f"--device {text} cannot be used: {why}; use --device cpu, or --device auto to fall back to the CPU.")

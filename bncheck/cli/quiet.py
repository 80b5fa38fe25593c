"""Keep libraries' own noise off stderr: a run says what went wrong in one sentence, and
``--debug`` shows everything (warnings, logged tracebacks, the Python traceback)."""

from __future__ import annotations

import logging
import warnings

#: Loggers of libraries that log tracebacks or advice of their own (torch.export on a bad
#: archive logs a 77-line traceback before raising).
NOISY_LOGGERS = ("torch", "onnx", "onnxruntime", "PIL", "matplotlib", "ray", "fsspec", "s3fs")


def quiet_libraries(debug: bool) -> None:
    """Without ``debug``: ignore Python warnings (numpy's All-NaN slice and invalid sqrt
    among them), and log only CRITICAL records of the libraries bncheck drives.
    Problems they point at are caught and reported by bncheck's own checks (non-finite
    statistics, decompression bombs...)."""
    if debug:
        return
    warnings.simplefilter("ignore")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)

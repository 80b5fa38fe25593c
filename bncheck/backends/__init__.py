"""Model families behind one protocol (:mod:`bncheck.backends.interface`): ``onnx/`` and
``torch/``, chosen by :mod:`bncheck.backends.load`."""

from bncheck.backends.detect import ModelFormat, sniff_format
from bncheck.backends.interface import Backend, InputSpec, ModelSource
from bncheck.backends.load import as_source, backend_for, load_model

__all__ = ["Backend", "InputSpec", "ModelFormat", "ModelSource", "as_source", "backend_for", "load_model", "sniff_format"]

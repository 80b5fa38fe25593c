"""Where models (and, later, data) come from: one loader per format, one interface for all."""

from bncheck.backends.detect import ModelFormat, load_model, sniff_format
from bncheck.backends.interface import ModelSource

__all__ = ["ModelFormat", "ModelSource", "load_model", "sniff_format"]

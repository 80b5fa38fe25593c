"""Where models (and, later, data) come from: one loader per format, one interface for all."""

from bncheck.sources.detect import ModelFormat, load_model, sniff_format
from bncheck.sources.interface import ModelSource

__all__ = ["ModelFormat", "ModelSource", "load_model", "sniff_format"]

"""Python values -> float32 numpy arrays: numpy arrays, CPU or GPU tensors (duck-typed, so
nothing here imports torch), anything ``numpy.asarray`` accepts; and the callables users give
(``transform=``) run with their failures turned into one sentence."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bncheck.errors import DataError, first_line


def is_tensor(value: Any) -> bool:
    """A torch tensor (or anything with its ``detach``/``cpu``/``numpy`` trio)."""
    return all(hasattr(value, name) for name in ("detach", "cpu", "numpy", "shape"))


def is_array_like(value: Any) -> bool:
    """A numpy array or a tensor (not a Python list, a number or a string)."""
    return isinstance(value, np.ndarray) or is_tensor(value)


def is_pil_image(value: Any) -> bool:
    return all(hasattr(value, name) for name in ("mode", "size", "convert", "getbands"))


def numeric_array(value: Any, what: str) -> np.ndarray:
    """``value`` as a numpy array of real numbers (dtype kept), or a DataError naming ``what``."""
    if is_tensor(value):
        tensor = value.detach().cpu()
        if getattr(tensor, "is_complex", lambda: False)():
            raise DataError(f"{what} holds complex values, not real numbers; give real-valued tensors.")
        if getattr(tensor.dtype, "is_floating_point", False) and str(tensor.dtype) != "torch.float64":
            tensor = tensor.float()  # float16/bfloat16 have no numpy twin for every build
        values = tensor.numpy()
    elif isinstance(value, np.ndarray):
        values = value
    else:
        raise DataError(f"{what} is {'an' if type(value).__name__[:1].lower() in 'aeiou' else 'a'} {type(value).__name__}, not an array or tensor; give numpy arrays or torch tensors (or (x, y) pairs of them).")
    if values.dtype.kind not in "biuf":
        raise DataError(f"{what} holds {values.dtype} values, not real numbers; give numeric arrays.")
    return values


def float_samples(values: np.ndarray) -> np.ndarray:
    """float32, C-contiguous (overflowing values become inf and are screened as non-finite)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(values, dtype=np.float32)


def call_transform(transform: Callable[[Any], Any], value: Any, where: str) -> Any:
    """``transform(value)``; its failure as one sentence naming ``where``."""
    try:
        return transform(value)
    except SystemExit as exc:
        raise DataError(f"transform= called sys.exit on {where}; return a sample instead.") from exc
    except Exception as exc:
        raise DataError(f"transform= failed on {where} with {type(exc).__name__}: {first_line(exc)}.") from exc


def describe_callable(fn: Callable[..., Any]) -> str:
    """A one-line name of a transform for the report: ``Compose(ToTensor(), Normalize(...))``."""
    text = " ".join(repr(fn).split())
    if text.startswith("<"):
        text = getattr(fn, "__qualname__", None) or type(fn).__name__
    return text if len(text) <= 200 else text[:197] + "..."

"""The serialised bytes of a model that is no longer edited, made once.

A fold serialises the same protobuf several times: ``onnx.checker`` on the result, an
onnxruntime session for verification, the file written (for a 45 MB ResNet-18 about 0.1 s
each on a quiet CPU). :func:`remember` keeps the bytes of a finished model (the few most recent);
:func:`serialized` hands them out, or serialises a model it was not asked to remember. Only
models that nobody edits any more are remembered: the folded result once it passed the checker.
"""

from __future__ import annotations

import onnx

#: finished models and their bytes, most recent last
_REMEMBERED: list[tuple[onnx.ModelProto, bytes]] = []
_KEEP = 2


def remember(model: onnx.ModelProto) -> bytes:
    """Serialise ``model`` and keep the bytes for later :func:`serialized` calls."""
    data = serialized(model)
    if all(m is not model for m, _ in _REMEMBERED):
        _REMEMBERED.append((model, data))
        del _REMEMBERED[:-_KEEP]
    return data


def serialized(model: onnx.ModelProto) -> bytes:
    """``model.SerializeToString()``, from the remembered bytes when there are some."""
    for kept, data in _REMEMBERED:
        if kept is model:
            return data
    return model.SerializeToString()

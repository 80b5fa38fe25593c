"""The one way bncheck opens an onnxruntime session: the CPU execution provider (or CUDA's,
for a runner placed on ``cuda:N`` with onnxruntime-gpu installed), quiet logs, the model's
weights handed over in memory (:mod:`.in_memory`: no serialised copy of them), and, where
onnxruntime refuses that, the model serialised whole, or, from 2 GiB on (which protobuf cannot
serialise into one message), saved with its tensors as external data into a temporary folder
that onnxruntime loads from."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from bncheck.backends.interface import Executable
from bncheck.backends.onnx.external_data import fits_in_one_message
from bncheck.backends.onnx.in_memory import Weights, open_light, with_weights
from bncheck.backends.onnx.serialized import serialized
from bncheck.errors import BncheckError, ModelLoadError, first_line

PROVIDERS = ["CPUExecutionProvider"]


class SessionError(ModelLoadError):
    """onnxruntime refuses the model; ``detail`` is the first line of its message."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"onnxruntime cannot load the model ({detail}).")
        self.detail = detail


def providers(device: str = "cpu") -> list:
    """The execution providers for ``device`` ("cpu" or "cuda:N"): CUDA's first, the CPU's
    for the nodes CUDA does not run."""
    if not device.startswith("cuda"):
        return PROVIDERS
    index = int(device.partition(":")[2] or 0)
    return [("CUDAExecutionProvider", {"device_id": index}), *PROVIDERS]


def cuda_problem() -> str | None:
    """Why onnxruntime cannot run on CUDA here (None: its CUDA execution provider is there)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return None
    return "onnxruntime has no CUDA execution provider (install the gpu extra: pip install 'bncheck[gpu]', which brings onnxruntime-gpu)"


def open_session(
    model: onnx.ModelProto,
    *,
    optimize: bool = True,
    threads: int | None = None,
    device: str = "cpu",
    file: Path | None = None,
    arena: bool = True,
    spin: bool = True,
    weights: Weights | None = None,
):
    """An ``onnxruntime.InferenceSession`` for ``model``: every graph optimisation with
    ``optimize`` (none without: the graph runs exactly as written), ``threads`` intra-op
    threads (default: onnxruntime's own), on ``device`` (see :func:`providers`). ``file``: the
    single-file model ``model`` was read from, unchanged, which onnxruntime then reads itself
    (serialising a 45 MB model again costs 0.1-0.3 s). ``arena`` False: no CPU memory arena
    (tensors are freed as they die instead of the arena growing to the largest set ever alive).
    ``spin`` False: the intra-op threads sleep between ops instead of spinning (a session that
    runs a few batches only burns, spinning, CPU that the rest of the process and the machine's
    other processes need). ``weights``: the values of ``model``'s declarations
    (:func:`~bncheck.backends.onnx.in_memory.split_weights`)."""
    import onnxruntime as ort

    def options():
        made = ort.SessionOptions()
        made.log_severity_level = 4  # errors reach the caller as exceptions
        made.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        if threads:
            made.intra_op_num_threads = int(threads)
        made.enable_cpu_mem_arena = arena
        if not spin:
            made.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return made

    try:
        if file is not None:
            return ort.InferenceSession(str(file), options(), providers=providers(device))
        session = _in_memory(model, options(), providers(device), weights)
        if session is not None:
            return session
        model = with_weights(model, weights)
        if fits_in_one_message(model):
            return ort.InferenceSession(serialized(model), options(), providers=providers(device))
        with tempfile.TemporaryDirectory(prefix="bncheck-") as tmp:
            path = Path(tmp) / "model.onnx"
            onnx.save_model(model, str(path), save_as_external_data=True, location="weights.bin")
            return ort.InferenceSession(str(path), options(), providers=providers(device))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise SessionError(first_line(exc)) from exc


def _in_memory(model: onnx.ModelProto, options, chosen: list, weights: Weights | None = None):
    """A session of ``model`` with its weights handed over in memory (:mod:`.in_memory`), or
    None where onnxruntime refuses that form (the caller then serialises the model whole, and a
    model onnxruntime cannot load is refused there, with its own message)."""
    try:
        return open_light(model, options, chosen, weights)
    except Exception:  # onnxruntime raises its own exception types; protobuf a ValueError past 2 GiB
        return None


def executable(model: onnx.ModelProto, *, optimize: bool, file: Path | None = None) -> Executable:
    """``batch (tuple of arrays, graph-input order) -> list of outputs`` with onnxruntime on
    CPU; ``optimize=False`` runs the graph exactly as written (no fusion), as fold's
    verification does on a few batches, with threads that do not spin (see
    :func:`open_session`); ``optimize=True`` keeps onnxruntime's defaults (what fold's timing
    measures). ``file`` as for :func:`open_session`."""
    try:
        session = open_session(model, optimize=optimize, file=file, spin=optimize)
    except SessionError as exc:
        raise BncheckError(
            f"onnxruntime cannot run the model ({exc.detail}); bncheck verifies with onnxruntime on CPU."
        ) from exc
    names = [i.name for i in session.get_inputs()]

    def run(batch: tuple) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, batch, strict=True)))

    return run

"""Reading PyTorch files: torch.save checkpoints, safetensors, TorchScript, torch.export, --arch.

Untrusted pickles are never executed: ``torch.load(weights_only=True)`` unless the user
passes ``--trust-pickle``.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bncheck.backends.torch.pickle_inspect import load_plain_pickle, plain_pickle_class
from bncheck.backends.torch.pt2_inspect import check_export_archive
from bncheck.backends.torch.script_inspect import check_torchscript_archive
from bncheck.errors import ModelLoadError, first_line
from bncheck.importing import failure, resolve_callable

#: Keys under which training scripts commonly nest the weights of a checkpoint.
CHECKPOINT_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "net",
    "network",
    "module",
    "model_ema",
    "ema",
    "weights",
)
#: Prefixes added by DistributedDataParallel / DataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def import_torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise ModelLoadError(
            "this is a PyTorch model but torch is not installed; install it with "
            "`pip install 'bncheck[torch]'`."
        ) from exc
    return torch


def torch_load(path: Path, *, trust_pickle: bool) -> Any:
    """``torch.load`` on CPU; weights_only unless the user trusts the file."""
    torch = import_torch()
    # A trusted pickle names classes by module path; resolve them like `python -m` would, from
    # the working directory.
    added = trust_pickle and "" not in sys.path and str(Path.cwd()) not in sys.path
    if added:
        sys.path.insert(0, str(Path.cwd()))
    plain = None if _is_zip(path) else plain_pickle_class(path)
    if plain is not None and not trust_pickle:
        holding = f" of a {plain}" if plain else ""
        raise ModelLoadError(
            f"{path} is a plain Python pickle{holding} (pickle.dump, not torch.save), and unpickling "
            "runs code from the file; if you trust it pass --trust-pickle, or better save a state "
            "dict with torch.save(model.state_dict(), path) and pass --arch."
        )
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 74" on a damaged file: noise on top of our message
            warnings.simplefilter("ignore")
            # mmap: tensors are read on first use (copy-on-write), so a large checkpoint costs
            # little more than its BN tensors; only the zip format supports it
            if plain is not None:  # trusted: torch.load cannot read what pickle.dump wrote
                return load_plain_pickle(path)
            if str(path).endswith(".safetensors"):
                # bncheck read torch.save bytes; torch.load would read the path as safetensors by its name
                with open(path, "rb") as handle:
                    return torch.load(handle, map_location="cpu", weights_only=not trust_pickle)
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=_is_zip(path))
    except pickle.UnpicklingError as exc:
        if not trust_pickle and "global" in str(exc).lower():  # weights_only refused a class
            raise ModelLoadError(
                f"{path} contains pickled Python objects (e.g. a whole nn.Module), and unpickling "
                "runs code from the file; if you trust it pass --trust-pickle, or better save a "
                "state dict and pass --arch."
            ) from exc
        raise ModelLoadError(
            f"{path} cannot be unpickled ({_unpickler_detail(exc)}); it is probably truncated or "
            "corrupt: save or download it again."
        ) from exc
    except (AttributeError, ModuleNotFoundError, ImportError) as exc:
        raise ModelLoadError(
            f"{path} is a pickled module whose classes cannot be imported here ({exc}); make the "
            "defining package importable (PYTHONPATH), or save a state dict and use --arch."
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{path} cannot be read as a PyTorch file ({first_line(exc)}); it is probably "
            "truncated or corrupt: save or download it again."
        ) from exc
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))


def load_safetensors(path: Path) -> dict[str, Any]:
    import_torch()
    try:
        from safetensors.torch import load_file
    except ImportError as exc:  # pragma: no cover
        raise ModelLoadError(
            "reading .safetensors needs the safetensors package; install `bncheck[torch]`."
        ) from exc
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ModelLoadError(
            f"{path} is not a valid safetensors file ({first_line(exc)}); it is probably truncated."
        ) from exc


def load_torchscript(path: Path, *, trust_pickle: bool = False):
    torch = import_torch()
    check = None if trust_pickle else check_torchscript_archive
    return _load_archive(path, check, lambda: torch.jit.load(str(path), map_location="cpu"), "TorchScript")


def load_exported_program(path: Path, *, trust_pickle: bool = False):
    torch = import_torch()
    check = None if trust_pickle else check_export_archive
    return _load_archive(path, check, lambda: torch.export.load(str(path)), "a torch.export program")


def _load_archive(path: Path, check, load, what: str):
    """Inspect the archive (unless trusted), then load it; a loader failure is one sentence."""
    if check is not None:
        check(path)
    logged: list[BaseException] = []
    try:
        with quiet_torch_logs(logged):
            return load()
    except Exception as exc:
        # torch.export logs the real error and raises "check the warnings above": say the real one
        cause = logged[-1] if logged else exc
        while cause.__cause__ is not None:  # "Failed deserializing node Node(...)" from the real reason
            cause = cause.__cause__
        raise ModelLoadError(
            f"{path} cannot be loaded as {what} ({first_line(cause)}); it may be damaged or saved by a newer PyTorch."
        ) from exc


class _Keep(logging.Handler):
    """Keeps the exceptions that log records carry (``log.warning(..., exc_info=True)``)."""

    def __init__(self, into: list[BaseException]):
        super().__init__(logging.WARNING)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.into.append(record.exc_info[1])


@contextlib.contextmanager
def quiet_torch_logs(logged: list[BaseException] | None = None):
    """Keep torch's own warnings and logged tracebacks off stderr (the error says it in one
    sentence, with the logged exception appended to ``logged``); ``--debug`` output is
    unaffected because it prints the exception itself."""
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export")]
    saved = [(logger.level, logger.propagate, logger.handlers) for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        logger.handlers = [_Keep(logged if logged is not None else [])]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, (level, propagate, handlers) in zip(loggers, saved, strict=True):
            logger.setLevel(level)
            logger.propagate = propagate
            logger.handlers = handlers


def is_tensor_mapping(obj: Any) -> bool:
    torch = import_torch()
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)
    )


def unwrap_checkpoint(obj: Any, path: Path) -> Any:
    """The nn.Module or the state dict inside what ``torch.load`` returned."""
    torch = import_torch()
    if isinstance(obj, torch.nn.Module):
        return obj
    if is_tensor_mapping(obj):
        return strip_wrapper_prefixes({k: v for k, v in obj.items() if isinstance(v, torch.Tensor)})
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            if key in obj:
                inner = obj[key]
                if isinstance(inner, torch.nn.Module) or is_tensor_mapping(inner):
                    return unwrap_checkpoint(inner, path)
                if isinstance(inner, Mapping):
                    try:
                        return unwrap_checkpoint(inner, path)
                    except ModelLoadError:
                        continue
        keys = ", ".join(sorted(map(str, obj))[:8])
        raise ModelLoadError(
            f"{path} is a dict without model weights (keys: {keys}); expected a state dict or a "
            f"checkpoint with one of: {', '.join(CHECKPOINT_KEYS)}."
        )
    raise ModelLoadError(
        f"{path} holds a {type(obj).__name__}, not a model or a state dict; save "
        "model.state_dict() or the whole module."
    )


def rewrapped(path: Path | None, state: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (``torch.load`` with ``weights_only``) with the model's state
    dict inside it replaced by ``state``: the same container (``model_state_dict``, ``state_dict``
    ...), its other entries (vocabularies, epoch, metrics, optimizer) and the key prefixes
    (``module.``) that loading stripped. None where ``path`` holds no such checkpoint (a bare state
    dict without prefixes, a whole module, safetensors) or cannot be read again without pickle."""
    if path is None or Path(path).suffix.lower() == ".safetensors":
        return None
    torch = import_torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a pickled checkpoint: its wrapper cannot be re-read safely, the state dict is written bare
        return None
    out = _rewrap(obj, state)
    return out if out is not None and (not is_tensor_mapping(obj) or list(out) != list(state)) else None


def _rewrap(obj: Any, state: dict[str, Any]) -> dict[str, Any] | None:
    torch = import_torch()
    if is_tensor_mapping(obj):
        prefix = _wrapper_prefix([k for k, v in obj.items() if isinstance(v, torch.Tensor)])
        out = {k: (state.get(k[len(prefix) :], v) if isinstance(v, torch.Tensor) and k.startswith(prefix) else v) for k, v in obj.items()}
        out.update({prefix + k: v for k, v in state.items() if prefix + k not in out})
        return out
    if isinstance(obj, Mapping):
        for key in CHECKPOINT_KEYS:
            inner = _rewrap(obj[key], state) if key in obj else None
            if inner is not None:
                return {**obj, key: inner}
    return None


def _wrapper_prefix(keys: list[str]) -> str:
    """The ``module.``/``_orig_mod.`` prefixes every key carries, as :func:`strip_wrapper_prefixes` strips them."""
    prefix, changed = "", True
    while changed and keys:
        changed = False
        for candidate in WRAPPER_PREFIXES:
            if all(k.startswith(prefix + candidate) for k in keys):
                prefix, changed = prefix + candidate, True
    return prefix


def strip_wrapper_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Remove ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes carried by every key."""
    prefix = _wrapper_prefix(list(state))
    return {k[len(prefix) :]: v for k, v in state.items()} if prefix else state


def build_from_arch(spec: str):
    """Call the factory named by ``package.module:factory`` or ``path/file.py:factory``."""
    torch = import_torch()
    factory = resolve_callable(spec, option="--arch", noun="factory", error=ModelLoadError)
    attr = spec.rpartition(":")[2]
    try:
        model = factory()
    except (Exception, SystemExit) as exc:  # sys.exit() in a factory must not pass the gate
        calling = "" if isinstance(exc, SystemExit) else "calling "
        raise ModelLoadError(f"--arch {spec!r}: {calling}{attr}() {failure(exc)}.") from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(
            f"--arch {spec!r}: {attr}() returned a {type(model).__name__}, not a torch.nn.Module."
        )
    return model


def load_state_dict_into(model, state: dict[str, Any], spec: str) -> None:
    """Strictly load ``state`` into ``model``, explaining key and shape mismatches."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) such as {', '.join(missing[:4])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) such as {', '.join(unexpected[:4])}")
        raise ModelLoadError(
            f"the state dict does not match --arch {spec}: {'; '.join(parts)}; pass the "
            "architecture the checkpoint was trained with."
        )
    for key, value in state.items():
        want = expected[key]
        if _is_uninitialized(want):
            continue
        if tuple(want.shape) != tuple(value.shape):
            raise ModelLoadError(
                f"the state dict does not match --arch {spec}: {key} has shape "
                f"{tuple(value.shape)} in the file but {tuple(want.shape)} in the architecture."
            )
    try:
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelLoadError(
            f"the state dict cannot be loaded into --arch {spec}: {first_line(exc)}."
        ) from exc


def _is_uninitialized(tensor) -> bool:
    from torch.nn.parameter import UninitializedBuffer, UninitializedParameter

    return isinstance(tensor, (UninitializedParameter, UninitializedBuffer))


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) == b"PK\x03\x04"


def _unpickler_detail(exc: BaseException) -> str:
    """The useful part of torch's long weights_only message ("Unsupported operand 229")."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        rest = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        if rest and rest[0].strip():
            return rest[0].strip().rstrip(".")
    return first_line(exc)

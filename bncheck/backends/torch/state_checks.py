"""What a bare state dict's BN entries must satisfy before they become layers: the four
per-channel tensors of one layer present together (``running_mean`` with ``running_var``)
and of one length. A violation is a ModelLoadError naming the key, never a dropped layer."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bncheck.errors import ModelLoadError

_PAIR = (".running_mean", ".running_var")
_PER_CHANNEL = (".running_mean", ".running_var", ".weight", ".bias")


def check_bn_entries(state: Mapping[str, Any], path: Path | None) -> None:
    """Raise when a BN layer of ``state`` lacks half of its running statistics or when its
    per-channel tensors disagree in length."""
    where = f"{path}: " if path is not None else ""
    prefixes = {key[: -len(suffix)] for key in state for suffix in _PAIR if key.endswith(suffix)}
    for prefix in sorted(prefixes):
        is_bn = any(prefix + suffix in state for suffix in (".weight", ".bias", ".num_batches_tracked"))
        for have, lack in (_PAIR, _PAIR[::-1]):
            if prefix + have in state and prefix + lack not in state:
                if not is_bn:  # a lone buffer of another kind of module, not half a BN layer
                    break
                raise ModelLoadError(
                    f"{where}the state dict has {prefix}{have} but no {prefix}{lack}; the checkpoint is "
                    "damaged or edited: save it again from the model."
                )
        if prefix + ".running_mean" not in state or prefix + ".running_var" not in state:
            continue
        reference = prefix + (".weight" if prefix + ".weight" in state else ".running_mean")
        width = _numel(state[reference])
        for suffix in _PER_CHANNEL:
            key = prefix + suffix
            if key in state and (_numel(state[key]) != width or getattr(state[key], "dim", lambda: 1)() != 1):
                raise ModelLoadError(
                    f"{where}the state dict's {key} has shape {tuple(state[key].shape)} but "
                    f"{reference} has {width} channels; the checkpoint is damaged or edited."
                )


def _numel(tensor: Any) -> int:
    return int(tensor.numel()) if hasattr(tensor, "numel") else len(tensor)

"""Recognise a model file by its content (the backend registry then hands it to its family).

Sniffing never imports torch, so ONNX-only users need not install it.
"""

from __future__ import annotations

import enum
import json
import struct
import zipfile
from pathlib import Path

from bncheck.errors import ModelLoadError


class ModelFormat(str, enum.Enum):
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    EXPORT = "export"
    TORCH_SAVE = "torch_save"  # state dict, checkpoint dict or pickled module: decided on load
    SAFETENSORS = "safetensors"


_PICKLE_PROTOCOL_PREFIX = b"\x80"


def sniff_format(path: Path) -> ModelFormat:
    """The format of ``path`` from its bytes (the extension only breaks ties)."""
    if not path.exists():
        raise ModelLoadError(f"model file {path} does not exist; check the path.")
    if path.is_dir():
        raise ModelLoadError(
            f"{path} is a directory; pass the model file itself (.onnx, .pt, .pt2, .ts, .safetensors)."
        )
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model file {path}: {exc.strerror or exc}.") from exc
    if not head:
        raise ModelLoadError(f"model file {path} is empty; re-export or re-download it.")

    if head.startswith(b"PK"):
        return _sniff_zip(path)
    if _looks_like_safetensors(path, head):
        return ModelFormat.SAFETENSORS
    if head.startswith(_PICKLE_PROTOCOL_PREFIX):
        return ModelFormat.TORCH_SAVE  # legacy (non-zip) torch.save
    if _looks_like_onnx(head) or path.suffix.lower() == ".onnx":
        return ModelFormat.ONNX
    raise ModelLoadError(
        f"{path} is not a model format bncheck knows (ONNX, TorchScript, torch.export .pt2, "
        "torch.save checkpoint, .safetensors); check that the file is complete."
    )


def _sniff_zip(path: Path) -> ModelFormat:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelLoadError(
            f"{path} looks like a PyTorch archive but is damaged ({exc}); the file is probably "
            "truncated: save or download it again."
        ) from exc
    inner = {name.split("/", 1)[1] if "/" in name else name for name in names}
    if "archive_format" in inner or any(n.startswith("models/") for n in inner):
        return ModelFormat.EXPORT
    if any(n.startswith("code/") for n in inner) and "constants.pkl" in inner:
        return ModelFormat.TORCHSCRIPT
    if "data.pkl" in inner:
        return ModelFormat.TORCH_SAVE
    raise ModelLoadError(
        f"{path} is a zip archive but not a PyTorch one (no data.pkl, TorchScript code or "
        "torch.export archive inside)."
    )


def _looks_like_safetensors(path: Path, head: bytes) -> bool:
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len <= 0 or header_len > 100_000_000 or head[8:9] != b"{":
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(8)
            json.loads(handle.read(header_len))
    except (ValueError, RecursionError, OSError):
        return path.suffix.lower() == ".safetensors"
    return True


def _looks_like_onnx(head: bytes) -> bool:
    # ModelProto starts with field 1 (ir_version, varint): tag byte 0x08.
    return head[:1] == b"\x08"

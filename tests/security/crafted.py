"""Hostile files built the way an attacker would build them: start from a real sample model,
edit the archive members torch reads, and plant a payload that writes a marker file.

Every payload writes ``marker``; the tests assert it never appears. Nothing here imports
bncheck: the attacker has only torch, zipfile and json.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import torch

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"
PT2 = SAMPLES / "digits_cnn.pt2"


class Payload:
    """Unpickling this object runs ``open(marker, "w")``: the classic ``__reduce__`` gadget."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def payload_torch_save(marker: Path) -> bytes:
    """A torch.save zip whose data.pkl runs the payload (what torch.load(weights_only=False) reads)."""
    buffer = io.BytesIO()
    torch.save({"x": Payload(marker)}, buffer)
    return buffer.getvalue()


def payload_pickle(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker))


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy the zip ``src`` to ``dst`` letting ``edit(members)`` change the {name: bytes} map."""
    with zipfile.ZipFile(src) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    edit(members)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return dst


def _root(members: dict[str, bytes]) -> str:
    return next(iter(members)).split("/", 1)[0]


def pt2_pickled_weight(dst: Path, marker: Path) -> Path:
    """bn1.running_var stored as a pickled weight (``use_pickle: true``)."""

    def edit(members):
        root = _root(members)
        config_name = f"{root}/data/weights/model_weights_config.json"
        config = json.loads(members[config_name])
        entry = config["config"]["bn1.running_var"]
        entry["use_pickle"] = True
        members[f"{root}/data/weights/{entry['path_name']}"] = payload_torch_save(marker)
        members[config_name] = json.dumps(config).encode()

    return _rewrite(PT2, dst, edit)


def _pickled_constant(dst: Path, path_name: str, payload: bytes) -> Path:
    """A constant ``c_evil`` at ``path_name`` whose config says ``use_pickle``, holding ``payload``."""

    def edit(members):
        root = _root(members)
        config_name = f"{root}/data/constants/model_constants_config.json"
        config = json.loads(members[config_name])
        config["config"]["c_evil"] = {"path_name": path_name, "is_param": False, "use_pickle": True, "tensor_meta": None}
        members[f"{root}/data/constants/{path_name}"] = payload
        members[config_name] = json.dumps(config).encode()

    return _rewrite(PT2, dst, edit)


def pt2_pickled_constant(dst: Path, marker: Path) -> Path:
    """A tensor constant whose config says ``use_pickle``."""
    return _pickled_constant(dst, "tensor_0", payload_torch_save(marker))


def pt2_opaque_constant(dst: Path, marker: Path) -> Path:
    """An opaque (custom-object) constant: torch calls ``pickle.loads`` on it."""
    return _pickled_constant(dst, "opaque_obj_0", payload_pickle(marker))


def pt2_sample_inputs(dst: Path, marker: Path) -> Path:
    """Sample inputs that fail weights_only, so torch retries them with ``weights_only=False``."""

    def edit(members):
        root = _root(members)
        members[f"{root}/data/sample_inputs/model.pt"] = payload_torch_save(marker)

    return _rewrite(PT2, dst, edit)


def pt2_sympy_expression(dst: Path, marker: Path) -> Path:
    """A symbolic size whose ``expr_str`` torch hands to ``sympy.sympify`` (which evals it)."""
    code = f"__import__('builtins').open({str(marker)!r}, 'w')"

    def edit(members):
        root = _root(members)
        name = f"{root}/models/model.json"
        program = json.loads(members[name])
        meta = program["graph_module"]["graph"]["tensor_values"]["x"]
        meta["sizes"][0] = {"as_expr": {"expr_str": code, "hint": {"as_int": 1}}}
        members[name] = json.dumps(program).encode()

    return _rewrite(PT2, dst, edit)


PT2_ATTACKS = {
    "pickled-weight": pt2_pickled_weight,
    "pickled-constant": pt2_pickled_constant,
    "opaque-constant": pt2_opaque_constant,
    "sample-inputs": pt2_sample_inputs,
    "sympy-expression": pt2_sympy_expression,
}


def torchscript_from_file(dst: Path, marker: Path) -> Path:
    """A TorchScript CNN whose compiled forward creates ``marker`` through ``torch.from_file``
    (TorchScript has no ``import``, but every registered op is callable from its code/)."""
    sample = SAMPLES / "digits_cnn.ts"
    anchor = "    relu1 = self.relu1\n"

    def edit(members):
        name = next(n for n in members if n.endswith("code/__torch__/sample_models/architectures.py"))
        evil = f"torch.from_file({str(marker)!r}, True, 8)"
        injected = f"    x = torch.add(x, torch.mul(torch.sum({evil}), 0.))\n"
        members[name] = members[name].decode().replace(anchor, anchor + injected, 1).encode()

    return _rewrite(sample, dst, edit)

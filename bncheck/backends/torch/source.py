"""PyTorch sources: nn.Modules (from --arch, pickles or TorchScript) and bare state dicts,
presented as a :class:`ModelSource`; :func:`load_torch_model` reads any PyTorch file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bncheck.backends.detect import ModelFormat
from bncheck.backends.interface import ModelSource
from bncheck.backends.torch import graph as torch_graph
from bncheck.backends.torch import inventory_consumers
from bncheck.backends.torch.export_source import ExportSource
from bncheck.backends.torch.fold_module import fold_trace
from bncheck.backends.torch.infer_inputs import jit_traced
from bncheck.backends.torch.input_spec import module_input_spec, script_input_spec
from bncheck.backends.torch.inventory import (
    apply_producer,
    functional_layers,
    is_bn_module,
    layer_from_module,
)
from bncheck.backends.torch.loading import (
    build_from_arch,
    load_exported_program,
    load_safetensors,
    load_state_dict_into,
    load_torchscript,
    torch_load,
    unwrap_checkpoint,
)
from bncheck.backends.torch.runner import TorchRunner
from bncheck.backends.torch.state_checks import check_bn_entries
from bncheck.errors import ModelLoadError, UsageError, first_line
from bncheck.layer import BNLayer

#: Why a bare state dict cannot be run.
NEEDS_ARCH = (
    "a state dict holds weights but no architecture, so it cannot be run; pass --arch "
    "package.module:factory (or path/to/file.py:factory) naming a function that builds the model."
)
#: PyTorch's defaults, assumed when a state dict does not say.
DEFAULT_EPS = 1e-5
DEFAULT_MOMENTUM = 0.1
#: the report's note on a state dict read without --arch: its layers' eps and momentum are
#: these defaults (``BNLayer.assumed`` says which, and the tables mark them), not the model's
ASSUMED_NOTE = (
    "the state dict stores no eps or momentum: eps 1e-5 and momentum 0.1 (PyTorch's defaults) are assumed; "
    "pass --arch FILE.py:Factory to read them from the model"
)
#: the same for a state dict whose BN layers are all frozen (no num_batches_tracked: no momentum)
ASSUMED_EPS_NOTE = (
    "the state dict stores no eps: eps 1e-5 (PyTorch's default) is assumed; pass --arch FILE.py:Factory to read it from the model"
)


def load_torch_model(
    path: Path, fmt: ModelFormat, *, arch: str | None, trust_pickle: bool
) -> ModelSource:
    if fmt is ModelFormat.TORCHSCRIPT:
        if arch:
            raise ModelLoadError("--arch is only for state dicts; a TorchScript archive carries its own code.")
        return TorchModuleSource(load_torchscript(path, trust_pickle=trust_pickle), path=path, format="torchscript")
    if fmt is ModelFormat.EXPORT:
        if arch:
            raise ModelLoadError("--arch is only for state dicts; a torch.export archive carries its own graph.")
        return ExportSource(load_exported_program(path, trust_pickle=trust_pickle), path=path)
    if fmt is ModelFormat.SAFETENSORS:
        state = unwrap_checkpoint(load_safetensors(path), path)
    else:
        state = unwrap_checkpoint(torch_load(path, trust_pickle=trust_pickle), path)
    if isinstance(state, torch.nn.Module):
        if arch:
            raise ModelLoadError("--arch is only for state dicts; this file holds a whole module.")
        return TorchModuleSource(state, path=path, format="pickle")
    if arch:
        model = build_from_arch(arch)
        load_state_dict_into(model, state, arch)
        model.eval()
        source = TorchModuleSource(model, path=path, format="state_dict")
        source.arch = arch
        return source
    return StateDictSource(state, path=path)



class TorchModuleSource(ModelSource):
    """An ``nn.Module`` (eager or TorchScript) with its BN modules and their producers."""

    family = "torch"
    runner_class = TorchRunner

    def __init__(self, module, *, path: Path | None, format: str):
        super().__init__(path)
        self.module = module
        self.format = format
        self.arch: str | None = None
        self._layers: list[BNLayer] | None = None

    def op_count(self) -> int:
        return sum(1 for _, m in self.module.named_modules() if not list(m.children()))

    def input_spec(self):
        if self.format == "torchscript":
            return script_input_spec(self.module)
        return module_input_spec(self.module)

    def bn_layers(self) -> list[BNLayer]:
        if self._layers is None:
            self._layers = self._inventory()
        return self._layers

    def _inventory(self) -> list[BNLayer]:
        bn_modules = [(n, m) for n, m in self.module.named_modules() if n and is_bn_module(m)]
        if not bn_modules and is_bn_module(self.module):
            bn_modules = [("", self.module)]
        layers = [layer_from_module(n or "<root>", m) for n, m in bn_modules]
        names = {n for n, _ in bn_modules}
        producers, functional, reason = self._producers(names)
        for layer, (n, _) in zip(layers, bn_modules, strict=True):
            apply_producer(layer, producers.get(n), reason or "not called in forward()")
        layers.extend(functional_layers(self.module, functional))
        if self.format != "torchscript" and reason is None and inventory_consumers.candidates(layers):
            self._consider_consumers(layers)
        return layers

    def _consider_consumers(self, layers: list[BNLayer]) -> None:
        """The consumer side (:mod:`~bncheck.backends.torch.inventory_consumers`) on the graph
        graph-mode folding traces; a model fx traced for the producers traces for it too.
        (TorchScript folds through ``torch.jit.freeze``, which folds no BN into what follows.)"""
        try:
            gm = fold_trace(self.module, layers)
        except Exception:  # pragma: no cover - defensive: the producers' trace succeeded
            return
        inventory_consumers.consider_consumers(gm, layers)

    def _producers(self, names: set[str]):
        if self.format == "torchscript":
            try:
                return torch_graph.script_producers(self.module, names), [], None
            except Exception as exc:  # pragma: no cover - defensive
                return {}, [], f"TorchScript graph could not be read ({exc})"
        try:
            producers, functional = torch_graph.fx_producers(self.module, names)
            return producers, functional, None
        except Exception as exc:  # torch.fx raises many kinds of errors on untraceable code
            fx_error = first_line(exc, 120)
        traced = jit_traced(self.module)
        if traced is not None:
            try:
                producers = torch_graph.script_producers(traced, names)
            except Exception:  # pragma: no cover - defensive: the traced graph could not be read
                producers = None
            if producers is not None:
                self.notes.append(
                    f"torch.fx could not trace the model ({fx_error}); producers come from the dataflow of "
                    "torch.jit.trace on an inferred input"
                )
                return producers, [], "not reached by torch.jit.trace on the inferred input"
        self.notes.append(
            f"torch.fx could not trace the model ({fx_error}); producers come from exact nn.Sequential patterns only"
        )
        producers = torch_graph.sequential_producers(self.module, names)
        return producers, [], "model not traceable and BN not in an nn.Sequential after its producer"


class StateDictSource(ModelSource):
    """A bare state dict: BN layers recognised by their buffers; no graph, so producers are
    unknown until ``--arch`` supplies the architecture."""

    family = "torch"
    format = "state_dict"

    def __init__(self, state: dict[str, Any], *, path: Path | None):
        super().__init__(path)
        self.state = state
        keys = [str(key) for key in state]
        if any(key.endswith(".running_mean") for key in keys):  # frozen BN (no num_batches_tracked) has no momentum
            self.notes.append(ASSUMED_NOTE if any(key.endswith(".num_batches_tracked") for key in keys) else ASSUMED_EPS_NOTE)
        self.notes.append("state dict without --arch: the producers of the BN layers, and so whether they fold, are unknown")

    def op_count(self) -> int:
        return len({k.rsplit(".", 1)[0] for k in self.state if "." in k})

    def input_spec(self):
        raise UsageError(NEEDS_ARCH)

    def runner(self, *, layers=None):
        raise UsageError(NEEDS_ARCH)

    def bn_layers(self) -> list[BNLayer]:
        check_bn_entries(self.state, self.path)
        prefixes = sorted(
            {k[: -len(".running_mean")] for k in self.state if k.endswith(".running_mean")},
            key=lambda p: list(self.state).index(p + ".running_mean"),
        )
        layers = []
        for prefix in prefixes:
            var = self.state.get(prefix + ".running_var")
            if var is None:
                continue
            mean = self.state[prefix + ".running_mean"]
            weight = self.state.get(prefix + ".weight")
            nbt = self.state.get(prefix + ".num_batches_tracked")
            layers.append(
                BNLayer.from_arrays(
                    prefix,
                    "BatchNorm" if nbt is not None else "FrozenBatchNorm",
                    weight,
                    self.state.get(prefix + ".bias"),
                    mean,
                    var,
                    eps=DEFAULT_EPS,
                    momentum=DEFAULT_MOMENTUM if nbt is not None else None,
                    momentum_convention="pytorch" if nbt is not None else "unknown",
                    num_batches_tracked=int(nbt.item()) if nbt is not None and nbt.numel() == 1 else None,
                    foldable=None,
                    fold_reason="unknown without --arch",
                    assumed=["eps", "momentum"] if nbt is not None else ["eps"],
                )
            )
        return layers


"""The PyTorch family behind the :class:`~bncheck.backends.interface.Backend` protocol:
modules (from ``--arch``, pickles), TorchScript archives and torch.export programs; folded on
their graphs, converted to torch.export / TorchScript / ONNX, written in any of them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bncheck.backends import output
from bncheck.backends.detect import ModelFormat
from bncheck.backends.interface import (
    Backend,
    Batch,
    Executable,
    FoldedModel,
    InputSpec,
    ModelSource,
    Statistics,
)
from bncheck.backends.runner import ModelRunner
from bncheck.backends.staged import StagedModel
from bncheck.backends.torch import execute, statistics, write
from bncheck.backends.torch.convert import convert
from bncheck.backends.torch.counts import node_count, parameter_count
from bncheck.backends.torch.export_source import ExportSource
from bncheck.backends.torch.fold_export import example_inputs, fold_export
from bncheck.backends.torch.fold_module import fold_module
from bncheck.backends.torch.fold_script import fold_torchscript
from bncheck.backends.torch.folded_state import load_folded_state_dict
from bncheck.backends.torch.infer_inputs import infer_module_inputs
from bncheck.backends.torch.loading import rewrapped
from bncheck.backends.torch.runner import TorchRunner
from bncheck.backends.torch.source import (
    NEEDS_ARCH,
    StateDictSource,
    TorchModuleSource,
    load_torch_model,
)
from bncheck.backends.torch.staged import fx_staged
from bncheck.errors import BncheckError, OutputError, UsageError, first_line
from bncheck.numerics.site_proof import SiteProof


class TorchBackend(Backend):
    family = "torch"

    def load(self, path: Path, fmt: str, *, arch: str | None, trust_pickle: bool) -> ModelSource:
        return load_torch_model(path, ModelFormat(fmt), arch=arch, trust_pickle=trust_pickle)

    def adopt(self, model: Any) -> ModelSource | None:
        if not (type(model).__module__.startswith("torch") or hasattr(model, "named_modules")):
            return None
        if hasattr(model, "graph_signature"):
            return ExportSource(model, path=None)
        return TorchModuleSource(model, path=None, format="torchscript" if hasattr(model, "_c") else "module")

    def runner(self, source: ModelSource, *, layers: list[str] | None = None, threads: int | None = None) -> ModelRunner:
        if threads:
            torch.set_num_threads(int(threads))
        return source.runner(layers=layers)

    def first_layers_runner(self, source: ModelSource, layers: list[str]) -> ModelRunner:
        return TorchRunner(source, layers=layers, stop_after=True)

    def cut_cost(self, source: ModelSource, layers: list[str], sample: np.ndarray) -> tuple[int, int] | None:
        try:
            with TorchRunner(source, layers=layers, stop_after=True) as cut, FlopCounterMode(display=False) as part:
                cut.moments(sample)
            with source.runner(layers=[]) as runner, FlopCounterMode(display=False) as whole:
                runner.forward(sample)
        except Exception:  # a cost estimate only: where torch's counter cannot follow the model, no figure
            return None
        # torch counts a multiply-add as two FLOPs
        return part.get_total_flops() // 2, max(part.get_total_flops(), whole.get_total_flops()) // 2

    def staged(self, source: ModelSource, layers: list[str]) -> tuple[StagedModel | None, str]:
        return fx_staged(source, layers)

    def input_specs(self, source: ModelSource) -> list[InputSpec] | None:
        if not isinstance(source, ExportSource):
            return None
        example = example_inputs(source.program)
        if example is None:
            return None
        args, kwargs = example
        if kwargs or not all(hasattr(a, "shape") for a in args):
            return None
        return [
            InputSpec(f"input{i}", tuple(int(d) for d in a.shape[1:]), str(a.dtype).replace("torch.", ""),
                      batch=int(a.shape[0]) if a.dim() else None, batched=a.dim() > 0)
            for i, a in enumerate(args)
        ]

    def needs_example(self, source: ModelSource, kind: str) -> bool:
        # torch.export, ONNX export and tracing need one; a TorchScript model is frozen as it is
        return kind in ("export", "onnx", "torchscript") and source.format != "torchscript" and not (
            kind == "export" and isinstance(source, ExportSource)
        )

    def infer_inputs(self, source: ModelSource, declared: list[InputSpec] | None) -> tuple[list[InputSpec], str] | None:
        module = getattr(source, "module", None)
        if module is None:
            return None
        return infer_module_inputs(module, torch.from_numpy(np.zeros(0, self.float_dtype(source))).dtype)

    def prove_sites(self, source: ModelSource, folded: FoldedModel, *, atol: float, rtol: float) -> dict[str, SiteProof]:
        # one intra-op thread: the proofs are tiny ops, where a thread pool only costs (52
        # MobileNetV2 sites: 0.4 s on one thread, 22 s on two on a loaded 2-core machine)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return super().prove_sites(source, folded, atol=atol, rtol=rtol)
        finally:
            torch.set_num_threads(threads)

    def float_dtype(self, source: ModelSource) -> np.dtype:
        module = getattr(source, "module", None)
        if module is not None:
            for t in (*module.parameters(), *module.buffers()):
                if t.is_floating_point():
                    return np.dtype(str(t.dtype).replace("torch.", ""))
        return np.dtype("float32")

    def output_kind(self, source: ModelSource, out: Path | None, to: str | None) -> str:
        if isinstance(source, StateDictSource):
            raise UsageError(NEEDS_ARCH)
        return output.choose_output_kind(out, to, source.format)

    def fold(self, source: ModelSource, kind: str, *, affine: bool, example: Batch | None,
             keep: dict[str, str] | None = None) -> FoldedModel:
        layers = source.bn_layers()
        tensors = execute.as_tensors(example) if example is not None else None
        if source.format == "torchscript":
            result = fold_torchscript(source.module, layers, keep=keep)
            if affine:
                result.notes.append("--affine is not available for TorchScript inputs (torch.jit.freeze folds what it can)")
            return result
        if isinstance(source, ExportSource):
            return fold_export(source.program, layers, affine=affine, example=tensors, keep=keep)
        return fold_module(
            source.module, layers, affine=affine, swap_only=kind in ("state-dict", "pickle"), example=tensors, keep=keep
        )

    def convert(self, source: ModelSource, folded: FoldedModel, kind: str, example: Batch) -> tuple[Any, list[str]]:
        if kind in ("module", "state-dict", "pickle"):
            return folded.model, []
        try:
            artifact, notes = convert(folded.model, kind, execute.as_tensors(example))
        except BncheckError:
            raise
        except Exception as exc:
            raise OutputError(
                f"the folded model cannot be converted to {output.OUTPUT_KINDS.get(kind, kind)} "
                f"({type(exc).__name__}: {first_line(exc, 200)}); choose another output kind with --to."
            ) from exc
        if kind in ("onnx", "export") and source.format != "export":
            notes = [*notes, _fixed_sizes_note(kind, example)]
        return artifact, notes

    def executable(self, model: Any, kind: str | None = None, *, optimize: bool = False) -> Executable:
        if kind == "onnx":  # a torch model folded to ONNX: the onnx package only for that
            from bncheck.backends.onnx.session import executable as ort_executable  # optional: onnx

            return ort_executable(model, optimize=optimize)
        if isinstance(model, ModelSource):
            return execute.runner(execute.original_callable(model))
        return execute.runner(execute.callable_of(model))

    def timing_pair(self, source: ModelSource, folded: FoldedModel, batch: Batch):
        a, b = execute.timed_pair(source, folded.model, batch)
        return a, b, "torch (TorchScript)" if source.format == "torchscript" else "torch eager"

    def fold_notes(self, source: ModelSource) -> list[str]:
        if any(layer.training for layer in source.bn_layers()):
            return ["the model was saved in training mode; it was folded and verified in eval mode (inference)"]
        return []

    def write_folded(self, source: ModelSource, folded: FoldedModel, artifact: Any, kind: str, out: Path) -> list[Path]:
        if kind == "onnx":
            from bncheck.backends.onnx.write import write_onnx  # optional: onnx

            return write_onnx(artifact, out)
        if kind == "export":
            return write.write_export(artifact, out)
        if kind == "torchscript":
            return write.write_torchscript(artifact, out)
        if kind == "pickle":
            return write.write_pickle(artifact, out)
        if kind == "state-dict":
            layout = {name: o.status for name, o in folded.outcomes.items() if o.status in ("folded", "affine")}
            meta = {"bncheck.fold": json.dumps({"folded": sorted(k for k, v in layout.items() if v == "folded"),
                                                "affine": sorted(k for k, v in layout.items() if v == "affine")})}
            state = dict(artifact.state_dict) if hasattr(artifact, "graph_signature") else artifact.state_dict()
            return write.write_state_dict(state, out, metadata=meta)
        raise UsageError(f"cannot write output kind {kind}.")

    def write_model(self, source: ModelSource, kind: str, out: Path, example: Batch | None = None) -> list[Path]:
        if kind in ("onnx", "export") and isinstance(source, TorchModuleSource) and source.format != "torchscript":
            return self._converted(source, kind, out, example)
        if isinstance(source, ExportSource):
            if kind != "export":
                raise UsageError(f"a torch.export program is written back as .pt2, not {kind}.")
            return write.write_export(source.program, out)
        if not isinstance(source, TorchModuleSource):
            raise UsageError(NEEDS_ARCH)
        module = source.module
        if kind == "state-dict":
            if source.format == "torchscript":
                raise UsageError("a TorchScript model is written back as TorchScript (.ts or .pt), not as a state dict.")
            state = module.state_dict()
            wrapped = rewrapped(source.path, state) if Path(out).suffix.lower() != ".safetensors" else None
            if wrapped is not None:  # the checkpoint it came from: same container, entries and key prefixes
                return write.write_checkpoint(wrapped, out)
            return write.write_state_dict(state, out, {"bncheck": "recalibrated"})
        if kind == "torchscript":
            if source.format != "torchscript":
                try:
                    module = torch.jit.script(module)
                except Exception as exc:
                    raise UsageError(f"the model cannot be scripted for a .ts output ({type(exc).__name__}); write a state dict instead.") from exc
            return write.write_torchscript(module, out)
        if kind == "pickle":
            return write.write_pickle(module, out)
        raise UsageError(f"cannot write a {source.format} model as {kind}.")

    def _converted(self, source: TorchModuleSource, kind: str, out: Path, example: Batch | None) -> list[Path]:
        """``source`` converted to ONNX or torch.export as fold converts (the rule the contract
        gives both commands), on ``example`` (samples of DATA), and checked on it: the converted
        model's outputs within 1e-4 of the module's (relative to their largest magnitude)."""
        if example is None:
            raise UsageError(f"writing {output.OUTPUT_KINDS.get(kind, kind)} needs samples of DATA to convert on; none were read.")
        module = source.module.eval()
        try:
            artifact, _ = convert(module, kind, execute.as_tensors(example))
        except Exception as exc:
            raise OutputError(
                f"the recalibrated model cannot be converted to {output.OUTPUT_KINDS.get(kind, kind)} "
                f"({type(exc).__name__}: {first_line(exc, 200)}); write .pt/.pth, .safetensors or .ts instead."
            ) from exc
        expected = self.executable(source)(example)[0]
        got = self.executable(artifact, kind)(example)[0]
        scale = float(np.max(np.abs(expected))) if np.size(expected) else 0.0
        error = float(np.max(np.abs(np.asarray(got, np.float64) - expected))) if np.size(expected) else 0.0
        if not error <= 1e-4 * max(scale, 1.0):
            raise OutputError(
                f"the {output.OUTPUT_KINDS.get(kind, kind)} conversion of the recalibrated model differs from it by {error:.3g} "
                f"(outputs up to {scale:.3g}); nothing was written: write .pt/.pth, .safetensors or .ts instead."
            )
        if kind == "onnx":
            from bncheck.backends.onnx.write import write_onnx  # optional: onnx

            return write_onnx(artifact, out)
        return write.write_export(artifact, out)

    def with_statistics(self, source: ModelSource, stats: Statistics, *, num_batches: int | None = None) -> ModelSource:
        clone = statistics.with_statistics(source, stats, num_batches)
        clone.device = source.device
        return clone

    def statistics_in_place(self, source: ModelSource, stats: Statistics):
        if not isinstance(source, TorchModuleSource) or source.module is None:
            return None
        return statistics.statistics_in_place(source, stats)

    def cuda_problem(self, index: int) -> str | None:
        if not torch.cuda.is_available():
            return "torch sees no CUDA device (no GPU, or a CPU-only torch build)"
        if index >= torch.cuda.device_count():
            return f"torch sees {torch.cuda.device_count()} CUDA device(s), numbered from 0"
        return None

    def counts(self, model: Any) -> tuple[int | None, int | None]:
        if isinstance(model, ExportSource):
            model = model.program
        elif isinstance(model, TorchModuleSource):
            model = model.module
        if model is None:
            return None, None
        return parameter_count(model), node_count(model)

    def protected_paths(self, source: ModelSource) -> list[Path]:
        return [Path(source.path)] if source.path is not None else []

    def load_folded_state(self, model: Any, path: Path) -> Any:
        return load_folded_state_dict(model, path)


BACKEND = TorchBackend()


def _fixed_sizes_note(kind: str, example: Batch) -> str:
    """What a torch model converted to ONNX or torch.export keeps of its input sizes: the batch
    stays dynamic, every other axis is the verification input's (torch.export traces the model's
    own size arithmetic, a CRNN's sequence length among it, at that size)."""
    shapes = ", ".join("x".join(str(d) for d in tuple(getattr(x, "shape", ()))[1:]) for x in example)
    what = output.OUTPUT_KINDS.get(kind, kind)
    return (
        f"the {what} output takes any batch size but only per-sample inputs of {shapes} (the verification input's): "
        "fold with --input-shape at the size the model runs at in production"
    )
